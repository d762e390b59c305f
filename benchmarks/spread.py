"""`edge-spread`: a recipe's accuracy as a distribution, not one lucky run.

    edge-spread --data ../shared/data/trashnet5 --out runs/spread --seeds 1,2,3 --onednn 0,1 --threads 1,2
    edge-spread --data ../shared/data/trashnet5 --out runs/cv --folds 5 --seeds 42
    python -m trashcam.benchmarks.spread --out runs/spread --summary-only

One run = edge-train (one seed, one numerics setting, optionally one k-fold split) -> edge-convert --variants
tflite-int8 -> the INT8 model, single pass (what the device runs; TTA does not), on the bundle's test split.
Each step runs in its own process with its environment set and recorded, so oneDNN and thread settings really
apply (TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, at import). A finished run writes OUT/runs/<id>.json and is
skipped next time; an interrupted one continues (edge-train --resume, a kept bundle is not retrained).
After every run OUT/summary.json and OUT/summary.md are rewritten (benchmarks/spread_stats.py).
"""
from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from trashcam.edge.bundle import atomic_write_json, atomic_write_bytes
from trashcam.edge.clitools import CONTEXT, config_options, error, given, make_config, raw, run
from trashcam.edge.config import ConfigError, JsonConfig, setting

from .environment import THREAD_ENV, collect

PROG = "edge-spread"
VARIANT = "tflite-int8"


@dataclass(frozen=True)
class SpreadConfig(JsonConfig):
    data: str = setting("", "dataset folder DIR/<class>/*.jpg", metavar="DIR")
    out: str = setting("", "where runs, bundles and the summary go (re-run the same command to resume)",
                       metavar="DIR")
    recipe: str = setting("default", "edge-train recipe")
    seeds: tuple[int, ...] = setting((1, 2, 3), "training seeds (with --folds: one k-fold partition per seed)",
                                     metavar="S[,S..]")
    split_seed: int | None = setting(None, "one train/val/test split for every run (edge-train --split-seed), so "
                                     "the spread is the training's own; default: each seed draws its own split",
                                     min=0, metavar="N")
    onednn: tuple[int, ...] = setting((1,), "TF_ENABLE_ONEDNN_OPTS values to train under (0,1: both)",
                                      metavar="0|1[,..]")
    threads: tuple[int, ...] = setting((2,), "edge-train --threads values (also the INT8 evaluation's threads)",
                                       metavar="N[,N..]")
    folds: int = setting(0, "k-fold cross-validation with K folds (edge-train --fold k/K); 0: the recipe's split",
                         min=0)
    fold_ids: tuple[int, ...] = setting((), "run only these folds of --folds (default: all 1..K)", metavar="k[,k..]")
    train_args: str = setting("", "extra edge-train flags as one quoted string", metavar="ARGS")
    convert_args: str = setting("--max-drop 100", "extra edge-convert flags; the default keeps an INT8 model "
                                "whatever its drop, so the drop is measured, not hidden", metavar="ARGS")
    cache_dir: str = setting("", "decoded-image cache shared by the runs (default OUT/cache)", metavar="DIR")
    cache_per_run: bool = setting(False, "give each run a fresh decoded-image cache, deleted after it, so its wall "
                                  "time includes decoding (as the <= 20 min target counts it); costs disk and time")
    timeout: int = setting(3 * 3600, "seconds one step may take before it is stopped and the run marked failed",
                           min=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(v not in (0, 1) for v in self.onednn):
            raise ConfigError("onednn", "values must be 0 or 1", self.onednn)
        if any(t < 1 for t in self.threads):
            raise ConfigError("threads", "must all be >= 1", self.threads)
        if any(not 1 <= k <= self.folds for k in self.fold_ids):
            raise ConfigError("fold_ids", f"must lie in 1..--folds ({self.folds})", self.fold_ids)
        if self.folds == 1:
            raise ConfigError("folds", "must be 0 (no k-fold) or >= 2", self.folds)


@dataclass(frozen=True)
class RunSpec:
    seed: int
    onednn: int
    threads: int
    fold: str = ""  # "k/K" or ""

    @property
    def id(self) -> str:
        fold = f"-fold{self.fold.replace('/', 'of')}" if self.fold else ""
        return f"seed{self.seed}{fold}-onednn{self.onednn}-threads{self.threads}"


def grid(cfg: SpreadConfig) -> list[RunSpec]:
    """Every run, seed-major: the first seed's runs finish first, so a cut-short grid is still a spread."""
    folds = [f"{k}/{cfg.folds}" for k in (cfg.fold_ids or range(1, cfg.folds + 1))] if cfg.folds else [""]
    return [RunSpec(s, o, t, f) for s, f, o, t in itertools.product(cfg.seeds, folds, cfg.onednn, cfg.threads)]


def step_env(spec: RunSpec) -> dict[str, str]:
    """The child's environment: ours plus the run's oneDNN setting (threads go as edge-train --threads). A fixed
    PYTHONHASHSEED removes the one source of run-to-run variation that --seed does not reach."""
    env = dict(os.environ)
    env.update(TF_ENABLE_ONEDNN_OPTS=str(spec.onednn), TF_CPP_MIN_LOG_LEVEL="2", TQDM_MININTERVAL="30",
               PYTHONHASHSEED="0")
    return env


def _step(name: str, argv: list[str], env: dict[str, str], log: Path, timeout: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(log, "ab") as f:
        f.write(f"$ {shlex.join(argv)}\n".encode())
        f.flush()
        try:
            rc = subprocess.run(argv, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            f.write(f"{name}: stopped after {timeout} s\n".encode())
            rc = 124
    return rc, round(time.perf_counter() - t0, 1)


def train_argv(cfg: SpreadConfig, spec: RunSpec, bundle: Path, cache: Path) -> list[str]:
    argv = [sys.executable, "-m", "trashcam.train.cli", "--data", str(Path(cfg.data).resolve()), "--out", str(bundle),
            "--recipe", cfg.recipe, "--seed", str(spec.seed), "--threads", str(spec.threads), "--cache-dir", str(cache),
            "--quiet"]
    if spec.fold:
        argv += ["--fold", spec.fold]
    if cfg.split_seed is not None:
        argv += ["--split-seed", str(cfg.split_seed)]
    if bundle.with_name(bundle.name + ".partial").is_dir():
        argv.append("--resume")  # an interrupted run continues from its last checkpoint
    return argv + shlex.split(cfg.train_args)


def evaluate_int8(bundle_dir: Path, threads: int) -> dict[str, Any]:
    """The deployed model, single pass, on the bundle's saved test split; metrics as edge-train reports them."""
    from trashcam.edge.bundle import Bundle
    from trashcam.edge.interpreters import open_engine
    from trashcam.train.evaluate import classification_metrics

    from .accuracy import load_eval_set

    bundle = Bundle.load(bundle_dir)
    images = load_eval_set(bundle)
    pred = open_engine(bundle, VARIANT, threads).predict(images.x).argmax(1)
    m = classification_metrics(images.y, pred, bundle.labels)
    m["misclassified"] = [[p, bundle.labels[t], bundle.labels[q]] for p, t, q in zip(images.paths, images.y, pred)
                          if t != q]
    m["skipped"] = len(images.skipped)
    return m


def run_one(cfg: SpreadConfig, spec: RunSpec, out: Path, cache: Path) -> dict[str, Any]:
    """Train, convert and evaluate one run (skipping steps whose output exists); the run's record."""
    from trashcam.edge.bundle import Bundle

    run_dir = out / "runs" / spec.id
    run_dir.mkdir(parents=True, exist_ok=True)
    bundle, log, env = run_dir / "bundle", run_dir / "log.txt", step_env(spec)
    rec: dict[str, Any] = {"id": spec.id, "seed": spec.seed, "onednn": spec.onednn, "threads": spec.threads,
                           "fold": spec.fold or None, "recipe": cfg.recipe, "bundle": str(bundle), "log": str(log),
                           "env": {k: env[k] for k in (*THREAD_ENV, "PYTHONHASHSEED") if k in env},
                           "python": sys.executable, "commands": {}, "returncodes": {}, "wall_s": {}}
    if not (bundle / "metadata.json").is_file():
        argv = train_argv(cfg, spec, bundle, cache)
        rec["commands"]["train"] = argv
        rc, rec["wall_s"]["train"] = _step("train", argv, env, log, cfg.timeout)
        rec["returncodes"]["train"] = rc
        if rc != 0:
            return {**rec, "status": "failed", "error": f"edge-train exited {rc} (see {log})"}
    if VARIANT not in Bundle.load(bundle, verify=False).variants:
        argv = [sys.executable, "-m", "trashcam.convert.cli", str(bundle), "--variants", VARIANT,
                *shlex.split(cfg.convert_args)]
        rec["commands"]["convert"] = argv
        rc, rec["wall_s"]["convert"] = _step("convert", argv, env, log, cfg.timeout)
        rec["returncodes"]["convert"] = rc
        if VARIANT not in Bundle.load(bundle, verify=False).variants:
            return {**rec, "status": "failed", "error": f"edge-convert exited {rc}, no {VARIANT} (see {log})"}
    t0 = time.perf_counter()
    int8 = evaluate_int8(bundle, spec.threads)
    rec["wall_s"]["evaluate"] = round(time.perf_counter() - t0, 1)
    metrics = json.loads((bundle / "metrics.json").read_text())
    ev = metrics["evaluation"]
    rec.update(
        status="ok", labels=metrics["labels"], test_images=int8["images"],
        float=ev["plain"], float_tta=ev.get("tta"), int8=int8,
        int8_drop_pp=round(100 * (ev["plain"]["accuracy"] - int8["accuracy"]), 4),
        train_seconds=metrics.get("seconds"), numerics=metrics.get("numerics"),
        stages=[{k: s.get(k) for k in ("name", "epochs_run", "best_epoch", "best_val_loss")}
                for s in metrics["stages"]],
    )
    return rec


def load_records(out: Path) -> list[dict]:
    records = []
    for p in sorted((out / "runs").glob("*.json")):
        try:
            records.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue  # a damaged record is rerun, not averaged
    return records


def merged_records(out: Path, merge: tuple[Path, ...]) -> list[dict]:
    """OUT's run records and those of other outputs, as one distribution. A record's id is made unique by its
    output's name, so the same seed and numerics run under two recipes or code versions count as two runs; all must
    have tested the same images (one split, or the same folds), else the spread would mix splits."""
    records = [dict(r, source=str(out)) for r in load_records(out)]
    for d in merge:
        recs = load_records(d)
        if not recs:
            raise ValueError(f"{d} has no run records (DIR/runs/*.json)")
        records += [dict(r, id=f"{d.name}/{r['id']}", source=str(d)) for r in recs]
    split = {(r.get("numerics") or {}).get("split_seed") for r in records if not r.get("fold")}
    folds = {(r.get("numerics") or {}).get("split_seed") for r in records if r.get("fold")}
    if len(split) > 1 or (split and folds):
        raise ValueError("the outputs were not made on one split: "
                         f"split seeds {sorted(map(str, split))}, {len(folds)} fold partition(s)")
    return records


def write_summary(out: Path, cfg: SpreadConfig | None = None, merge: tuple[Path, ...] = ()) -> dict:
    from .spread_stats import summarize, to_markdown
    records = merged_records(out, merge) if merge else load_records(out)
    summary = summarize(records)
    if merge:
        summary["merged_from"] = list(dict.fromkeys(r["source"] for r in records))
    if cfg is not None:
        summary["config"] = cfg.to_dict()
    summary["environment"] = collect()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_bytes(out / "summary.md", to_markdown(summary).encode())
    return summary


def compare_to(out: Path, baseline: Path) -> str:
    """OUT's runs against BASELINE's of the same ids (benchmarks/paired.py): writes OUT/paired.json, returns markdown."""
    from .paired import compare, to_markdown

    def cfg(d: Path) -> dict | None:
        try:
            return json.loads((d / "spread_config.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None  # an output from before the config was saved: the per-run test counts are still checked
    result = compare(load_records(baseline), load_records(out), cfg(baseline), cfg(out))
    result["baseline"] = str(baseline)
    atomic_write_json(out / "paired.json", result)
    return to_markdown(result, str(baseline))


def finished(out: Path, spec: RunSpec) -> bool:
    p = out / "runs" / f"{spec.id}.json"
    try:
        return json.loads(p.read_text()).get("status") == "ok"
    except (OSError, json.JSONDecodeError):
        return False


def spread(cfg: SpreadConfig, echo=print) -> dict:
    out = Path(cfg.out)
    if not Path(cfg.data).is_dir():
        raise FileNotFoundError(f"data folder {cfg.data} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "spread_config.json")
    cache = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    specs = grid(cfg)
    for i, spec in enumerate(specs, 1):
        if finished(out, spec):
            echo(f"[{i}/{len(specs)}] {spec.id}: done earlier, skipped")
            continue
        echo(f"[{i}/{len(specs)}] {spec.id}: running")
        run_cache = out / "runs" / spec.id / "cache" if cfg.cache_per_run else cache
        rec = run_one(cfg, spec, out, run_cache)
        if cfg.cache_per_run:
            shutil.rmtree(run_cache, ignore_errors=True)
        atomic_write_json(out / "runs" / f"{spec.id}.json", rec)
        echo(f"[{i}/{len(specs)}] {spec.id}: " + (f"INT8 {100 * rec['int8']['accuracy']:.2f} %, float "
                                                  f"{100 * rec['float']['accuracy']:.2f} %" if rec["status"] == "ok"
                                                  else f"FAILED: {rec.get('error')}"))
        write_summary(out, cfg)
    return write_summary(out, cfg)


EPILOG = """\
examples:
  edge-spread --data ../shared/data/trashnet5 --out runs/spread --seeds 1,2,3 --onednn 0,1 --threads 1,2 \\
              --split-seed 42      # 12 runs: 3 seeds x oneDNN off/on x 1/2 threads, all on one split
  edge-spread --data ../shared/data/trashnet5 --out runs/cv --folds 5 --seeds 42,43
                                     # 5-fold cross-validation, two partitions: every image tested twice
  edge-spread --data data/sample --out runs/s --recipe quick --seeds 1,2
  edge-spread --out runs/spread --summary-only --write-expected train/default_recipe_spread.json
  edge-spread --out runs/all --summary-only --merge runs/onednn0 --merge runs/threads1
                                     # one summary over several outputs on the same split
  edge-spread --data ../shared/data/trashnet5 --out runs/cv_tv --folds 5 --seeds 42 \\
              --train-args "--stage2-data train+val" --baseline runs/cv
                                     # a lever, paired fold by fold with the runs it changes

Outputs: OUT/runs/<id>.json per run (seed, numerics, environment, commands, wall times, float and INT8 metrics
with per-class F1 and confusion matrix, the misclassified test images), OUT/runs/<id>/bundle, OUT/summary.json
and OUT/summary.md (mean, 95 % interval of the mean, std, min, max of the INT8 and float test accuracy and macro F1,
INT8 drop, wall times; per-class F1; the most frequent confusions; k-fold pooled accuracy; the issue's targets).
Re-running the same command resumes: finished runs are skipped. Choose settings on validation numbers; the
test numbers here are for reporting a chosen setting once.
Exit status: 0 every run finished, 1 some run failed, 2 bad arguments.
"""


@click.command(PROG, context_settings=CONTEXT, epilog=raw(EPILOG),
               help="Train, convert and evaluate a recipe over seeds x numerics settings and/or k folds; summarise.")
@click.option("--summary-only", is_flag=True, help="recompute OUT/summary.* from the run records, train nothing")
@click.option("--dry-run", is_flag=True, help="list the runs (and which are done) and exit")
@click.option("--write-expected", metavar="FILE",
              help="write the INT8 mean and tolerance the slow reproduction test asserts (from this summary)")
@click.option("--merge", metavar="DIR", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="with --summary-only: pool the runs of other outputs on the same split into OUT's summary, e.g. "
                   "the same seeds with other numerics (repeat the option)")
@click.option("--baseline", metavar="DIR", type=click.Path(exists=True, file_okay=False),
              help="another edge-spread OUT on the same data, folds and split seed: compare run by run on the same "
                   "test images (OUT/paired.json: per-pair difference with its interval, images fixed / broken, "
                   "McNemar p)")
@config_options(SpreadConfig)
def command(summary_only: bool, dry_run: bool, write_expected: str | None, merge: tuple[str, ...],
            baseline: str | None, **params) -> int:
    cfg = make_config(SpreadConfig, **given(SpreadConfig, params))
    if not cfg.out:
        return error(PROG, "--out DIR is required")
    out = Path(cfg.out)
    if dry_run:
        for spec in grid(cfg):
            print(f"{spec.id}{'  (done)' if finished(out, spec) else ''}")
        return 0
    if merge and not summary_only:
        return error(PROG, "--merge DIR pools finished runs: use it with --summary-only")
    if summary_only:
        try:
            summary = write_summary(out, merge=tuple(Path(d) for d in merge))
        except ValueError as e:
            return error(PROG, f"--merge: {e}")
    else:
        if not cfg.data:
            return error(PROG, "--data DIR is required (or --summary-only)")
        try:
            summary = spread(cfg)
        except FileNotFoundError as e:
            return error(PROG, str(e))
    from .spread_stats import expected_spread, to_markdown
    print(to_markdown(summary))
    if write_expected:
        if not summary.get("metrics"):
            return error(PROG, "no finished runs to take the expected spread from", 1)
        # keep what was added by hand or by other runs (data, cv, source): report.md quotes them
        old = json.loads(Path(write_expected).read_text()) if Path(write_expected).is_file() else {}
        atomic_write_json(write_expected, {**old, **expected_spread(summary)})
    if baseline:
        try:
            paired = compare_to(out, Path(baseline))
        except ValueError as e:
            return error(PROG, f"--baseline {baseline}: {e}")
        print(paired)
    return 1 if summary["runs_failed"] else 0


def main(argv: list[str] | None = None) -> int:
    return run(command, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
