"""Each recipe part that could fail silently, and edge-train end to end on a tiny backbone."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from trashcam.edge.bundle import Bundle
from trashcam.train import augment
from trashcam.train.config import DEFAULT, QUICK, SEED, TrainConfig, resolve
from trashcam.train.evaluate import classification_metrics, evaluate, predict_tta


def test_seed_recipe_is_the_notebook():
    assert (SEED.backbone, SEED.image_size, SEED.dropout, SEED.dense_units, SEED.l2) == \
        ("efficientnet_b0", 224, 0.35, 192, 1e-5)
    assert (SEED.stage1_epochs, SEED.stage1_lr, SEED.stage1_patience) == (8, 1e-3, 4)
    assert (SEED.stage2_epochs, SEED.stage2_lr, SEED.stage2_patience, SEED.stage2_from) == (22, 1e-5, 6, "60")
    assert (SEED.mixup_alpha, SEED.label_smoothing, SEED.class_weight_clip) == (0.4, 0.05, (0.7, 1.6))
    assert (SEED.rotation_deg, SEED.shift, SEED.zoom, SEED.shear, SEED.brightness, SEED.channel_shift) == \
        (25.0, 0.15, 0.25, 0.12, (0.75, 1.25), 10.0)
    assert len(SEED.tta_passes) == 5 and SEED.mode == "full"
    assert DEFAULT.backbone == "efficientnet_lite0" and DEFAULT.mode == "cached"


def test_config_roundtrip_and_validation(tmp_path):
    cfg = resolve("quick", views=3, exclude_classes=("glass",))
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg
    with pytest.raises(ValueError, match="unknown recipe"):
        resolve("nope")
    with pytest.raises(ValueError, match="mode"):
        resolve("quick", mode="weird")


def test_label_smoothing_values():
    t = augment.one_hot_smooth(np.array([2, 0]), 5, 0.05)
    assert t[0, 2] == pytest.approx(1 - 0.05 + 0.01) and t[0, 0] == pytest.approx(0.01)
    np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-6)


def test_mixup_uses_the_same_lambda_for_images_labels_and_weights():
    rng = np.random.default_rng(0)
    x = rng.random((16, 4, 4, 3)).astype(np.float32)
    t = augment.one_hot_smooth(rng.integers(0, 5, 16), 5, 0.0)
    w = rng.random(16).astype(np.float32)
    xm, tm, wm, lam, perm = augment.mixup(x, t, w, 0.4, np.random.default_rng(1))
    assert not np.allclose(lam, lam[0])  # one lambda per sample
    np.testing.assert_allclose(xm, lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[perm], rtol=1e-6)
    np.testing.assert_allclose(tm, lam[:, None] * t + (1 - lam[:, None]) * t[perm], rtol=1e-6)
    np.testing.assert_allclose(wm, lam * w + (1 - lam) * w[perm], rtol=1e-6)
    # recover lambda from the labels alone: it must be the one used for the pixels
    i = int(np.argmax(np.abs(t - t[perm]).sum(1)))
    c = int(np.argmax(t[i]))
    assert tm[i, c] == pytest.approx(lam[i] + (1 - lam[i]) * t[perm][i, c], rel=1e-6)


def test_augmentation_geometry_and_ranges():
    x = np.zeros((1, 8, 8, 3), np.uint8)
    x[0, :, :4] = 200  # left half bright
    ident = augment.warp(x, augment._flat(augment._affine(8, 8))[None]).numpy()
    np.testing.assert_allclose(ident, x, atol=1e-3)
    flipped = augment.tta_views(x, ("hflip",))[0]
    np.testing.assert_allclose(flipped[0, :, 4:], 200, atol=1e-3)
    np.testing.assert_allclose(flipped[0, :, :4], 0, atol=1e-3)
    p = augment.sample_params(np.random.default_rng(0), 500, 8, 8, SEED)
    assert p["brightness"].min() >= 0.75 and p["brightness"].max() <= 1.25
    assert np.abs(p["channel_shift"]).max() <= 10
    out = augment.augment_batch(np.full((4, 8, 8, 3), 250, np.uint8), np.random.default_rng(0), SEED)
    assert out.dtype == np.float32 and out.max() <= 255.0 and out.min() >= 0.0


def test_tta_averages_every_pass():
    calls = []

    class Fake:
        def predict(self, x, batch_size=None, verbose=0):
            calls.append(len(x))
            p = np.zeros((len(x), 2), np.float32)
            p[:, 0] = x.reshape(len(x), -1)[:, 0] / 255.0  # depends on the top-left pixel: flips change it
            p[:, 1] = 1 - p[:, 0]
            return p

    x = np.zeros((3, 4, 4, 3), np.uint8)
    x[:, 0, 0] = 255
    passes = ("identity", "hflip", "vflip", "zoom_in", "zoom_in_hflip")
    probs = predict_tta(Fake(), x, passes, batch=2, verbose=0)
    assert probs.shape == (5, 3, 2) and len(calls) == 5 * 2
    res = evaluate(Fake(), x, np.zeros(3, np.int64), ["a", "b"], passes, verbose=0)
    assert res["tta_passes"] == list(passes)
    assert res["plain"]["accuracy"] == 1.0  # identity pass: top-left is bright -> class 0
    assert res["tta"]["accuracy"] == 0.0  # 4 of 5 passes move the bright pixel away -> mean says class 1


def test_metrics_on_a_hand_example():
    m = classification_metrics(np.array([0, 0, 1, 1, 1, 2]), np.array([0, 1, 1, 1, 0, 2]), ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"]["precision"] == pytest.approx(0.5) and m["per_class"]["b"]["recall"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    f1 = [0.5, 2 / 3, 1.0]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert m["weighted_f1"] == pytest.approx((2 * 0.5 + 3 * 2 / 3 + 1) / 6)


def test_stage2_trainable_layers_and_frozen_batchnorm(tiny_backbone):
    from trashcam.train.model import build_classifier, is_batchnorm, set_stage

    cfg = QUICK.replace(backbone="tiny", image_size=32, stage2_from="block1a")
    parts = build_classifier(cfg, 3)
    s1 = set_stage(parts, 1, cfg)
    assert not any(layer.trainable_weights for layer in parts.backbone_layers)
    assert all(layer.trainable for layer in parts.head_layers)
    s2 = set_stage(parts, 2, cfg)
    names = [layer.name for layer in parts.backbone_layers]
    start = names.index("block1a_conv")
    assert s2["from_index"] == start
    for i, layer in enumerate(parts.backbone_layers):
        if is_batchnorm(layer) or i < start:
            assert not layer.trainable, layer.name
        elif layer.weights:
            assert layer.trainable, layer.name
    assert s2["trainable_weights"] > s1["trainable_weights"]
    assert set_stage(parts, 2, cfg.replace(stage2_from="4"))["from_index"] == 4


def test_cosine_schedule_in_stage1(tiny_backbone, synthetic_dataset, tmp_path):
    from trashcam.train.cli import main

    out = tmp_path / "b"
    rc = main(["--data", str(synthetic_dataset), "--out", str(out), "--recipe", "quick", "--backbone", "tiny",
               "--weights", "none", "--image-size", "32", "--stage2-from", "block2a", "--stage1-epochs", "4",
               "--stage1-patience", "99", "--stage2-epochs", "0", "--views", "1", "--batch-size", "8",
               "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert rc == 0
    st = json.loads((out / "metrics.json").read_text())["stages"][0]
    lrs = st["history"]["lr"]
    expected = [QUICK.stage1_lr * 0.5 * (1 + math.cos(math.pi * (e + 1) / 4)) for e in range(4)]
    np.testing.assert_allclose(lrs, expected, atol=1e-7)


@pytest.mark.parametrize("mode", ["cached", "hybrid", "full"])
def test_edge_train_end_to_end_learns_the_synthetic_task(tiny_backbone, synthetic_dataset, tmp_path, mode):
    from trashcam.train.cli import main

    out = tmp_path / "bundle"
    args = ["--data", str(synthetic_dataset), "--out", str(out), "--recipe", "quick", "--backbone", "tiny",
            "--weights", "none", "--image-size", "32", "--stage2-from", "block2a", "--stage1-epochs", "25",
            "--stage2-epochs", "3", "--stage1-lr", "0.01", "--stage2-lr", "0.003", "--mode", mode, "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(args) == 0
    b = Bundle.load(out)  # every checksum verified
    assert b.labels == ["blue", "green", "red"]
    for f in ("model.keras", "split.json", "train_config.json", "metrics.json", "report.md", "training_curves.png",
              "confusion_matrix.png", "labels.txt"):
        assert f in b.metadata["files"], f
    assert b.metadata["training"]["config"]["mode"] == mode
    assert b.metadata["metrics"]["test_accuracy"] >= 0.85
    assert "stage1" in (out / "report.md").read_text()
    assert not (tmp_path / "bundle.partial").exists()
    # a second run refuses to overwrite the good bundle unless asked (a usage error: exit 2)
    assert main(args) == 2


def test_stage2_on_crops_of_the_cached_activations_still_learns_whole_images(tiny_backbone, synthetic_dataset,
                                                                           tmp_path):
    from trashcam.train.cli import main

    out = tmp_path / "bundle"
    assert main(["--data", str(synthetic_dataset), "--out", str(out), "--recipe", "quick", "--backbone", "tiny",
                 "--weights", "none", "--image-size", "32", "--stage2-from", "block2a", "--stage1-epochs", "25",
                 "--stage2-epochs", "3", "--stage1-lr", "0.01", "--stage2-lr", "0.003", "--stage2-crop", "0.5",
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    stage2 = json.loads((out / "metrics.json").read_text())["stages"][1]
    assert stage2["info"]["activation_shape"][:2] == [8, 8] and stage2["info"]["crop"] == [4, 4]
    b = Bundle.load(out)
    assert b.preprocessing.input_size == (32, 32)  # the model that ships takes whole images
    assert b.metadata["metrics"]["test_accuracy"] >= 0.85


def test_resume_skips_finished_stage(tiny_backbone, synthetic_dataset, tmp_path):
    from trashcam.train.cli import main

    base = ["--data", str(synthetic_dataset), "--recipe", "quick", "--backbone", "tiny", "--weights", "none",
            "--image-size", "32", "--stage2-from", "block2a", "--stage1-epochs", "3", "--stage2-epochs", "2",
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    partial = tmp_path / "b.partial"
    (partial / "checkpoints").mkdir(parents=True)
    # an old-format state without weights (tests/test_resume.py resumes real ones): start from scratch
    (partial / "checkpoints" / "state.json").write_text(json.dumps({"stage": "stage2", "epoch": 1}))
    assert main(base + ["--out", str(tmp_path / "b"), "--resume"]) == 0
    stages = json.loads((tmp_path / "b" / "metrics.json").read_text())["stages"]
    assert [s["name"] for s in stages] == ["stage1", "stage2"]


def test_mirrored_strategy_trains_on_two_logical_cpus(synthetic_dataset, tmp_path):
    script = textwrap.dedent(f"""
        import os, sys, json
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        from conftest import build_tiny_backbone
        from types import SimpleNamespace
        import trashcam.train.backbones as registry
        registry.get = lambda name: SimpleNamespace(name="tiny", build=build_tiny_backbone)
        # MirroredStrategy mirrors across GPUs by default; name the two logical CPUs explicitly.
        orig = tf.distribute.MirroredStrategy
        tf.distribute.MirroredStrategy = lambda: orig(devices=["/cpu:0", "/cpu:1"])
        from trashcam.train.cli import main
        rc = main(["--data", {str(synthetic_dataset)!r}, "--out", {str(tmp_path / 'm')!r}, "--recipe", "quick",
                   "--backbone", "tiny", "--weights", "none", "--image-size", "32", "--stage2-from", "block2a",
                   "--stage1-epochs", "15", "--stage2-epochs", "2", "--mode", "full", "--strategy", "mirrored", "--batch-size", "8",
                   "--cache-dir", {str(tmp_path / 'cache')!r}, "--quiet"])
        print(json.dumps(json.load(open({str(tmp_path / 'm' / 'metadata.json')!r}))["training"]["compute"]))
        sys.exit(rc)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    compute = json.loads(p.stdout.strip().splitlines()[-1])
    assert compute["replicas"] == 2 and compute["strategy"] == "MirroredStrategy"


def test_stage2_is_discarded_when_it_never_beats_stage1():
    from types import SimpleNamespace

    from trashcam.train.fit import keep_better_stage
    from trashcam.train.loop import StageResult

    class Model:
        weights = "stage2"

        def set_weights(self, w):
            self.weights = w

    parts = SimpleNamespace(model=Model())
    s1, s2 = StageResult("stage1", best_val_loss=0.26), StageResult("stage2", best_val_loss=0.29)
    keep_better_stage(parts, "stage1", [s1, s2])
    assert parts.model.weights == "stage1" and s2.info["kept"] is False
    parts.model.weights = "stage2"
    s2.best_val_loss = 0.20
    keep_better_stage(parts, "stage1", [s1, s2])
    assert parts.model.weights == "stage2" and s2.info["kept"] is True
    s2.best_val_loss = 0.29  # a fixed-length stage 2 stays, whatever stage 1's (noisy) minimum was
    keep_better_stage(parts, "stage1", [s1, s2], fixed=True)
    assert parts.model.weights == "stage2" and s2.info["kept"] is True


def test_fit_epoch_averages_as_fit_does_and_its_batch_order_follows_the_seed():
    """At LR 0 nothing moves, so the epoch's means are the compiled (sample-weighted) loss and accuracy over all
    samples, as `evaluate` computes them; a seed gives one batch order, so the same seed trains the same weights."""
    import keras

    from trashcam.train.loop import fit_epoch
    from trashcam.train.model import compile_for

    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 4)).astype(np.float32)  # 37: the last batch is short
    t = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 37)]
    w = rng.uniform(0.5, 2.0, 37).astype(np.float32)

    def model(lr):
        keras.utils.set_random_seed(0)
        inp = keras.Input((4,))
        m = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(inp))
        compile_for(m, lr, False)
        return m

    frozen = model(0.0)
    got = fit_epoch(frozen, x, t, w, 8, seed=5)
    want = frozen.evaluate(x, t, sample_weight=w, batch_size=8, verbose=0, return_dict=True)
    assert got[0] == pytest.approx(want["loss"], rel=1e-5)
    assert got[1] == pytest.approx(want["accuracy"], rel=1e-5)
    a, b, c, gpu_way = model(0.1), model(0.1), model(0.1), model(0.1)
    means = [fit_epoch(m, x, t, w, 8, seed) for m, seed in ((a, 5), (b, 5), (c, 6))]
    assert np.array_equal(a.get_weights()[0], b.get_weights()[0])
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])
    # `fit` over the same shuffle (what a GPU runs): the same batches, so the same weights to the bit
    assert fit_epoch(gpu_way, x, t, w, 8, 5, pipelined=True) == pytest.approx(means[0], rel=1e-5)
    assert all(np.array_equal(u, v) for u, v in zip(a.get_weights(), gpu_way.get_weights()))


def test_fixed_length_stage_runs_every_epoch_and_keeps_the_last_weights():
    """patience 0: no early stopping even when validation gets worse every epoch, and the last epoch's weights
    (not the best epoch's) are the result."""
    import keras

    from trashcam.train.loop import run_stage

    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(inp))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    t = np.eye(2, dtype=np.float32)[(x[:, 0] > 0).astype(int)]  # learnable: training moves away from uniform
    val = (x, 1 - t)  # validation labels are the opposite: learning the training set makes it worse

    def data(epoch):
        return x, t, np.ones(32, np.float32)

    res = run_stage("stage2", model, data, val, epochs=4, patience=0, lr=0.05, cosine=False, batch_size=8,
                    ckpt=None, verbose=0, n_per_epoch=32)
    assert res.epochs_run == 4 and res.best_epoch == 3
    assert res.best_val_loss == pytest.approx(res.history["val_loss"][-1])
    early = run_stage("stage2", model, data, val, epochs=4, patience=1, lr=0.05, cosine=False, batch_size=8,
                      ckpt=None, verbose=0, n_per_epoch=32)
    assert early.epochs_run == 2 and early.best_epoch == 0  # the same losses with patience 1: stopped


def test_saved_model_carries_no_optimizer_state(tiny_backbone, tmp_path):
    import zipfile

    import keras

    from trashcam.train.model import build_classifier, compile_for
    from trashcam.train.pipeline import _weights_only

    parts = build_classifier(QUICK.replace(backbone="tiny", image_size=32), 3)
    compile_for(parts.model, 1e-3)
    parts.model.fit(np.zeros((4, 32, 32, 3)), np.eye(3)[[0, 1, 2, 0]], verbose=0)  # creates Adam's moments
    _weights_only(parts.model).save(tmp_path / "m.keras")
    import h5py
    with zipfile.ZipFile(tmp_path / "m.keras") as z, h5py.File(z.open("model.weights.h5"), "r") as h:
        assert "optimizer" not in h
    again = keras.models.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32) * 255
    np.testing.assert_allclose(again.predict(x, verbose=0), parts.model.predict(x, verbose=0), atol=1e-6)


def test_calibrated_validation_loss_ignores_confidence_scale_but_not_ranking():
    """An under-confident model (MixUp-like) and a sharper one with the same ranking tie on the calibrated loss;
    raw cross-entropy would prefer one of them. A model that ranks worse loses on both."""
    from trashcam.train.loop import validation_loss

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 5)) + 3 * np.eye(5)[rng.integers(0, 5, 300)]
    y = logits.argmax(1)
    y[:30] = (y[:30] + 1) % 5  # some errors, so the best temperature is finite
    t = np.eye(5)[y]

    class Fixed:
        def __init__(self, z):
            self.p = np.exp(z) / np.exp(z).sum(1, keepdims=True)

        def predict(self, x, batch_size, verbose):
            return self.p

    soft, sharp = validation_loss(Fixed(logits / 4), None, t, 32), validation_loss(Fixed(logits * 2), None, t, 32)
    assert abs(soft["val_loss"] - sharp["val_loss"]) > 0.1
    assert soft["val_loss_calibrated"] == pytest.approx(sharp["val_loss_calibrated"], abs=2e-3)
    worse = validation_loss(Fixed(logits + rng.normal(scale=2, size=logits.shape)), None, t, 32)
    assert worse["val_loss_calibrated"] > soft["val_loss_calibrated"] + 0.05
    assert soft["val_accuracy"] == sharp["val_accuracy"] == pytest.approx(0.9)


def test_a_picked_backbone_brings_its_own_stage2_start_and_input_size():
    from trashcam.train.backbones import get

    lite = resolve("seed", backbone="efficientnet_lite0")
    assert lite.stage2_from == get("efficientnet_lite0").stage2_from == "block3b"  # not B0's layer index 60
    assert lite.image_size == get("efficientnet_lite0").input_size
    assert resolve("seed", backbone="efficientnet_lite0", stage2_from="40").stage2_from == "40"  # a flag wins
    assert resolve("seed").stage2_from == "60"
    # a value the recipe chose for itself (not its backbone's default) stays with the recipe
    b0 = resolve("default", backbone="efficientnet_b0")
    assert (b0.stage2_from, b0.image_size) == (DEFAULT.stage2_from, DEFAULT.image_size)
    with pytest.raises(ValueError, match="unknown backbone"):
        resolve("seed", backbone="resnet9000")


def test_overwrite_is_a_parameter_not_an_environment_switch(monkeypatch, tmp_path):
    import os

    import trashcam.train.pipeline as pipeline
    from trashcam.train.cli import main

    seen = []
    monkeypatch.setattr(pipeline, "train", lambda cfg, overwrite=False: seen.append(overwrite))
    monkeypatch.delenv("TRASHCAM_OVERWRITE", raising=False)
    args = ["--data", str(tmp_path), "--out", str(tmp_path / "b"), "--quiet"]
    assert main(args + ["--overwrite"]) == 0 and main(args) == 0
    assert seen == [True, False] and "TRASHCAM_OVERWRITE" not in os.environ
