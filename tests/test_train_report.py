"""report.md: one run called a draw with its interval, and placed in the shipped recipe's measured band."""
from __future__ import annotations

import numpy as np


def test_report_calls_one_run_a_draw_with_its_interval():
    from trashcam.train.evaluate import classification_metrics, report_markdown, wilson_interval

    lo, hi = wilson_interval(286, 303)  # 94.4 % of 303 test images
    assert 0.911 < lo < 0.913 and 0.964 < hi < 0.966
    assert wilson_interval(0, 0) == (0.0, 1.0) and wilson_interval(10, 10)[1] == 1.0
    y = np.array([0, 0, 1, 1])
    plain = classification_metrics(y, np.array([0, 1, 1, 1]), ["a", "b"])
    summary = {"recipe": "default", "backbone": "b", "labels": ["a", "b"], "monitor": "val_loss",
               "evaluation": {"plain": plain, "tta_passes": ["identity"]},
               "stages": [{"name": "stage2", "epochs_run": 3, "best_epoch": 2, "best_val_loss": 0.2, "seconds": 1.0,
                           "images_per_s": 1.0, "info": {"kept": True, "fixed_length": True}}],
               "seconds": {"total": 1.0, "decode": 0.1, "train": 0.8, "evaluate": 0.1},
               "numerics": {"seed": 7, "split_seed": 42, "fold": None, "TF_ENABLE_ONEDNN_OPTS": "0", "threads": 1}}
    text = report_markdown(summary)
    assert "one draw" in text and "seed 7, split_seed 42, TF_ENABLE_ONEDNN_OPTS 0, threads 1" in text
    assert "fixed length" in text and "fold" not in text.split("one draw")[0]


def test_report_places_a_default_run_in_the_recipes_measured_band():
    """report.md quotes the shipped recipe's distribution, and says whether this run is a draw from it."""
    from trashcam.train.config import overridden, resolve
    from trashcam.train.measured import band, band_text

    b = band("default")
    assert b["measured"] and b["min"] <= b["int8_accuracy_mean"] <= b["max"] and b["cv"] and b["data"]["images"]
    assert band("quick") is None and band("seed") is None
    assert overridden(resolve("default", seed=3, split_seed=42, fold="2/5", threads=1, data="d", out="o")) == []
    assert overridden(resolve("default", stage2_epochs=5)) == ["stage2_epochs"]
    assert {"mode", "stage2_data", "stage2_crop"} <= set(overridden(resolve("default", mode="full")))
    n = b["data"]["images"]
    run = {"recipe": "default", "labels": b["data"]["classes"], "overrides": [],
           "counts": {"train": n - 600, "val": 300, "test": 300},
           "evaluation": {"plain": {"accuracy": (b["min"] + b["max"]) / 2}}}
    text = band_text(run)
    assert f"{b['int8_accuracy_mean']:.2%}" in text and "same recipe on the same images" in text and "inside" in text
    assert "below" in band_text({**run, "evaluation": {"plain": {"accuracy": b["min"] - 0.01}}})
    assert "overrides the preset (stage2_epochs)" in band_text({**run, "overrides": ["stage2_epochs"]})
    other = band_text({**run, "counts": {"train": 10, "val": 5, "test": 5}})
    assert "other data (20 images" in other and "not a draw" in other
    assert band_text({**run, "recipe": "quick"}) == ""
