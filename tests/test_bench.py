"""edge-bench: JSON schema, ordered percentiles, exact accuracy, clear data errors, --compare, bundle record."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

FAST = ("--runs", "5", "--warmup", "2", "--threads", "1")
STAT_KEYS = {"mean", "std", "min", "p50", "p90", "p99", "max", "runs", "fps"}


@pytest.fixture
def bundle(tiny_tflite_bundle, tmp_path) -> Path:
    """A private copy: the session fixture is shared, and edge-bench writes metadata["bench"]."""
    return Path(shutil.copytree(tiny_tflite_bundle, tmp_path / "bundle"))


@pytest.fixture(scope="module")
def cli_run(tiny_tflite_bundle, tmp_path_factory):
    """One real CLI run (fresh process per variant) whose outputs several tests read."""
    tmp = tmp_path_factory.mktemp("bench")
    b = Path(shutil.copytree(tiny_tflite_bundle, tmp / "bundle"))
    p = run_cli("-m", "trashcam.benchmarks.cli", str(b), *FAST, "--json", str(tmp / "r.json"),
                "--csv", str(tmp / "r.csv"), "--md", str(tmp / "r.md"), "--plots", str(tmp / "plots"), check=True)
    return p, b, tmp, json.loads((tmp / "r.json").read_text())


def test_json_schema(cli_run):
    p, _, _, r = cli_run
    assert r["schema"] == "trashcam.bench/1"
    assert {"environment", "data", "variants", "config", "reference", "skipped"} <= set(r)
    env = r["environment"]
    assert isinstance(env["cpu"]["model"], str) and isinstance(env["cpu"]["flags"], list)
    assert env["python"] and "numpy" in env["packages"] and env["threads"] == [1]
    assert isinstance(r["data"]["path"], str) and r["data"]["images"] == 9  # 15 % of 20 per class, 3 classes
    assert [(e["name"], e["threads"]) for e in r["variants"]] == [("keras", 1), ("tflite-fp32", 1)]
    for e in r["variants"]:
        assert isinstance(e["size_bytes"], int) and e["size_bytes"] == (cli_run[1] / e["file"]).stat().st_size
        for key in ("accuracy", "macro_f1", "drop_pp", "fps", "peak_rss_mb", "load_ms"):
            assert isinstance(e[key], float), key
        assert 0 <= e["accuracy"] <= 1 and e["peak_rss_mb"] > 10
        assert e["pipelined_peak_rss_mb"] >= e["peak_rss_mb"]  # read after the streamed timing: a high-water mark
        for key in ("latency_ms", "e2e_latency_ms", "frame_latency_ms", "pipelined_latency_ms"):
            assert set(e[key]) == STAT_KEYS, key
        assert e["pipelined_latency_ms"]["runs"] == 5 and e["pipelined_over_invoke"] > 0
        assert e["latency_ms"]["runs"] == 5 and e["e2e_latency_ms"]["runs"] == 5
    assert r["reference"]["variant"] == "keras"
    assert r["variants"][0]["drop_pp"] == 0.0
    # the stdout table has every variant, the other outputs exist
    assert "tflite-fp32" in p.stdout and "e2e p50" in p.stdout
    assert "fastest deployable (edge-run --variant auto): tflite-fp32 @ 1 thr" in p.stdout
    _, _, tmp, _ = cli_run
    assert (tmp / "r.csv").read_text().count("\n") == 3 and "| tflite-fp32 |" in (tmp / "r.md").read_text()
    assert (tmp / "plots" / "latency.png").stat().st_size > 1000
    assert (tmp / "plots" / "accuracy_vs_size.png").stat().st_size > 1000


def test_percentiles_ordered(cli_run):
    for e in cli_run[3]["variants"]:
        for key in ("latency_ms", "e2e_latency_ms", "frame_latency_ms", "pipelined_latency_ms"):
            s = e[key]
            assert 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"], (e["name"], key, s)
            assert s["fps"] == pytest.approx(1000 / s["mean"], rel=1e-2)
        # end-to-end includes the invoke, so it cannot be faster at the median
        assert e["e2e_latency_ms"]["p50"] >= 0.5 * e["latency_ms"]["p50"]
        assert e["frame_size"] == [48, 40] and e["temperature"] == 1.0  # the synthetic images; uncalibrated
        assert e["resize"] in ("linear (opencv)", "linear (numpy)")  # the bundle's resize and what ran it
    assert "e2e p50 / invoke p50: files " in cli_run[0].stdout and "x, decoded frames " in cli_run[0].stdout
    assert "per frame as edge-run streams a folder (" in cli_run[0].stdout


def test_interleaved_timing_rotates_and_counts_only_timed_rounds():
    from trashcam.benchmarks.latency import time_interleaved

    calls: list[str] = []
    ms = time_interleaved({k: (lambda k=k: calls.append(k)) for k in "abc"}, runs=4, warmup=2)
    assert {k: len(v) for k, v in ms.items()} == {"a": 4, "b": 4, "c": 4} and all(t >= 0 for v in ms.values()
                                                                                 for t in v)
    assert "".join(calls) == "abc" "bca" "cab" "abc" "bca" "cab"  # every round all three, order rotating


def test_streamed_timing_counts_every_frame_as_edge_run_streams_a_folder(bundle, synthetic_dataset):
    from trashcam.benchmarks.latency import time_streamed
    from trashcam.edge.bundle import Bundle
    from trashcam.edge.interpreters import open_engine

    b = Bundle.load(bundle)
    paths = [str(p) for p in sorted(synthetic_dataset.rglob("*.*"))[:7]]
    made: list[int] = []

    def make(t):
        made.append(t)
        return open_engine(b, "tflite-fp32", t)

    for threads, want_streams in ((1, 1), (2, 2)):
        frames, invokes, streams = time_streamed(open_engine(b, "tflite-fp32", threads), paths, b.preprocessing,
                                                 1.0, runs=30, warmup=4, chunk=8, make_engine=make)
        assert streams == want_streams
        assert len(frames) == len(invokes) == 30 and min(frames) > 0 and min(invokes) > 0
    assert made == [1, 1]  # at 2 threads: two single-thread interpreters; at 1 thread: the engine itself


def test_per_frame_is_what_the_classifier_does(bundle, synthetic_dataset):
    """The timed e2e call gives the Classifier's answer for the same image: same preprocessing, engine and
    temperature (so edge-bench times what edge-run runs, not a shortcut)."""
    from trashcam.benchmarks.latency import per_frame
    from trashcam.edge.bundle import Bundle
    from trashcam.edge.images import open_image
    from trashcam.edge.runtime import Classifier

    b = Bundle.load(bundle)
    b.metadata["calibration"] = {"temperature": 3.0}
    b.save()
    clf = Classifier(bundle, "tflite-fp32", threads=1)
    assert clf.temperature == 3.0
    paths = sorted(synthetic_dataset.rglob("*.*"))[::5]
    for sources in (paths, [np.asarray(open_image(p)) for p in paths]):
        one = per_frame(clf.engine, sources, clf.pre, clf.temperature)
        assert [one() for _ in paths] == [clf.classify(p).index for p in paths]


def test_frame_memory_kept_once_and_left_to_malloc_variables(monkeypatch):
    code = "from trashcam.edge.images import keep_frame_memory as k; print(k(), k())"
    assert run_cli("-c", code, check=True).stdout.split() == ["True", "True"]  # glibc (Linux CI and the Pi)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert run_cli("-c", code, check=True).stdout.split() == ["False", "False"]


def test_bench_recorded_in_bundle(cli_run):
    from trashcam.edge.bundle import Bundle
    from trashcam.edge.runtime import choose_variant

    _, b, _, r = cli_run
    bundle = Bundle.load(b)  # still verifies: only metadata.json changed
    bench = bundle.metadata["bench"]
    by = {e["name"]: e for e in r["variants"]}
    assert bench["p50_ms"]["1"] == {v: by[v]["e2e_latency_ms"]["p50"] for v in ("keras", "tflite-fp32")}
    assert bench["cpu"] == r["environment"]["cpu"]["model"] and bench["date"]
    assert choose_variant(bundle, "auto", threads=1, probe=False) == "tflite-fp32"


def _independent_accuracy(bundle_dir: Path, data: Path, labels: list[str]):
    """Accuracy and macro F1 computed without edge-bench: LiteRT interpreter + sklearn."""
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image
    from sklearn.metrics import f1_score

    it = Interpreter(model_path=str(bundle_dir / "model_fp32.tflite"))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    y, pred = [], []
    for ci, c in enumerate(labels):
        for f in sorted((data / c).iterdir()):
            img = Image.open(f).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
            it.set_tensor(inp["index"], np.asarray(img, np.float32)[None])
            it.invoke()
            pred.append(int(it.get_tensor(out["index"]).argmax()))
            y.append(ci)
    return float(np.mean(np.array(y) == np.array(pred))), float(f1_score(y, pred, average="macro"))


def test_accuracy_exact_on_relabelled_folder(bundle, synthetic_dataset, tmp_path):
    """A folder where a third of the images sit in the wrong class folder: accuracy well below 1, exactly known."""
    from trashcam.benchmarks import BenchConfig, run_benchmark
    from trashcam.edge.bundle import Bundle

    labels = Bundle.load(bundle).labels
    data = tmp_path / "data"
    for c in labels:
        (data / c).mkdir(parents=True)
    for ci, c in enumerate(labels):
        for i, f in enumerate(sorted((synthetic_dataset / c).iterdir())[:6]):
            dest = labels[(ci + 1) % 3] if i % 3 == 0 else c  # every third image filed under the next class
            shutil.copy(f, data / dest / f"{c}_{f.name}")
    r = run_benchmark(bundle, BenchConfig(variants=("tflite-fp32",), threads=(1,), runs=3, warmup=1,
                                          data=str(data), isolate=False, record=False))
    acc, f1 = _independent_accuracy(bundle, data, labels)
    e = r["variants"][0]
    assert r["data"]["images"] == 18
    assert e["accuracy"] == round(acc, 6) and e["macro_f1"] == pytest.approx(f1, abs=1e-6)
    assert acc < 0.9  # the relabelling really shows
    assert e["drop_pp"] == pytest.approx((r["reference"]["accuracy"] - acc) * 100, abs=1e-3)
    assert e["peak_rss_mb"] is None  # in-process runs do not claim a per-variant RSS
    assert "bench" not in Bundle.load(bundle).metadata  # record=False


def test_unknown_class_folder_is_a_clear_error(bundle, synthetic_dataset, tmp_path):
    data = Path(shutil.copytree(synthetic_dataset, tmp_path / "data"))
    shutil.copytree(data / "red", data / "purple")
    before = (bundle / "metadata.json").read_bytes()
    p = run_cli("-m", "trashcam.benchmarks.cli", str(bundle), *FAST, "--data", str(data),
                "--json", str(tmp_path / "r.json"))
    assert p.returncode == 2
    assert "purple" in p.stderr and "does not know" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "r.json").exists()
    assert (bundle / "metadata.json").read_bytes() == before


def test_unknown_variant_is_a_clear_error(bundle, capsys):
    from trashcam.benchmarks.cli import main

    assert main([str(bundle), "--variants", "tflite-int8", "--no-record"]) == 2
    err = capsys.readouterr().err
    assert "tflite-int8" in err and "keras" in err  # says what the bundle has


def test_compare_prints_ratios(cli_run, tmp_path, capsys):
    from trashcam.benchmarks.cli import main

    a = cli_run[3]
    b = json.loads(json.dumps(a))
    for e in b["variants"]:
        e["e2e_latency_ms"]["p50"] *= 2
        e["latency_ms"]["p50"] *= 0.5
        e["fps"] *= 0.25
        e["accuracy"] -= 0.1
    b["variants"].append({**b["variants"][0], "threads": 4})
    (tmp_path / "laptop.json").write_text(json.dumps(a))
    (tmp_path / "pi.json").write_text(json.dumps(b))
    assert main(["--compare", str(tmp_path / "laptop.json"), str(tmp_path / "pi.json")]) == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("tflite-fp32")).split()
    head = next(ln for ln in out.splitlines() if ln.startswith("variant"))
    assert "e2e p50 B/A" in head and "A = laptop:" in out and "B = pi:" in out
    assert row[2] == "2.000" and row[4] == "0.500" and row[5] == "0.250" and row[-1] == "-10.00"
    assert "only in pi: keras@4" in out

    from trashcam.benchmarks.report import compare
    rows = {r["name"]: r for r in compare(a, b)["rows"]}
    assert rows["keras"]["e2e p50"]["ratio"] == 2.0


def test_compare_bad_file(tmp_path, capsys):
    from trashcam.benchmarks.cli import main

    (tmp_path / "a.json").write_text("{not json")
    assert main(["--compare", str(tmp_path / "a.json"), str(tmp_path / "a.json")]) == 2
    assert "cannot compare" in capsys.readouterr().err


def test_keras_missing_falls_back_to_fp32_reference(bundle, monkeypatch):
    """On a device without TensorFlow the keras variant is skipped with a note, drops are vs tflite-fp32."""
    from trashcam.benchmarks import engines, pipeline
    from trashcam.benchmarks.config import BenchConfig

    real = engines.import_runtime

    def no_tf(fmt):
        if fmt == "keras":
            raise engines.VariantUnavailable("keras needs tensorflow + keras, which is not installed here")
        return real(fmt)

    monkeypatch.setattr(engines, "import_runtime", no_tf)
    r = pipeline.run_benchmark(bundle, BenchConfig(threads=(1,), runs=3, warmup=1, isolate=False))
    assert [e["name"] for e in r["variants"]] == ["tflite-fp32"]
    assert [(s["name"], s["requested"]) for s in r["skipped"]] == [("keras", False)]
    assert "not installed" in r["skipped"][0]["reason"]
    assert r["reference"]["variant"] == "tflite-fp32" and "TensorFlow" in r["reference"]["note"]
    assert r["variants"][0]["drop_pp"] == 0.0
    assert r["recorded"]["p50_ms"]["1"] == {"tflite-fp32": r["variants"][0]["e2e_latency_ms"]["p50"]}


def test_default_threads_follow_the_affinity_mask(monkeypatch):
    """A process pinned to 1 of many cores (taskset, a container's cpuset) defaults to 1 interpreter thread."""
    from trashcam.edge import machine
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert machine.usable_cores() == 1 and machine.default_threads() == 1
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert machine.default_threads() == 4


def test_summarize_and_cpuinfo():
    from trashcam.edge.machine import parse_cpuinfo
    from trashcam.benchmarks.latency import summarize

    s = summarize(list(range(1, 101)))  # 1..100 ms
    assert (s["p50"], s["p90"], s["p99"], s["min"], s["max"]) == (50.5, 90.1, 99.01, 1.0, 100.0)
    assert s["fps"] == round(1000 / 50.5, 2) and s["runs"] == 100
    x86 = "processor\t: 0\nmodel name\t: Intel(R) Core(TM) i5\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
    arm = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 asimddp\nCPU part\t: 0xd0b\n"
    assert parse_cpuinfo(x86) == {"model": "Intel(R) Core(TM) i5", "flags": ["sse4_2", "avx", "avx2", "fma"]}
    assert parse_cpuinfo(arm)["flags"] == ["asimd", "asimddp"]


NO_TF = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "matplotlib"):
            raise ImportError(f"No module named {name!r} (blocked: a Pi with the edge extra)")
sys.meta_path.insert(0, Block())
sys.argv = ["edge-bench", *sys.argv[1:]]
try:
    runpy.run_module("trashcam.benchmarks.cli", run_name="__main__")
finally:
    print("TF_LOADED", sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")))
"""


def test_runs_on_a_device_without_tensorflow_or_matplotlib(bundle, tmp_path):
    p = run_cli("-c", NO_TF, str(bundle), *FAST, "--json", str(tmp_path / "r.json"), "--plots", str(tmp_path / "p"))
    assert p.returncode == 0, p.stderr
    assert "TF_LOADED []" in p.stdout
    assert "skipped keras" in p.stdout and "matplotlib is not installed; plots skipped" in p.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    assert [e["name"] for e in r["variants"]] == ["tflite-fp32"] and r["reference"]["variant"] == "tflite-fp32"
    assert not (tmp_path / "p").exists()


def test_help_is_instant_and_teaches():
    p = run_cli("-X", "importtime", "-m", "trashcam.benchmarks.cli", "--help", check=True)
    assert "examples:" in p.stdout and "--compare" in p.stdout
    heavy = [ln for ln in p.stderr.splitlines()
             if any(x in ln for x in ("tensorflow", "ai_edge_litert", "onnxruntime", "matplotlib"))]
    assert heavy == [], heavy[:3]


def test_baseline_bundle_timed_interleaved(bundle, tmp_path, capsys):
    """--baseline: another bundle's same variant is timed beside each variant and the ratio reported; a baseline
    without that variant is a clear error before anything is timed."""
    from trashcam.benchmarks.cli import main

    other = Path(shutil.copytree(bundle, tmp_path / "other"))
    out = tmp_path / "r.json"
    assert main([str(bundle), *FAST, "--variants", "tflite-fp32", "--in-process", "--no-accuracy", "--no-record",
                 "--baseline", str(other), "--json", str(out)]) == 0
    e = json.loads(out.read_text())["variants"][0]
    assert e["baseline"]["bundle"] == str(other.resolve())
    assert set(e["baseline"]["latency_ms"]) >= STAT_KEYS and e["baseline"]["latency_ms"]["runs"] == 5
    lo, hi = e["baseline"]["invoke_ratio_p50_ci95"]  # 5 runs: whether it covers the ratio is test_ratio_interval's
    assert 0 < lo <= hi
    assert "vs baseline" in capsys.readouterr().out

    meta = json.loads((other / "metadata.json").read_text())
    meta["variants"].pop("tflite-fp32")
    (other / "metadata.json").write_text(json.dumps(meta))
    assert main([str(bundle), *FAST, "--variants", "tflite-fp32", "--no-record", "--baseline", str(other)]) == 2
    assert "has no tflite-fp32" in capsys.readouterr().err


def test_ratio_interval_covers_the_true_ratio_and_narrows_with_rounds():
    from trashcam.benchmarks.latency import ratio_interval, summarize
    from trashcam.benchmarks.score_cost import cost_summary

    rng = np.random.default_rng(3)

    def rounds(n):  # a shared machine: each round's two calls slowed alike, the score adding 10 %
        load = rng.lognormal(0.0, 0.2, n)
        return 3.0 * load * rng.lognormal(0, 0.05, n), 3.3 * load * rng.lognormal(0, 0.05, n)

    few, many = ratio_interval(*rounds(20)), ratio_interval(*rounds(2000))
    assert few[0] < 1.10 < few[1] and many[0] < 1.10 < many[1]
    assert many[1] - many[0] < (few[1] - few[0]) / 3
    c = cost_summary(dict(zip(("probs", "scored"), map(list, rounds(200)))), summarize)
    assert c["extra_us_p50"] == pytest.approx((c["scored_ms"]["p50"] - c["probs_ms"]["p50"]) * 1e3, abs=0.2)
