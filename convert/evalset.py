"""Decoded, labelled image sets for checks and calibration: decode once, reuse for every variant.

Images go through edge.images.load_for_model (the one preprocessing path), so the check sees exactly what a
device would. Unreadable files are skipped and counted, never fatal.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trashcam.edge.bundle import Bundle, BundleError, Preprocessing
from trashcam.edge.dataset import Split, scan_classes
from trashcam.edge.images import ImageDecodeError, load_for_model

SPLIT_FILE = "split.json"


@dataclass
class ImageSet:
    x: np.ndarray  # (N, H, W, 3) uint8
    y: np.ndarray  # (N,) int64 label indices (into the bundle's labels)
    paths: list[str]
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def __len__(self) -> int:
        return len(self.x)

    def summary(self) -> dict:
        return {"source": self.source, "n_images": len(self), "n_skipped": len(self.skipped),
                "skipped": [list(s) for s in self.skipped[:20]]}


def decode(paths: list[Path], labels: np.ndarray, pre: Preprocessing, source: str, desc: str = "decode"
           ) -> ImageSet:
    from tqdm import tqdm

    xs, ys, kept, skipped = [], [], [], []
    for p, y in tqdm(list(zip(paths, labels)), desc=desc, unit="img", leave=False, disable=len(paths) < 50):
        try:
            xs.append(load_for_model(p, pre))
        except (ImageDecodeError, OSError) as e:
            skipped.append((str(p), str(e)))
            continue
        ys.append(int(y))
        kept.append(str(p))
    h, w = pre.input_size
    x = np.stack(xs) if xs else np.zeros((0, h, w, 3), np.uint8)
    return ImageSet(x, np.asarray(ys, np.int64), kept, source, skipped)


def load_split(bundle: Bundle) -> Split:
    p = bundle.file(SPLIT_FILE)
    if not p.is_file():
        raise BundleError(f"bundle {bundle.path} has no {SPLIT_FILE} (the train/val/test split); "
                          "pass a labelled folder with --data DIR")
    split = Split.load(p)
    if list(split.classes) != bundle.labels:
        raise BundleError(f"{p} classes {split.classes} differ from the bundle's labels {bundle.labels}")
    return split


def split_images(bundle: Bundle, name: str, data_root: str | os.PathLike | None = None) -> ImageSet:
    """The bundle's saved `name` split (train/val/test), decoded. `data_root` re-roots it if the data moved."""
    split = load_split(bundle)
    if not split.files.get(name):
        raise BundleError(f"the saved split of {bundle.path} has no {name!r} images; pass --data DIR")
    root = Path(data_root or split.root)
    if not root.is_dir():
        raise BundleError(f"the split's data folder {root} does not exist here; "
                          "pass --data-root DIR (where it lives now) or --data DIR")
    return decode(split.paths(name, root), split.labels(name), bundle.preprocessing,
                  source=f"{name} split of {SPLIT_FILE} ({root})", desc=f"decode {name}")


def folder_images(root: str | os.PathLike, bundle: Bundle) -> ImageSet:
    """DIR/<class>/*.jpg labelled by folder name; a folder the model has no label for is an error."""
    classes, items = scan_classes(root, bundle.labels)
    paths = [Path(root) / rel for rel, _ in items]
    return decode(paths, np.array([y for _, y in items]), bundle.preprocessing, source=str(Path(root).resolve()),
                  desc="decode data")
