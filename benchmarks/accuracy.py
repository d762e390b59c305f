"""The labelled images accuracy is measured on (decoded once, shared by every variant) and the metrics.

Sources: `--data DIR` (class folders matched to the bundle's labels by name; a folder the model has no label
for is an error) or, by default, the test split saved in the bundle (split.json), the images no training or
calibration step saw. Unreadable files are skipped and counted. Only numpy + Pillow: this runs on a Pi.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trashcam.edge.bundle import Bundle, BundleError
from trashcam.edge.imageset import decode, folder_files, load_split, split_files

from .latency import evenly_spaced


@dataclass
class EvalSet:
    x: np.ndarray  # (N, H, W, 3) uint8 at the model's input size
    y: np.ndarray  # (N,) label indices into the bundle's labels
    paths: list[str]
    source: str
    path: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y)

    def summary(self) -> dict:
        return {"path": self.path, "source": self.source, "images": len(self), "skipped": len(self.skipped),
                "skipped_files": [list(s) for s in self.skipped[:20]]}


def labelled_files(bundle: Bundle, data: str | None, data_root: str | None) -> tuple[list[Path], np.ndarray, str, str]:
    """(paths, labels, source description, root) of the benchmark's labelled images."""
    if data:
        paths, labels, root = folder_files(data, bundle)  # DatasetError for an unknown class folder
        return paths, labels, "folder", root
    paths, labels, source = split_files(bundle, "test", data_root)
    return paths, labels, "test split (split.json)", str(Path(data_root or load_split(bundle).root))


def load_eval_set(bundle: Bundle, data: str | None = None, data_root: str | None = None,
                  max_images: int | None = None) -> EvalSet:
    paths, labels, source, root = labelled_files(bundle, data, data_root)
    if max_images and max_images < len(paths):
        keep = evenly_spaced(range(len(paths)), max_images)
        paths, labels = [paths[i] for i in keep], labels[keep]
    images = decode(paths, labels, bundle.preprocessing, source)
    if not len(images):
        raise BundleError(f"none of the {len(paths)} images in {root} could be decoded")
    return EvalSet(images.x, images.y, images.paths, source, root, images.skipped)


def macro_f1(pred: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """Mean F1 over the classes present in `y` or predicted (a class absent from both is not counted)."""
    f1s = []
    for c in range(n_classes):
        tp = int(np.sum((pred == c) & (y == c)))
        fp = int(np.sum((pred == c) & (y != c)))
        fn = int(np.sum((pred != c) & (y == c)))
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else float("nan")


def evaluate(engine, images: EvalSet, n_classes: int) -> dict:
    probs = engine.predict(images.x)
    if not np.all(np.isfinite(probs)):
        raise RuntimeError("non-finite outputs (NaN/inf) on the accuracy set")
    pred = probs.argmax(axis=1)
    return {"accuracy": round(float(np.mean(pred == images.y)), 6),
            "macro_f1": round(macro_f1(pred, images.y, n_classes), 6)}
