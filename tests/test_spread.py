"""The spread harness (benchmarks/spread.py + spread_stats.py), k-fold splits, the numerics record in metrics.json,
and, behind `slow`, the default recipe reproduced within its measured spread."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import REPO, SAMPLE, SHARED, run_cli
from trashcam.benchmarks import spread as sp
from trashcam.benchmarks.spread_stats import (churn, confusion_summary, describe, expected_spread, summarize,
                                              t975, to_markdown)
from trashcam.edge.config import ConfigError
from trashcam.train.config import TrainConfig, parse_fold
from trashcam.train.data import fold_split

# The one place the slow test's expected spread lives; it must hold numbers measured with edge-spread (see the
# file's "comment"), not one run's result.
EXPECTED = REPO / "train" / "default_recipe_spread.json"

# ------------------------------------------------------------------------------------------- statistics


def test_describe_gives_the_t_interval_of_the_mean():
    d = describe([0.90, 0.92, 0.94])
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.92) and d["std"] == pytest.approx(0.02)
    half = 4.303 * 0.02 / math.sqrt(3)  # t(0.975, 2 df)
    assert d["ci95"] == pytest.approx([0.92 - half, 0.92 + half]) and d["range"] == pytest.approx(0.04)
    assert describe([0.5])["ci95"] is None and describe([])["n"] == 0
    assert t975(30) == 2.042 and abs(t975(60) - 2.000) < 0.003 and abs(t975(1000) - 1.962) < 0.003


def _record(i: int, seed: int, acc_errors: int, fold: str | None = None, status: str = "ok") -> dict:
    """A run record over labels glass/metal/plastic with 10 test images each; `acc_errors` glass -> plastic."""
    labels = ["glass", "metal", "plastic"]
    cm = [[10 - acc_errors, 0, acc_errors], [1, 9, 0], [0, 0, 10]]
    per_class = {c: {"f1": 0.9, "precision": 0.9, "recall": 0.9, "support": 10} for c in labels}
    m = {"accuracy": (30 - acc_errors - 1) / 30, "macro_f1": 0.9, "per_class": per_class, "confusion_matrix": cm}
    return {"id": f"r{i}", "status": status, "seed": seed, "onednn": 1, "threads": 2, "fold": fold,
            "labels": labels, "test_images": 30, "float": {**m, "accuracy": 29 / 30}, "int8": m,
            "int8_drop_pp": 100 * (29 / 30 - m["accuracy"]), "wall_s": {"train": 10.0 + i},
            "stages": [{"name": "stage2", "epochs_run": 5}]}


def test_summary_of_records_names_the_confusions_and_pools_folds():
    recs = [_record(0, 1, 1, "1/2"), _record(1, 1, 3, "2/2"), _record(2, 2, 2, "1/2"), _record(3, 9, 0, status="x")]
    s = summarize(recs)
    assert s["runs_ok"] == 3 and s["runs_failed"] == ["r3"]
    acc = s["metrics"]["int8_accuracy"]
    assert acc["min"] == pytest.approx(26 / 30) and acc["max"] == pytest.approx(28 / 30) and acc["n"] == 3
    conf = s["confusions"]["int8"]
    assert conf["top"][0] == {"true": "glass", "predicted": "plastic", "count": 6, "per_run": 2.0, "share": 0.2}
    named = {(p["true"], p["predicted"]): p["count"] for p in conf["named"]}
    assert named == {("glass", "plastic"): 6, ("plastic", "glass"): 0, ("metal", "glass"): 3, ("glass", "metal"): 0}
    pooled = s["kfold_pooled"]["repetitions"]  # seed 2 has one fold of two: not pooled
    assert len(pooled) == 1 and pooled[0]["int8_accuracy"] == pytest.approx((28 + 26) / 60)
    lo, hi = pooled[0]["int8_wilson95"]
    assert lo < 54 / 60 < hi and hi - lo == pytest.approx(0.155, abs=0.001)  # binomial over the 60 pooled images
    assert "Wilson 95 %" in to_markdown(s)
    assert set(s["by_seed"]) == {"seed=1", "seed=2"} and s["per_class_f1"]["int8"]["glass"]["mean"] == 0.9
    assert s["targets"]["int8_accuracy_mean >= 95.0 %"] is False
    # only folds here: the spread target is over pooled repetitions, and one repetition measures none
    assert s["targets_over"] == "k-fold repetitions, pooled"
    assert s["targets"]["int8_accuracy max - min <= 1.0 pp"] is None and "not measured" in to_markdown(s)
    exp = expected_spread(s, margin_pp=0.5)
    assert exp["tolerance"] == pytest.approx(1 / 30 + 0.005, abs=1e-4) and exp["measured"] is True
    assert confusion_summary(recs[:1])["errors"] == 2


def _paired_record(run_id: str, wrong: list[str], images: int = 10, data: str = "/d") -> dict:
    return {"id": run_id, "status": "ok", "test_images": images,
            "int8": {"accuracy": 1 - len(wrong) / images,
                     "misclassified": [[f"{data}/glass/{w}.jpg", "glass", "metal"] for w in wrong]}}


def test_paired_comparison_counts_fixed_and_broken_images(tmp_path):
    from trashcam.benchmarks.paired import compare, mcnemar_exact, to_markdown
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 64) and mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    base = [_paired_record("f1", ["a", "b", "c"]), _paired_record("f2", ["d"]), _paired_record("f3", ["e"])]
    # relative data path in one output, absolute in the other: the same images; f3 tested another set
    cand = [_paired_record("f1", ["a"], data="data"), _paired_record("f2", ["d", "x"]),
            _paired_record("f3", [], images=12), _paired_record("f4", [])]
    r = compare(base, cand, {"data": "d", "folds": 5, "split_seed": None}, {"data": "d", "folds": 5})
    assert [p["id"] for p in r["pairs"]] == ["f1", "f2"] and r["skipped"] == ["f3: 10 vs 12 test images"]
    assert r["pairs"][0] | {"fixed": 2, "broken": 0} == r["pairs"][0] and r["pairs"][1]["broken"] == 1
    assert r["diff"]["mean"] == pytest.approx((0.2 - 0.1) / 2) and (r["pairs_better"], r["pairs_worse"]) == (1, 1)
    assert r["pooled"] | {"images": 20, "baseline": 0.8, "candidate": 0.85, "fixed": 2, "broken": 1} == r["pooled"]
    assert r["pooled"]["mcnemar_p"] == pytest.approx(1.0) and "2 images fixed, 1 broken" in to_markdown(r)
    with pytest.raises(ValueError, match="folds"):
        compare(base, cand, {"data": "d", "folds": 5}, {"data": "d", "folds": 10})
    # one data folder spelled relative in one output's config and absolute in the other's is the same data
    r2 = compare(base, cand, {"data": "d", "folds": 5}, {"data": str(Path("d").resolve()), "folds": 5})
    assert [p["id"] for p in r2["pairs"]] == ["f1", "f2"]
    with pytest.raises(ValueError, match="data"):
        compare(base, cand, {"data": "d", "folds": 5}, {"data": "other", "folds": 5})
    with pytest.raises(ValueError, match="no run id"):
        compare(base, [_paired_record("g", [])])
    # older records without the list of mistakes still pair on accuracy; McNemar reads the runs that listed them
    unlisted = [{**b, "int8": {"accuracy": b["int8"]["accuracy"]}} for b in base]
    r3 = compare(unlisted, cand)
    assert r3["pairs"][0]["fixed"] is None and r3["pooled"]["mcnemar_p"] is None
    assert "no run listed its mistakes" in to_markdown(r3)
    r4 = compare(unlisted[:1] + base[1:], cand)
    assert r4["pooled"]["listed_pairs"] == 1 and "over the 1 pairs" in to_markdown(r4)
    # through the CLI: OUT/paired.json beside the summary; a baseline from other folds is a clear error
    for name, recs, folds in (("base", base, 5), ("cand", cand, 5), ("other", base, 10)):
        (tmp_path / name / "runs").mkdir(parents=True)
        (tmp_path / name / "spread_config.json").write_text(json.dumps({"data": "d", "folds": folds}))
        for rec in recs:
            (tmp_path / name / "runs" / f"{rec['id']}.json").write_text(json.dumps(rec))
    assert "Paired against" in sp.compare_to(tmp_path / "cand", tmp_path / "base")
    assert json.loads((tmp_path / "cand" / "paired.json").read_text())["pooled"]["fixed"] == 2
    with pytest.raises(ValueError, match="not made on the same splits"):
        sp.compare_to(tmp_path / "cand", tmp_path / "other")


def test_merge_pools_outputs_on_one_split_and_refuses_mixed_splits(tmp_path):
    def output(name: str, split_seed, *recs) -> Path:
        (tmp_path / name / "runs").mkdir(parents=True)
        for r in recs:
            r["numerics"] = {"split_seed": split_seed}
            r["int8"]["misclassified"] = [[f"/d/glass/{k}.jpg", "glass", "metal"] for k in range(r["id"] == "r1")]
            (tmp_path / name / "runs" / f"{r['id']}.json").write_text(json.dumps(r))
        return tmp_path / name
    a = output("a", 42, _record(0, 1, 1), _record(1, 2, 2))
    b = output("onednn0", 42, _record(0, 1, 3))  # the same run id as one of a's: still its own run
    c = output("other_split", 7, _record(0, 1, 0))
    s = sp.write_summary(tmp_path / "all", merge=(a, b))
    assert s["runs_ok"] == 3 and s["metrics"]["int8_accuracy"]["min"] == pytest.approx(26 / 30)
    assert "pooled from" in (tmp_path / "all" / "summary.md").read_text()
    assert sorted(r["id"] for r in sp.merged_records(a, (b,))) == ["onednn0/r0", "r0", "r1"]
    with pytest.raises(ValueError, match="one split"):
        sp.merged_records(a, (c,))
    p = run_cli("-m", "trashcam.benchmarks.spread", "--out", str(a), "--merge", str(b), "--data", str(tmp_path))
    assert p.returncode == 2 and "--summary-only" in p.stderr
    # --write-expected refreshes what it computes and keeps what report.md also quotes (data, cv, source)
    exp = tmp_path / "expected.json"
    exp.write_text(json.dumps({"int8_accuracy_mean": 0.5, "cv": [{"pooled": 0.9}], "source": "by hand"}))
    p = run_cli("-m", "trashcam.benchmarks.spread", "--out", str(a), "--summary-only", "--write-expected", str(exp))
    kept = json.loads(exp.read_text())
    assert p.returncode == 0 and kept["cv"] == [{"pooled": 0.9}] and kept["source"] == "by hand"
    assert kept["runs"] == 2 and kept["int8_accuracy_mean"] != 0.5 and kept["measured"] is True

def test_churn_counts_the_images_two_runs_on_one_split_disagree_on():
    def rec(seed: int, wrong: list[str], fold: str | None = None, onednn: int = 1) -> dict:
        return {**_paired_record(f"s{seed}o{onednn}{fold}", wrong, images=100), "seed": seed, "fold": fold,
                "numerics": {"split_seed": 7, "fold": fold}}
    recs = [rec(1, ["a", "b"]), rec(2, ["b", "c"]), rec(1, ["a"], onednn=0), rec(3, ["x", "y", "z"], fold="1/5")]
    c = churn(recs)  # pairs: 1-2 differ on a, c (2); 1-1' on b (1); 2-1' on a, b, c (3); the fold-1 run pairs none
    assert c["pairs"] == 3 and c["discordant_share"]["mean"] == pytest.approx(0.02)
    assert c["by_kind"]["seed"]["mean"] == pytest.approx(0.025) and c["by_kind"]["numerics"]["mean"] == 0.01
    # coin flips over 2 images in 100: sd sqrt(0.02 / 2 / 100) = 1 pp a run; 3 runs span 1.693 sd on average
    assert c["run_sd"] == pytest.approx(0.01) and c["implied_range"] == pytest.approx(0.01693)
    assert churn(recs[3:]) is None
    # a record written before runs listed their mistakes: left out of the churn, not a KeyError
    old = rec(4, ["q"])
    del old["int8"]["misclassified"]
    assert churn(recs + [old])["pairs"] == 3


# --------------------------------------------------------------------------------------------- k-fold


def test_folds_cover_every_image_once_and_are_deterministic(synthetic_dataset):
    tests = []
    for k in (1, 2, 3):
        s = fold_split(synthetic_dataset, f"{k}/3", seed=5)
        files = {name: {r for r, _ in v} for name, v in s.files.items()}
        assert not (files["test"] & files["train"]) and not (files["val"] & files["train"])
        assert not (files["val"] & files["test"]) and sum(map(len, files.values())) == 60
        assert {y for _, y in s.files["test"]} == {0, 1, 2}  # stratified
        tests += sorted(files["test"])
    assert len(tests) == len(set(tests)) == 60
    assert fold_split(synthetic_dataset, "2/3", 5).files == fold_split(synthetic_dataset, "2/3", 5).files
    assert fold_split(synthetic_dataset, "2/3", 5).files != fold_split(synthetic_dataset, "2/3", 6).files


def test_split_seed_fixes_the_split_while_the_training_seed_varies(tmp_path):
    from trashcam.train.config import resolve
    from trashcam.train.pipeline import _split

    def test_files(**kw):
        return sorted(r for r, _ in _split(resolve("quick", data=str(SAMPLE), **kw), tmp_path).files["test"])
    assert test_files(seed=1, split_seed=42) == test_files(seed=2, split_seed=42) == test_files(seed=42)
    assert test_files(seed=1) != test_files(seed=2)  # without it each seed draws its own split
    argv = sp.train_argv(sp.SpreadConfig(data=str(SAMPLE), split_seed=42), sp.grid(sp.SpreadConfig())[0],
                         tmp_path / "b", tmp_path / "c")
    assert argv[argv.index("--split-seed") + 1] == "42" and argv[argv.index("--seed") + 1] == "1"


def test_fold_field_is_checked():
    assert parse_fold("2/5") == (2, 5) and TrainConfig(fold="1/2").fold == "1/2"
    for bad in ("0/5", "6/5", "1/1", "5", "a/b"):
        with pytest.raises(ConfigError, match="fold"):
            TrainConfig(fold=bad)


# ------------------------------------------------------------------------------------------- harness


def test_grid_ids_and_resume_skip_finished_runs(tmp_path, monkeypatch):
    cfg = sp.SpreadConfig(data=str(SAMPLE), out=str(tmp_path), seeds=(1, 2), onednn=(0, 1), threads=(1,),
                          folds=5, fold_ids=(2,))
    assert [s.id for s in sp.grid(cfg)] == ["seed1-fold2of5-onednn0-threads1", "seed1-fold2of5-onednn1-threads1",
                                            "seed2-fold2of5-onednn0-threads1", "seed2-fold2of5-onednn1-threads1"]
    assert sp.step_env(sp.grid(cfg)[0])["TF_ENABLE_ONEDNN_OPTS"] == "0"
    calls = []

    def fake_run(cfg, spec, out, cache):
        calls.append(spec.id)
        return {**_record(len(calls), spec.seed, 1), "id": spec.id, "status": "failed" if spec.onednn else "ok"}

    monkeypatch.setattr(sp, "run_one", fake_run)
    monkeypatch.setattr(sp, "collect", lambda: {})
    s = sp.spread(cfg, echo=lambda *_: None)
    assert len(calls) == 4 and s["runs_ok"] == 2 and len(s["runs_failed"]) == 2
    sp.spread(cfg, echo=lambda *_: None)  # only the failed runs again
    assert calls[4:] == ["seed1-fold2of5-onednn1-threads1", "seed2-fold2of5-onednn1-threads1"]
    assert "Targets" in (tmp_path / "summary.md").read_text()
    with pytest.raises(ConfigError):
        sp.SpreadConfig(onednn=(2,))


@pytest.mark.slow  # ~90 s of both cores: two trainings + conversions; the parts above are tested fast
def test_harness_on_the_sample_two_folds(tmp_path):
    """The real thing, shrunk: quick recipe with fewer epochs, 2 of 5 folds, one numerics setting."""
    out = tmp_path / "spread"
    args = ["-m", "trashcam.benchmarks.spread", "--data", str(SAMPLE), "--out", str(out), "--recipe", "quick",
            "--seeds", "3", "--folds", "5", "--fold-ids", "1,2", "--threads", "2",
            "--train-args", "--stage1-epochs 4 --stage2-epochs 1 --views 1 --image-size 64 --no-tta",
            # the INT8 recipe's extra passes are tested in test_convert.py; here they would only cost time
            "--convert-args", "--no-check --calib-size 30 --no-int8-bias-correction --no-int8-range-repair"]
    p = run_cli(*args, timeout=1800)  # ~3 min on 2 idle cores; generous for a shared machine
    assert p.returncode == 0, p.stdout + p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs_ok"] == 2 and summary["config"]["folds"] == 5
    acc = summary["metrics"]["int8_accuracy"]
    assert acc["n"] == 2 and 0.2 < acc["mean"] <= 1 and acc["ci95"] is not None
    assert set(summary["per_class_f1"]["int8"]) == {"cardboard", "glass", "metal", "paper", "plastic"}
    assert {p["true"] for p in summary["confusions"]["int8"]["named"]} == {"glass", "plastic", "metal"}
    tests = set()
    for fold in ("1of5", "2of5"):
        rec = json.loads((out / "runs" / f"seed3-fold{fold}-onednn1-threads2.json").read_text())
        assert rec["status"] == "ok" and rec["test_images"] == 30 and rec["env"]["TF_ENABLE_ONEDNN_OPTS"] == "1"
        errors = round(30 * (1 - rec["int8"]["accuracy"]))
        assert rec["int8"]["images"] == 30 and len(rec["int8"]["misclassified"]) == errors
        numerics = json.loads((out / "runs" / f"seed3-fold{fold}-onednn1-threads2" / "bundle" / "metrics.json")
                              .read_text())["numerics"]
        assert numerics["seed"] == 3 and numerics["fold"] == fold.replace("of", "/") and numerics["threads"] == 2
        assert numerics["TF_ENABLE_ONEDNN_OPTS"] == "1" and numerics["intra_op_threads"] == 2
        assert numerics["tensorflow"] and "cpu_model" in numerics
        split = json.loads((out / "runs" / f"seed3-fold{fold}-onednn1-threads2" / "bundle" / "split.json").read_text())
        tests |= {r for r, _ in split["files"]["test"]}
    assert len(tests) == 60  # disjoint test folds
    again = run_cli(*args, timeout=300)  # resumable: nothing is retrained
    assert again.returncode == 0 and again.stdout.count("done earlier, skipped") == 2, again.stdout


# --------------------------------------------------------------------------------------------- slow


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/trashnet5")
def test_default_recipe_within_measured_spread(tmp_path):
    """One run of the default recipe (seed 42, this machine's numerics) lands inside the measured spread."""
    expected = json.loads(EXPECTED.read_text())
    out = tmp_path / "spread"
    p = run_cli("-m", "trashcam.benchmarks.spread", "--data", str(SHARED), "--out", str(out), "--seeds", "42",
                timeout=3 * 3600)
    assert p.returncode == 0, p.stdout + p.stderr
    acc = json.loads((out / "summary.json").read_text())["metrics"]["int8_accuracy"]["mean"]
    print(json.dumps({"int8_accuracy": acc, "expected": expected}))
    assert abs(acc - expected["int8_accuracy_mean"]) <= expected["tolerance"], (acc, expected)
