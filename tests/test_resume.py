"""`edge-train --resume` continues an interrupted run as if it had never stopped: the same epochs, the same best
weights, the same stage chosen, the same bundle."""
from __future__ import annotations

import json

import pytest

from conftest import SAMPLE
from trashcam.edge.bundle import Bundle
from trashcam.train.checkpoint import Checkpoint
from trashcam.train.config import resolve
from trashcam.train.pipeline import train


def _interrupt_after(monkeypatch, stage: str, epochs_done: int) -> None:
    """Ctrl-C right after `stage` saved its checkpoint for epoch `epochs_done` (1-based)."""
    real = Checkpoint.save_epoch

    def save_epoch(self, name, full_model, optimizer, progress, best):
        real(self, name, full_model, optimizer, progress, best)
        if name == stage and progress["next_epoch"] == epochs_done:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save_epoch", save_epoch)


def _same_run(a, b) -> None:
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    for sa, sb in zip(ma["stages"], mb["stages"], strict=True):
        assert (sa["name"], sa["epochs_run"], sa["best_epoch"]) == (sb["name"], sb["epochs_run"], sb["best_epoch"])
        assert sa["best_val_loss"] == pytest.approx(sb["best_val_loss"], rel=1e-4)
        assert sa["history"]["val_loss"] == pytest.approx(sb["history"]["val_loss"], rel=1e-4)
        assert sa["info"].get("kept") == sb["info"].get("kept")  # the same stage chosen
    assert ma["evaluation"]["plain"]["accuracy"] == mb["evaluation"]["plain"]["accuracy"]
    assert ma["evaluation"]["plain"]["confusion_matrix"] == mb["evaluation"]["plain"]["confusion_matrix"]
    assert Bundle.load(b).metadata["metrics"] == Bundle.load(a).metadata["metrics"]


def _resume_matches_uninterrupted(cfg, tmp_path, monkeypatch, stage="stage2", epochs_done=1):
    straight = train(cfg.replace(out=str(tmp_path / "straight")))
    out = tmp_path / "resumed"
    with monkeypatch.context() as m:
        _interrupt_after(m, stage, epochs_done)
        with pytest.raises(KeyboardInterrupt):
            train(cfg.replace(out=str(out)))
    state = json.loads((tmp_path / "resumed.partial" / "checkpoints" / "state.json").read_text())
    assert state["current"] == {"stage": stage, "next_epoch": epochs_done}
    assert state["stages"]["stage1"]["done"] is (stage == "stage2")
    assert not out.exists()
    train(cfg.replace(out=str(out), resume=True))
    _same_run(straight, out)
    return straight


@pytest.mark.slow  # ~50 s each: the sample test below covers stage 2 (cached mode) in the default run
@pytest.mark.parametrize("mode", ["full", "hybrid"])
def test_resume_in_stage2_on_a_tiny_backbone(tiny_backbone, synthetic_dataset, tmp_path, monkeypatch, mode):
    cfg = resolve("quick", data=str(synthetic_dataset), backbone="tiny", weights="none", image_size=32,
                  stage2_from="block2a", stage1_epochs=4, stage2_epochs=3, stage1_lr=0.01, stage2_lr=0.003,
                  mode=mode, cache_dir=str(tmp_path / "cache"), verbose=0, tta=False)
    _resume_matches_uninterrupted(cfg, tmp_path, monkeypatch)


@pytest.mark.slow  # ~40 s; test_checkpoint_roundtrip covers the mechanics in the default run
def test_resume_in_stage1_keeps_the_best_so_far(tiny_backbone, synthetic_dataset, tmp_path, monkeypatch):
    cfg = resolve("quick", data=str(synthetic_dataset), backbone="tiny", weights="none", image_size=32,
                  stage2_from="block2a", stage1_epochs=5, stage2_epochs=2, stage1_lr=0.01, stage2_lr=0.003,
                  mode="full", cache_dir=str(tmp_path / "cache"), verbose=0, tta=False)
    _resume_matches_uninterrupted(cfg, tmp_path, monkeypatch, stage="stage1", epochs_done=3)


def test_quick_recipe_on_the_sample_resumed_in_stage2(tmp_path, monkeypatch):
    """The issue's test: the real quick recipe (Lite0, cached mode), Ctrl-C after stage 2's first epoch."""
    cfg = resolve("quick", data=str(SAMPLE), cache_dir=str(tmp_path / "cache"), verbose=0)
    straight = _resume_matches_uninterrupted(cfg, tmp_path, monkeypatch)
    m = json.loads((straight / "metrics.json").read_text())
    print(json.dumps({"test_accuracy": m["evaluation"]["plain"]["accuracy"],
                      "stages": [(s["name"], s["epochs_run"], s["best_epoch"], s["best_val_loss"],
                                  s["info"].get("kept")) for s in m["stages"]]}))
    assert Bundle.load(straight).metadata["metrics"]["test_accuracy"] >= 0.6


def test_checkpoint_roundtrip(tmp_path):
    """Variables (seed states included), optimizer moments, per-stage progress and best weights survive a
    restart; stale epoch files go; a checkpoint of another configuration is not resumed."""
    import keras
    import numpy as np

    def model():
        keras.utils.set_random_seed(0)
        i = keras.Input((4,))
        m = keras.Model(i, keras.layers.Dense(2)(keras.layers.Dropout(0.5)(i)))
        m.compile(keras.optimizers.Adam(1e-2), "mse")
        return m

    a = model()
    a.fit(np.ones((8, 4)), np.zeros((8, 2)), verbose=0)
    ck = Checkpoint(tmp_path, {"recipe": "x"})
    best = [w * 0 + 7 for w in a.get_weights()]
    ck.save_epoch("stage1", a, a.optimizer, {"next_epoch": 1, "wait": 0, "result": {"name": "stage1"}}, best)
    a.fit(np.ones((8, 4)), np.zeros((8, 2)), verbose=0)
    ck.save_epoch("stage1", a, a.optimizer, {"next_epoch": 2, "wait": 1, "result": {"name": "stage1"}}, None)
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["best-stage1-e1.npz", "opt-stage1-e2.npz",
                                                            "vars-stage1-e2.npz"]
    assert not Checkpoint(tmp_path, {"recipe": "y"}).load()
    b, ck2 = model(), Checkpoint(tmp_path, {"recipe": "x"})
    assert ck2.load() and ck2.restore(b) and ck2.restore_optimizer(b.optimizer, b.trainable_variables)
    for va, vb in zip(a.variables + a.optimizer.variables, b.variables + b.optimizer.variables, strict=True):
        np.testing.assert_array_equal(va.numpy(), vb.numpy())
    assert ck2.stage("stage1")["wait"] == 1 and ck2.stage("stage1")["next_epoch"] == 2
    np.testing.assert_array_equal(ck2.weights("stage1", "best")[0], best[0])
    ck2.finish_stage("stage1", b, {"name": "stage1", "best_val_loss": 0.5})
    assert ck2.stage("stage1")["done"] and ck2.weights("stage1", "final") is not None
    assert not (tmp_path / "opt-stage1-e2.npz").exists()
