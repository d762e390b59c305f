"""Knowledge distillation in `cached` mode (`--teacher BUNDLE`): a trained bundle's probabilities on every cached
view become part of that view's targets.

The teacher runs once per cached view, on the very augmented pixels the student's cache is made from, so the
student's epochs stay as cheap as without it. A stronger (bigger, slower) teacher can then improve the model
that ships without changing its size or latency.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trashcam.edge.temperature import apply_temperature

from .config import TrainConfig


class TeacherError(ValueError):
    pass


def load_teacher(path: str, split, input_size: tuple[int, int]):
    """The teacher bundle's Keras model, checked to speak the student's classes in its order, to take the
    student's input size (it sees the student's augmented views, pixel for pixel), and never to have trained on
    the student's validation or test images (`split`: the student's), which would leak them into its targets."""
    from trashcam.edge.bundle import Bundle, BundleError
    from trashcam.edge.imageset import load_split

    from .keras_engine import load_keras_model

    try:
        bundle = Bundle.load(Path(path))
    except (BundleError, FileNotFoundError) as e:
        raise TeacherError(f"--teacher {path}: {e}") from None
    if list(bundle.labels) != list(split.classes):
        raise TeacherError(f"--teacher {path} has classes {bundle.labels}; the student trains {split.classes}")
    if tuple(bundle.preprocessing.input_size) != tuple(input_size):
        raise TeacherError(f"--teacher {path} takes {bundle.preprocessing.input_size} images, the student "
                           f"{input_size}: train the teacher with the student's --image-size")
    try:
        seen = {rel for rel, _ in load_split(bundle).files.get("train", [])}
    except BundleError as e:
        raise TeacherError(f"--teacher {path}: {e}") from None
    leaked = [rel for name in ("val", "test") for rel, _ in split.files.get(name, []) if rel in seen]
    if leaked:
        raise TeacherError(f"--teacher {path} trained on {len(leaked)} of this run's validation/test images (e.g. "
                           f"{leaked[0]}): train the teacher on the student's split (same --split-seed, --fold)")
    return load_keras_model(bundle)


def blend(hard: np.ndarray, teacher: np.ndarray | None, cfg: TrainConfig) -> np.ndarray:
    """The training targets: (1 - w) x the (smoothed) labels + w x the teacher's probabilities at the distillation
    temperature (> 1: softer; the same softmax(log p / T) that calibration applies on the device)."""
    if teacher is None:
        return hard
    w = cfg.distill_weight
    return ((1 - w) * hard + w * apply_temperature(teacher, cfg.distill_temperature)).astype(np.float32)
