"""The real pipeline on the bundled sample: edge-train (quick recipe, offline Lite0 weights) -> edge-convert --int8
-> the TF-free Classifier. The full-data reproduction of the default recipe is in test_spread.py (`slow`): it
checks a run against the measured spread, not one number."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SAMPLE, run_cli
from trashcam.edge.bundle import Bundle
from trashcam.edge.dataset import Split
from trashcam.edge.runtime import Classifier


@pytest.fixture(scope="module")
def sample_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample") / "bundle"
    run_cli("-m", "trashcam.train.cli", "--data", str(SAMPLE), "--out", str(out), "--recipe", "quick", "--quiet",
            "--cache-dir", str(out.parent / "cache"), check=True)
    return out


def test_quick_recipe_on_the_sample_makes_a_complete_bundle(sample_bundle):
    b = Bundle.load(sample_bundle)  # checksums verified
    assert b.labels == ["cardboard", "glass", "metal", "paper", "plastic"]
    assert b.metadata["backbone"] == "efficientnet_lite0"
    m = b.metadata["metrics"]
    # 20 test images, 110 training images: ImageNet features must already beat chance (20 %) by far.
    assert m["test_accuracy"] >= 0.6, m
    cfg = json.loads((sample_bundle / "train_config.json").read_text())
    assert cfg["recipe"] == "quick" and cfg["backbone"] == "efficientnet_lite0"
    assert "Unreadable images skipped: 0" in (sample_bundle / "report.md").read_text()


def test_int8_conversion_is_checked_and_runs_without_tensorflow(sample_bundle):
    p = run_cli("-m", "trashcam.convert.cli", str(sample_bundle), "--int8", "--calib-size", "60", "--max-drop", "10")
    assert p.returncode == 0, p.stdout + p.stderr
    b = Bundle.load(sample_bundle)
    check = b.variants["tflite-int8"]["check"]
    assert check["status"] == "PASS" and check["agreement"] >= 0.85, check
    size_mb = b.metadata["files"]["model_int8.tflite"]["size_bytes"] / 2**20
    assert 3.0 < size_mb < 5.5  # Lite0 with a 192-unit head, int8
    clf = Classifier(sample_bundle, variant="tflite-int8", threads=2)
    split = Split.load(sample_bundle / "split.json")
    preds = np.array([clf.classify(p).index for p in split.paths("test")])
    assert np.mean(preds == split.labels("test")) == pytest.approx(check["accuracy"], abs=1e-9)
