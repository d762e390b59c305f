"""Decode once: images -> uint8 arrays at the model's input size, cached on disk, reused by every epoch and stage.

The cache is keyed per file by (absolute path, mtime, size) plus the preprocessing, so editing or replacing one
image re-decodes only that image. Unreadable files are skipped, counted and listed, never a crash.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trashcam.edge.bundle import Preprocessing, atomic_write_bytes
from trashcam.edge.dataset import DatasetError, Split, is_presplit, scan_classes, stratified_split
from trashcam.edge.images import ImageDecodeError, load_for_model

from .config import parse_fold


@dataclass
class Decoded:
    x: np.ndarray  # (N, H, W, 3) uint8
    y: np.ndarray  # (N,) int64
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def _key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_mtime_ns}|{st.st_size}"


def default_cache_dir() -> Path:
    return Path(os.environ.get("TRASHCAM_CACHE", Path.home() / ".cache" / "trashcam"))


class DecodeCache:
    """One .npy of pixels + a key index per preprocessing; merged and rewritten atomically when it grows."""

    def __init__(self, cache_dir: str | os.PathLike, pre: Preprocessing):
        tag = hashlib.sha256(json.dumps(pre.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
        self.dir = Path(cache_dir) / "decoded" / f"{pre.input_size[0]}x{pre.input_size[1]}-{tag}"
        self.pre = pre
        self.index: dict[str, int] = {}
        self.pixels: np.ndarray | None = None
        idx, pix = self.dir / "index.json", self.dir / "pixels.npy"
        if idx.is_file() and pix.is_file():
            try:
                self.index = json.loads(idx.read_text())
                self.pixels = np.load(pix, mmap_mode="r")
                if len(self.pixels) != len(self.index):
                    raise ValueError("index and pixels disagree")
            except (ValueError, OSError):  # a damaged cache is only a cache: start over
                self.index, self.pixels = {}, None

    def get(self, key: str) -> np.ndarray | None:
        row = self.index.get(key)
        return None if row is None or self.pixels is None else np.asarray(self.pixels[row])

    def store(self, new: dict[str, np.ndarray]) -> None:
        if not new:
            return
        h, w = self.pre.input_size
        old = np.asarray(self.pixels) if self.pixels is not None else np.zeros((0, h, w, 3), np.uint8)
        keys = list(self.index) + list(new)
        merged = np.concatenate([old, np.stack(list(new.values()))])
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".pixels.{os.getpid()}.npy"
        np.save(tmp, merged)
        os.replace(tmp, self.dir / "pixels.npy")
        atomic_write_bytes(self.dir / "index.json", json.dumps({k: i for i, k in enumerate(keys)}).encode())
        self.index = {k: i for i, k in enumerate(keys)}
        self.pixels = merged


def decode_images(paths: list[Path], labels: np.ndarray, pre: Preprocessing, cache_dir: str | os.PathLike | None,
                  desc: str = "decode", progress: bool = True) -> Decoded:
    """Decode (or load from cache) every image; skip unreadable ones and report them."""
    from tqdm.auto import tqdm

    cache = DecodeCache(cache_dir, pre) if cache_dir else None
    xs, ys, kept, skipped, new = [], [], [], [], {}
    for p, y in tqdm(list(zip(paths, labels)), desc=desc, unit="img", disable=not progress, leave=False):
        p = Path(p)
        try:
            key = _key(p)
            arr = cache.get(key) if cache else None
            if arr is None:
                arr = load_for_model(p, pre)
                new[key] = arr
        except (ImageDecodeError, OSError) as e:
            skipped.append((str(p), str(e).splitlines()[0][:200]))
            continue
        xs.append(arr)
        ys.append(int(y))
        kept.append(str(p))
    if cache:
        cache.store(new)
    h, w = pre.input_size
    x = np.stack(xs) if xs else np.zeros((0, h, w, 3), np.uint8)
    return Decoded(x, np.asarray(ys, np.int64), kept, skipped)


def class_weights(y: np.ndarray, n_classes: int, clip: tuple[float, float] = (0.7, 1.6)) -> np.ndarray:
    """Balanced weights n / (k * n_c), clipped so a rare class helps without dominating."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = len(y) / (n_classes * np.maximum(counts, 1))
    return np.clip(w, *clip).astype(np.float32)


def fold_split(root: str | os.PathLike, fold: str, seed: int = 42, fractions=(0.7, 0.15, 0.15)) -> Split:
    """The split of k-fold cross-validation run k of K ("k/K"): test = fold k, validation drawn from the rest.

    Per class the images are shuffled with `seed` and dealt round-robin into K folds, the deal continuing from
    class to class so folds differ by at most one image overall. So one seed gives one partition: runs 1/K..K/K
    test disjoint folds that together cover every image once. Validation takes fractions[1] / (fractions[0] +
    fractions[1]) of the other folds, stratified, with the same seed; the rest trains.
    """
    k, n_folds = parse_fold(fold)
    root = Path(root).resolve()
    if is_presplit(root):
        raise DatasetError(f"{root} is already split into train/val/test folders; --fold needs DIR/<class>/*.jpg")
    classes, items = scan_classes(root)
    rng = np.random.default_rng(seed)
    test, rest, dealt = [], [], 0
    for y in range(len(classes)):
        cls_items = sorted(x for x in items if x[1] == y)
        if len(cls_items) < n_folds:
            raise DatasetError(f"class {classes[y]!r} has {len(cls_items)} image(s): too few for {n_folds} folds")
        for i in rng.permutation(len(cls_items)):
            (test if (dealt % n_folds) == k - 1 else rest).append(cls_items[i])
            dealt += 1
    val_share = fractions[1] / (fractions[0] + fractions[1])
    parts = stratified_split(rest, (1 - val_share, val_share, 0.0), seed)
    # stratified_split keeps one image per class in a split even at fraction 0: that one trains
    files = {"train": sorted(parts["train"] + parts["test"]), "val": parts["val"], "test": sorted(test)}
    return Split(str(root), classes, files, seed, tuple(fractions))


# -- field images (edge-run --capture, reviewed on /review) -------------------------------------------------------
FOREIGN = "_foreign"  # edge/capture.py's folder of reviewed "none of our classes" images
FIELD_TEST = "field_test"  # split.json key: field images held out from training, scored apart from "test"
FOREIGN_KEY = "foreign"  # split.json key: reviewed foreign images, negatives for edge-calibrate's score


@dataclass
class FieldData:
    files: dict[str, list[tuple[str, int]]]  # train / val / field_test / foreign: (absolute path, label)
    counts: dict[str, int] = field(default_factory=dict)  # what was skipped and why, for the report


def _reviewed(img: Path) -> bool | None:
    """True/False from the capture sidecar; None when the image has none (put there by hand: counts as sorted)."""
    side = img.with_suffix(".json")
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
        return bool(meta.get("reviewed")) if isinstance(meta, dict) else False
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def field_split(root: str | os.PathLike, classes: list[str], seed: int = 42,
                fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), foreign_class: str = "") -> FieldData:
    """Reviewed field images of `root`: DIR/<class>/ (a class of `classes`) split train/val/field_test like the
    shared data; DIR/_foreign/ become foreign negatives, or, with `foreign_class` (one of `classes`), that
    class's images. Captures nobody reviewed (a sidecar without
    `reviewed`) are the model's own guesses and are left out, as are folders of no known class and anything
    whose real path leaves `root` (symlinks); each is counted."""
    from trashcam.edge.dataset import DatasetError, stratified_split
    from trashcam.edge.images import is_image_file

    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetError(f"--add-data {root}: not a folder")
    counts = {"unreviewed": 0, "unknown_class_folder": 0, "outside_folder": 0}
    items: list[tuple[str, int]] = []
    foreign: list[tuple[str, int]] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if d.name != FOREIGN and d.name not in classes:
            counts["unknown_class_folder"] += sum(1 for f in d.iterdir() if is_image_file(f))
            continue
        for f in sorted(p for p in d.iterdir() if is_image_file(p)):
            real = f.resolve()
            if root not in real.parents:
                counts["outside_folder"] += 1
                continue
            if _reviewed(f) is False:
                counts["unreviewed"] += 1
                continue
            if d.name == FOREIGN and not foreign_class:
                foreign.append((str(real), -1))
            else:
                items.append((str(real), classes.index(foreign_class if d.name == FOREIGN else d.name)))
    files: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], FIELD_TEST: [], FOREIGN_KEY: foreign}
    if items:
        # classes with too few field images for three splits go to train (held out, they would teach nothing)
        per = {y: [it for it in items if it[1] == y] for y in {y for _, y in items}}
        small = [it for y, v in per.items() if len(v) < 3 for it in v]
        big = [it for y, v in per.items() if len(v) >= 3 for it in v]
        if big:
            parts = stratified_split(big, fractions, seed)
            files["train"], files["val"], files[FIELD_TEST] = parts["train"], parts["val"], parts["test"]
        files["train"] = sorted(files["train"] + small)
    counts.update({k: len(v) for k, v in files.items()})
    return FieldData(files, counts)
