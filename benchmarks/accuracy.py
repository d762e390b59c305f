"""The labelled images accuracy is measured on (decoded once, shared by every variant) and the metrics.

Sources: `--data DIR` (class folders matched to the bundle's labels by name; a folder the model has no label
for is an error) or, by default, the test split saved in the bundle (split.json), the images no training or
calibration step saw. Unreadable files are skipped and counted. Only numpy + Pillow: this runs on a Pi.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trashcam.edge.bundle import Bundle, BundleError, Preprocessing
from trashcam.edge.dataset import Split, scan_classes
from trashcam.edge.images import ImageDecodeError, load_for_model

from .latency import evenly_spaced

SPLIT_FILE = "split.json"


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


def _progress(items, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # the edge extra has no tqdm; a silent loop is fine
        return items
    return tqdm(items, desc=desc, unit="img", leave=False, disable=len(items) < 50)


def decode(paths: list[Path], labels: np.ndarray, pre: Preprocessing) -> tuple[np.ndarray, np.ndarray, list, list]:
    xs, ys, kept, skipped = [], [], [], []
    for p, y in _progress(list(zip(paths, labels)), "decode"):
        try:
            xs.append(load_for_model(p, pre))
        except (ImageDecodeError, OSError) as e:
            skipped.append((str(p), str(e)))
            continue
        ys.append(int(y))
        kept.append(str(p))
    h, w = pre.input_size
    x = np.stack(xs) if xs else np.zeros((0, h, w, 3), np.uint8)
    return x, np.asarray(ys, np.int64), kept, skipped


def labelled_files(bundle: Bundle, data: str | None, data_root: str | None) -> tuple[list[Path], np.ndarray, str, str]:
    """(paths, labels, source description, root) of the benchmark's labelled images."""
    if data:
        _, items = scan_classes(data, bundle.labels)  # DatasetError for an unknown class folder
        root = Path(data).resolve()
        return [root / r for r, _ in items], np.array([y for _, y in items], np.int64), "folder", str(root)
    p = bundle.file(SPLIT_FILE)
    if not p.is_file():
        raise BundleError(f"bundle {bundle.path} has no {SPLIT_FILE} (its test split); pass --data DIR")
    split = Split.load(p)
    if list(split.classes) != bundle.labels:
        raise BundleError(f"{p} classes {split.classes} differ from the bundle's labels {bundle.labels}")
    if not split.files.get("test"):
        raise BundleError(f"the saved split of {bundle.path} has no test images; pass --data DIR")
    root = Path(data_root or split.root)
    if not root.is_dir():
        raise BundleError(f"the test split's data folder {root} does not exist here; "
                          "pass --data-root DIR (where it lives now) or --data DIR")
    return split.paths("test", root), split.labels("test"), "test split (split.json)", str(root)


def load_eval_set(bundle: Bundle, data: str | None = None, data_root: str | None = None,
                  max_images: int | None = None) -> EvalSet:
    paths, labels, source, root = labelled_files(bundle, data, data_root)
    if max_images and max_images < len(paths):
        keep = evenly_spaced(range(len(paths)), max_images)
        paths, labels = [paths[i] for i in keep], labels[keep]
    x, y, kept, skipped = decode(paths, labels, bundle.preprocessing)
    if not len(y):
        raise BundleError(f"none of the {len(paths)} images in {root} could be decoded")
    return EvalSet(x, y, kept, source, root, skipped)


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
