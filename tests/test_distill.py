"""Knowledge distillation (`edge-train --teacher BUNDLE`): the targets, the teacher's views, and its checks."""
from __future__ import annotations

import json

import numpy as np
import pytest

from trashcam.edge.temperature import apply_temperature
from trashcam.train import distill, fit
from trashcam.train.config import QUICK, ConfigError


def test_blend_mixes_labels_and_softened_teacher_probabilities():
    cfg = QUICK.replace(distill_weight=0.25, distill_temperature=2.0)
    hard = np.eye(3, dtype=np.float32)[[0, 2]]
    teacher = np.array([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6]], np.float32)
    soft = apply_temperature(teacher, 2.0)
    # temperature 2 is the square root of the probabilities, renormalised
    np.testing.assert_allclose(soft[0], np.sqrt(teacher[0]) / np.sqrt(teacher[0]).sum(), rtol=1e-5)
    t = distill.blend(hard, teacher, cfg)
    np.testing.assert_allclose(t, 0.75 * hard + 0.25 * soft, rtol=1e-6)
    np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-6)
    assert distill.blend(hard, None, cfg) is hard


def test_teacher_sees_the_same_augmented_views_as_the_student_cache():
    class Echo:  # "predicts" each image's mean pixel, so the two outputs can be matched view by view
        def predict(self, x, batch_size=0, verbose=0):
            return x.reshape(len(x), -1).mean(1, keepdims=True)

    cfg = QUICK.replace(views=3, verbose=0)
    x = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    acts, teacher_p = fit._cache_views(Echo(), x, cfg, np.random.default_rng(1), "t", teacher=Echo())
    assert acts.shape == (5, 3, 1) and teacher_p.shape == (5, 3, 1)
    np.testing.assert_allclose(teacher_p, acts, rtol=1e-6)
    assert not np.allclose(acts[:, 1], acts[:, 0])  # views 1.. are augmented
    assert fit._cache_views(Echo(), x, cfg, np.random.default_rng(1), "t")[1] is None


def test_teacher_needs_the_cached_mode():
    with pytest.raises(ConfigError, match="teacher"):
        QUICK.replace(mode="full", teacher="some/bundle")


def test_edge_train_distils_from_a_teacher_bundle(tiny_backbone, synthetic_dataset, tmp_path, capsys):
    from trashcam.train.cli import main

    def train(name, *extra):
        out = tmp_path / name
        args = ["--data", str(synthetic_dataset), "--out", str(out), "--recipe", "quick", "--backbone", "tiny",
                "--weights", "none", "--image-size", "32", "--stage2-from", "block2a", "--stage1-epochs", "10",
                "--stage1-lr", "0.01", "--stage2-epochs", "2", "--cache-dir", str(tmp_path / "cache"), "--quiet",
                *extra]
        return main(args), out

    rc, teacher = train("teacher")
    assert rc == 0
    rc, student = train("student", "--teacher", str(teacher), "--distill-weight", "0.7")
    assert rc == 0
    cfg = json.loads((student / "train_config.json").read_text())
    assert (cfg["teacher"], cfg["distill_weight"]) == (str(teacher), 0.7)
    plain_loss = json.loads((teacher / "metrics.json").read_text())["stages"][0]["history"]["loss"][0]
    student_loss = json.loads((student / "metrics.json").read_text())["stages"][0]["history"]["loss"][0]
    assert student_loss != pytest.approx(plain_loss)  # other targets, same data and seed
    # refused before any decoding, nothing written: a teacher for another input size, or one that trained on
    # this run's validation or test images (another split)
    capsys.readouterr()
    for name, extra, why in (("size", ["--image-size", "48"], "--image-size"),
                             ("leak", ["--split-seed", "7"], "validation/test images")):
        rc, out = train(name, "--teacher", str(teacher), *extra)
        assert rc == 2 and not out.exists() and not out.with_name(out.name + ".partial").exists(), name
        assert why in capsys.readouterr().err, name
