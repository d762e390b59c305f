"""The INT8 representative dataset: a deterministic, class-balanced sample of *training* images.

Never the test split (the check would then grade the model on the images it was calibrated with). The
selection (seed, count, source, images per class) is recorded so a conversion can be repeated exactly.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from trashcam.edge.bundle import Bundle, BundleError
from trashcam.edge.dataset import DatasetError, scan_classes
from trashcam.edge.images import is_image_file

from trashcam.edge.imageset import ImageSet, decode, load_split


def balanced_pick(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices: shuffle each class with `seed`, then deal round-robin across classes until `size` are taken."""
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    order = []
    for i in range(max((len(p) for p in pools), default=0)):
        order += [int(p[i]) for p in pools if i < len(p)]
    return np.array(order[:size], dtype=np.int64)


def _folder_items(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    try:
        classes, items = scan_classes(root)
        return [root / r for r, _ in items], np.array([y for _, y in items]), classes
    except DatasetError:  # not class folders: any images below root, one pool
        files = sorted(p for p in root.rglob("*") if is_image_file(p))
        if not files:
            raise DatasetError(f"calibration folder {root} has no images")
        return files, np.zeros(len(files), np.int64), ["(all)"]


def representative_images(bundle: Bundle, size: int, seed: int, calib_data: str | os.PathLike | None = None,
                          data_root: str | os.PathLike | None = None) -> tuple[ImageSet, dict]:
    if calib_data:
        root = Path(calib_data)
        if not root.is_dir():
            raise DatasetError(f"--calib-data {root} is not a folder")
        paths, labels, classes = _folder_items(root)
        source = str(root.resolve())
    else:
        split = load_split(bundle)
        if not split.files.get("train"):
            raise BundleError(f"the saved split of {bundle.path} has no train images; pass --calib-data DIR")
        root = Path(data_root or split.root)
        if not root.is_dir():
            raise BundleError(f"the split's data folder {root} does not exist here; pass --data-root DIR "
                              "or --calib-data DIR")
        paths, labels, classes = split.paths("train", root), split.labels("train"), split.classes
        source = f"train split of split.json ({root})"
    idx = balanced_pick(labels, size, seed)
    images = decode([paths[i] for i in idx], labels[idx], bundle.preprocessing, source, desc="decode calibration")
    if len(images) == 0:
        raise DatasetError(f"none of the {len(idx)} calibration images from {source} could be decoded")
    per_class = {classes[c]: int(n) for c, n in zip(*np.unique(images.y, return_counts=True))}
    info = {"source": source, "seed": seed, "requested": size, "count": len(images), "per_class": per_class,
            "n_skipped": len(images.skipped)}
    return images, info
