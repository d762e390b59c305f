"""Decoded, labelled image sets for checks, calibration and benchmarks: decode once, reuse for every variant.

Images go through edge.images.load_for_model (the one preprocessing path), so the check sees exactly what a
device would. Unreadable files are skipped and counted, never fatal.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bundle import Bundle, BundleError, Preprocessing
from .dataset import Split, scan_classes
from .images import ImageDecodeError, load_for_model

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


def _progress(items: list, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the edge extra has no tqdm; a silent loop is fine on a device
        return items
    return tqdm(items, desc=desc, unit="img", leave=False, disable=len(items) < 50)


def decode(paths: list[Path], labels: np.ndarray, pre: Preprocessing, source: str, desc: str = "decode"
           ) -> ImageSet:
    xs, ys, kept, skipped = [], [], [], []
    for p, y in _progress(list(zip(paths, labels)), desc):
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


def split_files(bundle: Bundle, name: str, data_root: str | os.PathLike | None = None
                ) -> tuple[list[Path], np.ndarray, str]:
    """Paths, labels and a description of the bundle's saved `name` split; `data_root` re-roots moved data."""
    split = load_split(bundle)
    if not split.files.get(name):
        raise BundleError(f"the saved split of {bundle.path} has no {name!r} images; pass --data DIR")
    root = Path(data_root or split.root)
    if not root.is_dir():
        raise BundleError(f"the split's data folder {root} does not exist here; "
                          "pass --data-root DIR (where it lives now) or --data DIR")
    return split.paths(name, root), split.labels(name), f"{name} split of {SPLIT_FILE} ({root})"


def folder_files(root: str | os.PathLike, bundle: Bundle) -> tuple[list[Path], np.ndarray, str]:
    """DIR/<class>/*.jpg labelled by folder name; a folder the model has no label for is an error."""
    _, items = scan_classes(root, bundle.labels)
    return [Path(root) / rel for rel, _ in items], np.array([y for _, y in items], np.int64), \
        str(Path(root).resolve())


def split_images(bundle: Bundle, name: str, data_root: str | os.PathLike | None = None) -> ImageSet:
    """The bundle's saved `name` split (train/val/test), decoded."""
    paths, labels, source = split_files(bundle, name, data_root)
    return decode(paths, labels, bundle.preprocessing, source=source, desc=f"decode {name}")


def folder_images(root: str | os.PathLike, bundle: Bundle) -> ImageSet:
    paths, labels, source = folder_files(root, bundle)
    return decode(paths, labels, bundle.preprocessing, source=source, desc="decode data")
