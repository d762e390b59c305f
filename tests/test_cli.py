"""One CLI pattern: click options derived from the config dataclasses, validation in the configs (exit 2)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import click
import pytest

from trashcam.edge.clitools import config_options, given, help_text, make_config, parse, run
from trashcam.edge.config import ConfigError, JsonConfig, RunConfig, parse_size, setting


@dataclass(frozen=True)
class Toy(JsonConfig):
    path: str = setting(help="where", cli="argument")
    name: str | None = setting(None, "a name")
    count: int | None = setting(None, "how many", min=1)
    rate: float | None = setting(None, "how fast", above=0)
    loud: bool = setting(False, "shout")
    tags: tuple[str, ...] = setting((), "labels")
    sizes: tuple[int, ...] = setting((1,), "sizes")
    mode: str = setting("a", "mode", choices=("a", "b"))
    size: tuple[int, int] | None = setting(None, "WxH", parse=parse_size, metavar="WxH")
    secret: int = setting(0, "not on the command line", cli=False)
    legacy: int = setting(0, "still accepted", cli="hidden")


@click.command("toy")
@config_options(Toy)
def toy(**params):
    cfg = make_config(Toy, **given(Toy, params))
    print(json.dumps(cfg.to_dict()))
    return 0


def test_options_are_derived_from_the_dataclass():
    p = parse(toy, ["x", "--name", "n", "--count", "3", "--rate", "0.5", "--loud", "--tags", "a,b", "--tags", "c",
                    "--sizes", "2,3", "--mode", "b", "--size", "4x5", "--legacy", "7"])
    cfg = Toy(**given(Toy, p))
    assert cfg == Toy(path="x", name="n", count=3, rate=0.5, loud=True, tags=("a", "b", "c"), sizes=(2, 3),
                      mode="b", size=(4, 5), legacy=7)
    assert Toy(**given(Toy, parse(toy, ["x"]))) == Toy(path="x")  # nothing given: the dataclass defaults
    h = help_text(toy, "toy")
    assert "--no-loud" in h and "(default: 1)" in h and "[a|b]" in h and "WxH" in h
    assert "--secret" not in h and "--legacy" not in h


@pytest.mark.parametrize("args, message", [
    (["--count", "0"], "--count must be >= 1, got 0"),
    (["--rate", "0"], "--rate must be > 0, got 0.0"),
    (["--mode", "c"], "'c' is not one of"),
    (["--size", "4"], "expected WIDTHxHEIGHT"),
    (["--sizes", "1,x"], "comma-separated list of int"),
])
def test_bad_flags_are_usage_errors(capsys, args, message):
    assert run(toy, ["x", *args], "toy") == 2
    assert message in capsys.readouterr().err


def test_config_from_json_is_checked_like_flags():
    with pytest.raises(ConfigError, match="window must be >= 1"):
        RunConfig.from_dict({"bundle": "b", "window": 0})
    with pytest.raises(ConfigError, match="window must be an integer"):
        RunConfig.from_dict({"bundle": "b", "window": "5"})
    with pytest.raises(ConfigError, match="smooth must be one of"):
        RunConfig.from_dict({"bundle": "b", "smooth": "median"})
    with pytest.raises(ValueError, match="must be a JSON object"):
        RunConfig.from_dict([1, 2])
    c = RunConfig.from_dict({"bundle": "b", "capture_size": [640, 480], "max_fps": 2, "extra": 1})
    assert c.capture_size == (640, 480) and c.max_fps == 2.0
    assert RunConfig.from_json(c.to_json()) == c


@pytest.mark.parametrize("args, message", [
    (["--max-fps", "0"], "--max-fps must be > 0"),
    (["--max-fps", "-1"], "--max-fps must be > 0"),
    (["--duration", "0"], "--duration must be > 0"),
    (["--duration", "0", "--loop"], "--duration must be > 0"),
    (["--duration", "-1"], "--duration must be > 0"),
    (["--window", "0"], "--window must be >= 1"),
    (["--stable", "0"], "--stable must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--streams", "0"], "--streams must be >= 1"),
    (["--min-confidence", "1.5"], "--min-confidence must be <= 1.0"),
    (["--min-confidence", "-0.1"], "--min-confidence must be >= 0.0"),
    (["--max-frames", "0"], "--max-frames must be >= 1"),
])
def test_edge_run_rejects_nonsense_before_loading_anything(capsys, args, message):
    from trashcam.edge.cli import main

    assert main(["/nonexistent/bundle", *args]) == 2  # the flag is refused before the bundle is looked at
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_edge_run_config_file(tmp_path, capsys):
    from trashcam.edge.cli import command, config_from_params, main

    bad = tmp_path / "list.json"
    bad.write_text("[1, 2]")
    assert main(["b", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].endswith("expected a JSON object (a run_config.json), got list")
    saved = tmp_path / "run_config.json"
    saved.write_text(json.dumps({"config": {"bundle": "old", "window": 7, "stable": 2, "threads": 2},
                                 "variant": "tflite-int8"}))
    cfg = config_from_params(parse(command, ["new", "--config", str(saved), "--stable", "4"]))
    assert (cfg.bundle, cfg.window, cfg.stable, cfg.threads) == ("new", 7, 4, 2)  # flags win over the file
    saved.write_text(json.dumps({"config": {"window": -2}}))
    assert main(["b", "--config", str(saved)]) == 2
    assert "window must be >= 1" in capsys.readouterr().err


def test_edge_train_help_shows_each_recipes_values():
    from trashcam.train.cli import command
    from trashcam.train.config import DEFAULT, QUICK, SEED

    h = " ".join(help_text(command, "edge-train").split())
    assert (f"--stage1-epochs N (default recipe: {DEFAULT.stage1_epochs}; quick: {QUICK.stage1_epochs}; "
            f"seed: {SEED.stage1_epochs})") in h
    assert "--batch-size N (default: 32)" in h


def test_edge_train_bad_values_exit_2(capsys):
    from trashcam.train.cli import main

    assert main(["--split", "0.5,0.1,0.1", "--print-config"]) == 2
    assert "--split fractions must sum to 1" in capsys.readouterr().err
    assert main(["--mode", "fast"]) == 2
    assert main(["--recipe", "quick", "--stage1-epochs", "3", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["stage1_epochs"] == 3


def test_every_console_script_is_click_with_main():
    import configparser
    import importlib
    from pathlib import Path

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).parents[1] / "setup.cfg")
    scripts = [ln.split("=") for ln in cfg["options.entry_points"]["console_scripts"].strip().splitlines()]
    assert len(scripts) == 6
    for name, target in scripts:
        mod = importlib.import_module(target.split(":")[0].strip())
        assert isinstance(mod.command, click.Command), name
        assert mod.main(["--help"]) == 0
