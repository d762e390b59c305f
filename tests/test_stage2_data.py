"""`--stage2-data train+val`: validation images join the fixed-length stage 2 once stage 1 has used them."""
from __future__ import annotations

import json

import pytest

from trashcam.train.config import QUICK, ConfigError, resolve


def test_validation_joins_only_a_stage_that_chooses_nothing_on_it():
    assert QUICK.replace(stage2_data="train+val").stage2_data == "train+val"
    with pytest.raises(ConfigError, match="stage2_data"):
        QUICK.replace(stage2_data="train+val", stage2_patience=3)  # early stopping on images it trains on
    with pytest.raises(ConfigError, match="stage2_data"):
        QUICK.replace(stage2_data="train+val", mode="full")
    with pytest.raises(ConfigError):
        QUICK.replace(stage2_data="val")
    # the default recipe's refit gives way to flags that choose on validation; asked for explicitly, it errors
    assert resolve("default").stage2_data == "train+val"
    assert resolve("default", mode="full").stage2_data == "train"
    assert resolve("default", stage2_patience=5).stage2_data == "train"
    assert resolve("default", mode="cached", stage2_patience=0).stage2_data == "train+val"
    with pytest.raises(ConfigError, match="stage2_data"):
        resolve("default", mode="hybrid", stage2_data="train+val")
    # the refit's 18 epochs are the train-only recipe's 22 in image-steps: on train alone it runs 22 again
    assert resolve("default").stage2_epochs == 18
    assert resolve("default", mode="full").stage2_epochs == 22
    assert resolve("default", stage2_data="train").stage2_epochs == 22
    assert resolve("default", stage2_data="train", stage2_epochs=10).stage2_epochs == 10
    assert resolve("quick").stage2_epochs == QUICK.stage2_epochs == resolve("quick", mode="full").stage2_epochs
    # stage 2's crops are of cached activations: they give way to --mode full/hybrid, and the quick recipe has none
    assert resolve("default").stage2_crop == 0.83 and resolve("default", mode="full").stage2_crop == 1.0
    assert resolve("default", stage2_data="train").stage2_crop == 0.83 and QUICK.stage2_crop == 1.0
    with pytest.raises(ConfigError, match="stage2_crop"):
        resolve("default", mode="hybrid", stage2_crop=0.5)


def test_stage2_trains_on_validation_images_too(tiny_backbone, synthetic_dataset, tmp_path, capsys):
    from trashcam.calibration.config import CalibrationConfig
    from trashcam.calibration.pipeline import calibrate_bundle
    from trashcam.train.cli import main

    def train(name, *extra):
        out = tmp_path / name
        rc = main(["--data", str(synthetic_dataset), "--out", str(out), "--recipe", "quick", "--backbone", "tiny",
                   "--weights", "none", "--image-size", "32", "--stage2-from", "block2a", "--stage1-epochs", "4",
                   "--stage2-epochs", "2", "--cache-dir", str(tmp_path / "cache"), "--quiet", *extra])
        assert rc == 0
        return json.loads((out / "metrics.json").read_text()), out

    plain, plain_bundle = train("plain")  # the quick recipe does not refit (train/config.py QUICK)
    both, bundle = train("both", "--stage2-data", "train+val")
    n = both["counts"]
    assert plain["stages"][1]["info"]["images"] == n["train"]
    assert both["stages"][1]["info"]["images"] == n["train"] + n["val"]
    assert both["stages"][1]["info"]["trained_on"] == "train+val"
    assert "also trained on the validation images" in (bundle / "report.md").read_text()
    # nothing to learn from a loss on images it trains on: the refit's stage 2 is not validated
    s2 = both["stages"][1]
    assert s2["best_val_loss"] is None and s2["history"]["val_loss"] == [] and len(s2["history"]["loss"]) == 2
    assert plain["stages"][1]["best_val_loss"] is not None and len(plain["stages"][1]["history"]["val_loss"]) == 2
    # the training images' cached views are drawn first, so stage 1 (which validation only watches) is the same run
    assert both["stages"][0]["history"]["loss"] == plain["stages"][0]["history"]["loss"]
    assert both["stages"][1]["history"]["loss"] != plain["stages"][1]["history"]["loss"]
    # calibration needs images the model never trained on: a refit bundle's are its test split
    capsys.readouterr()
    report = calibrate_bundle(bundle, CalibrationConfig(plots=False, threads=1))
    assert report["fitted_on"]["source"].startswith("test split") and report["fitted_on"]["n_images"] == n["test"]
    assert "in-sample" in capsys.readouterr().err
    meta = json.loads((bundle / "metadata.json").read_text())["calibration"]
    assert meta["split"] == "test"
    assert "test images" in report["variants"]["keras"]["uncertainty"]["fitted_on"]
    report = calibrate_bundle(bundle, CalibrationConfig(plots=False, threads=1, split="val"))
    assert report["fitted_on"]["source"].startswith("val split")
    assert "trained on its validation images" in capsys.readouterr().err
    report = calibrate_bundle(plain_bundle, CalibrationConfig(plots=False, threads=1))
    assert report["fitted_on"]["source"].startswith("val split")
    # no warning but the few-images one (calibration/pipeline.py few_images_warning), which these tiny splits earn
    assert [ln for ln in capsys.readouterr().err.splitlines()
            if "WARNING" in ln and "the uncertain threshold sits above all their scores" not in ln] == []
