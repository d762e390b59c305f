"""Calibration: ECE by hand, temperature scaling on a deliberately over-confident model, the "uncertain"
threshold meeting its target, and edge-calibrate end to end on the tiny bundle."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import run_cli
from trashcam.calibration.metrics import ece, nll, reliability_bins
from trashcam.calibration.temperature import fit_temperature
from trashcam.calibration.threshold import choose_threshold
from trashcam.edge.bundle import Bundle
from trashcam.edge.runtime import Classifier
from trashcam.edge.temperature import apply_temperature


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _calibrated_sample(n=3000, k=5, seed=0):
    """Logits z and labels drawn from softmax(z): softmax(z) is perfectly calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    p = _softmax(z)
    y = np.array([rng.choice(k, p=row) for row in p])
    return z, y


def test_ece_on_a_hand_example():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    labels = np.array([0, 1, 0, 1])  # right, wrong, right, right
    # bins of width 1/15: 0.9 -> bin 13 (acc 0.5, conf 0.9), 0.6 -> bin 8 (1.0, 0.6), 0.8 -> bin 11 (1.0, 0.8)
    assert ece(probs, labels) == pytest.approx(0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.2)
    b = reliability_bins(probs, labels)
    assert b["count"].tolist() == [0] * 8 + [1, 0, 0, 1, 0, 2, 0]
    # a confidence exactly on an edge belongs to the bin it closes: (i/B, (i+1)/B]
    assert reliability_bins(np.array([[2 / 3, 1 / 3]]), np.array([0]), n_bins=3)["count"].tolist() == [0, 1, 0]
    assert ece(np.array([[1.0, 0.0]] * 4), np.array([0, 0, 0, 0])) == 0.0


def test_temperature_scaling_fixes_a_deliberately_over_confident_model():
    z, y = _calibrated_sample()
    over = _softmax(4.0 * z)  # logits multiplied by 4: same argmax, far too sure
    t = fit_temperature(over, y)
    assert t == pytest.approx(4.0, rel=0.15)
    after = apply_temperature(over, t)  # exactly what edge.runtime.Classifier applies
    assert nll(after, y) < 0.8 * nll(over, y)
    assert ece(after, y) < 0.5 * ece(over, y)
    assert np.array_equal(after.argmax(1), over.argmax(1))  # temperature never changes the top-1
    assert fit_temperature(_softmax(z), y) == pytest.approx(1.0, abs=0.15)  # already calibrated: left alone
    under = _softmax(0.5 * z)
    assert fit_temperature(under, y) == pytest.approx(0.5, rel=0.15)


def test_threshold_meets_target_precision_on_the_data_it_was_chosen_on():
    z, y = _calibrated_sample(n=2000, seed=1)
    p = _softmax(z)
    for target in (0.8, 0.9, 0.95):
        r = choose_threshold(p, y, target_precision=target)
        accepted = p.max(1) >= r["threshold"]
        assert r["met"] and np.mean(p.argmax(1)[accepted] == y[accepted]) >= target
        assert accepted.mean() == pytest.approx(r["coverage"])
        # the lowest such threshold: accepting any more images breaks the target
        order = np.argsort(-p.max(1))
        prec = np.cumsum(p.argmax(1)[order] == y[order]) / np.arange(1, len(y) + 1)
        assert np.all(prec[accepted.sum():] < target)
    r = choose_threshold(p, y, target_coverage=0.7)
    assert (p.max(1) >= r["threshold"]).mean() >= 0.7 and r["coverage"] == pytest.approx(0.7, abs=1e-3)
    wrong = np.array([[0.9, 0.1], [0.8, 0.2]])
    r = choose_threshold(wrong, np.array([1, 1]), target_precision=0.9)
    assert not r["met"] and r["coverage"] == 0.0 and r["threshold"] > 0.9  # everything flagged uncertain


@pytest.fixture(scope="module")
def calibrated(tiny_keras_bundle, tmp_path_factory):
    """Tiny bundle + an INT8 variant, with two validation labels flipped so the model is confidently wrong."""
    from trashcam.calibration.config import CalibrationConfig
    from trashcam.calibration.pipeline import calibrate_bundle
    from trashcam.convert.config import ConvertConfig
    from trashcam.convert.pipeline import convert_bundle

    d = tmp_path_factory.mktemp("cal") / "b"
    shutil.copytree(tiny_keras_bundle, d)
    convert_bundle(d, ConvertConfig(variants=("tflite-int8",), calib_size=30, check=False))
    split = json.loads((d / "split.json").read_text())
    for item in split["files"]["val"][:2]:
        item[1] = (item[1] + 1) % 3
    (d / "split.json").write_text(json.dumps(split))
    b = Bundle.load(d, verify=False)
    b.add_file("split.json")
    b.save()
    report = calibrate_bundle(d, CalibrationConfig(target_precision=0.7, threads=1))
    return d, report


def test_calibrate_bundle_end_to_end(calibrated):
    d, report = calibrated
    b = Bundle.load(d)  # every file recorded, checksums intact
    cal = b.calibration
    k = report["variants"]["keras"]
    print({n: (r["temperature"], r["before"]["nll"], r["after"]["nll"], r["before"]["ece"], r["after"]["ece"])
           for n, r in report["variants"].items()})
    assert k["before"]["accuracy"] == pytest.approx(7 / 9, abs=1e-6)
    assert k["temperature"] > 1.5  # confidently wrong on 2 of 9: soften
    assert k["after"]["nll"] < 0.5 * k["before"]["nll"]
    assert k["after"]["ece"] < k["before"]["ece"]
    assert cal["temperature"] == k["temperature"] and cal["base_variant"] == "keras"
    assert set(cal["temperature_by_variant"]) == {"keras", "tflite-int8"}
    assert report["variants"]["tflite-int8"]["after"]["nll"] <= report["variants"]["tflite-int8"]["before"]["nll"]
    for rel in report["variants"]["tflite-int8"]["plots"] + k["plots"]:
        assert (d / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and rel in b.metadata["files"]
    clf = Classifier(b, "tflite-int8", threads=1)  # the runtime picks up the variant's own temperature
    assert clf.temperature == pytest.approx(cal["temperature_by_variant"]["tflite-int8"])
    assert clf.min_confidence == pytest.approx(cal["threshold"])
    assert cal["threshold_rule"]["precision"] >= 0.7


def test_calibrating_one_variant_keeps_the_others(calibrated, tmp_path):
    from trashcam.calibration.config import CalibrationConfig
    from trashcam.calibration.pipeline import calibrate_bundle

    d = tmp_path / "b"
    shutil.copytree(calibrated[0], d)
    before = Bundle.load(d).calibration
    calibrate_bundle(d, CalibrationConfig(variants=("tflite-int8",), target_coverage=0.5, plots=False))
    after = Bundle.load(d).calibration
    assert after["temperature"] == before["temperature"]  # keras' bundle-wide value stays
    assert after["temperature_by_variant"]["keras"] == before["temperature_by_variant"]["keras"]


def test_cli(calibrated, tmp_path):
    from PIL import Image

    d = tmp_path / "b"
    shutil.copytree(calibrated[0], d)
    ood = tmp_path / "ood"
    ood.mkdir()
    for i in range(4):  # no class the model knows: mid-grey
        Image.new("RGB", (40, 48), (128, 128, 128)).save(ood / f"g{i}.png")
    p = run_cli("-m", "trashcam.calibration.cli", str(d), "--variants", "tflite-int8", "--target-coverage", "0.5",
                "--no-plots", "--ood-data", str(ood), "--threads", "1")
    assert p.returncode == 0, p.stderr
    row = [ln for ln in p.stdout.splitlines() if ln.startswith("tflite-int8")][0]
    assert "ood below threshold" in row  # the confidence threshold; the score's flags are the rule line below
    rule = [ln for ln in p.stdout.splitlines() if ln.startswith("tflite-int8: 'uncertain' = ")]
    assert len(rule) == 1 and "of foreign images" in rule[0]  # the rule edge-run will apply, said once
    assert "= relative score" in rule[0] and "fitted on the other half" in rule[0]
    assert "new known-class images:" in rule[0] and "% expected" in rule[0]  # beside the fitting images' share
    rep = json.loads((d / "calibration_report.json").read_text())
    assert rep["variants"]["tflite-int8"]["ood"]["n_images"] == 4
    assert rep["variants"]["tflite-int8"]["threshold"]["coverage"] >= 0.5


def test_the_table_says_what_a_score_without_foreign_images_can_do():
    """Fitted with no reviewed foreign images, the rule lines are followed once by the cold start's limit and the
    way past it; with foreign images to hand, not."""
    from trashcam.calibration.cli import NO_FOREIGN_HINT, format_table

    row = {"temperature": 1.0, "before": {"nll": 0.5, "ece": 0.05}, "after": {"nll": 0.4, "ece": 0.02},
           "threshold": {"threshold": 0.6, "coverage": 0.9, "precision": 0.95}}
    cand = {"threshold": 1.2, "val_flagged": 0.044}

    def table(chosen_by, kind):
        u = {"kind": kind, "chosen_by": chosen_by, "candidates": {kind: cand}, "new_flagged_expected": 0.047}
        return format_table({"variants": {"tflite-int8": {**row, "uncertainty": u}, "onnx": {**row, "uncertainty": u}},
                             "fitted_on": {"n_images": 252, "source": "test split", "n_skipped": 0},
                             "base_variant": "tflite-int8"}).splitlines()

    lines = table("default", "neighbour-max")
    assert lines.count(NO_FOREIGN_HINT) == 1 and lines[-1] == NO_FOREIGN_HINT
    assert "--ood-data" in NO_FOREIGN_HINT and "_foreign/" in NO_FOREIGN_HINT
    assert NO_FOREIGN_HINT in table("asked for", "neighbour-lite")
    cand["foreign_flagged"] = 0.8  # foreign images to hand (--ood-data, or _foreign/)
    assert NO_FOREIGN_HINT not in table("foreign images", "relative")


def test_help_is_instant_and_bad_targets_are_rejected():
    code = ("import sys; from trashcam.calibration.cli import command; "
            "from trashcam.edge.clitools import help_text; h = help_text(command, 'edge-calibrate'); "
            "assert 'examples' in h; print('tensorflow' in sys.modules or 'matplotlib' in sys.modules)")
    assert run_cli("-c", code, check=True).stdout.strip() == "False"
    p = run_cli("-m", "trashcam.calibration.cli", "/nonexistent", "--target-precision", "1.5")
    assert p.returncode == 2 and "--target-precision must be <= 1.0" in p.stderr


def test_train_does_not_import_calibration_and_the_fit_uses_the_device_clip():
    import ast
    from pathlib import Path

    from trashcam.edge import temperature

    root = Path(__file__).parents[1] / "train"
    for f in root.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("trashcam.calibration"), f
    p = np.array([[0.0, 0.3, 0.7]], np.float32)
    assert np.allclose(temperature.pseudo_logits(p)[0, 0], np.log(temperature.EPS))
    assert fit_temperature is temperature.fit_temperature  # calibration re-exports the one fit


def test_crossfit_scores_each_half_with_what_the_other_half_fitted():
    from trashcam.benchmarks.crossfit import crossfit, halves

    z, y = _calibrated_sample(2000)
    sharp = _softmax(3.0 * z)  # over-confident: the temperature fitted on either half undoes it
    a = halves(y, 0)
    assert all(abs(np.sum(a & (y == c)) - np.sum(~a & (y == c))) <= 1 for c in range(5))
    r = crossfit(sharp, None, y, None, flag_rate=0.05, halvings=3)
    assert 2.5 < r["temperature"] < 3.5 and r["ece"] < 0.04 and r["images"] == 2000
    assert 0.03 < r["flagged"] < 0.07  # max-probability threshold fitted on the other half: about the asked 5 %
    assert r["accuracy"] == float(np.mean(sharp.argmax(1) == y))


def test_bench_report_marks_calibration_numbers_fitted_on_test_as_in_sample():
    from trashcam.benchmarks.score_cost import markdown_rows

    def rows(in_sample):
        ut = {"flagged": 0.05, "ece_after": 0.02, "rule": "prototypes", "in_sample": in_sample,
              "fit_split": "test" if in_sample else "val"}
        u = {"kind": "prototypes", "val_flagged": 0.05, "ece_after": 0.03}
        return "\n".join(markdown_rows({"variants": [{"name": "tflite-int8", "threads": 2, "uncertainty_test": ut,
                                                       "uncertainty": u}]}))

    assert "in-sample" in rows(True) and "in-sample" not in rows(False)
    # the columns edge-calibrate filled name the split they were fitted on
    assert "| 5.0 % (test) |" in rows(True) and "| 3.0 % (val) |" in rows(False)
    # a variant without calibration numbers shows a bare dash, no split tag
    bare = "\n".join(markdown_rows({"variants": [{"name": "onnx", "threads": 2,
                                                   "uncertainty_test": {"rule": "msp", "fit_split": "val"}}]}))
    assert "| - | - | - | - | - |" in bare and "- (" not in bare
