"""Datasets as folders of class folders, and the saved train/val/test split.

A dataset is either `DIR/<class>/*.jpg` (split here: stratified, fixed seed) or already split as
`DIR/{train,val,test}/<class>/...`. The split is saved in the bundle (`split.json`) as file lists relative to
the data root, so every later stage (convert's accuracy check, calibration, edge-bench) uses exactly the
same test images as training did.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .images import IMAGE_EXTS, is_image_file

SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """A dataset folder that cannot be used (missing, empty classes, fewer than two classes, unknown labels)."""


@dataclass
class Split:
    """File lists per split. Paths are relative to `root`; labels are indices into `classes`."""

    root: str
    classes: list[str]
    files: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    presplit: bool = False

    def paths(self, name: str, root: str | os.PathLike | None = None) -> list[Path]:
        base = Path(root or self.root)
        return [base / rel for rel, _ in self.files[name]]

    def labels(self, name: str) -> np.ndarray:
        return np.array([y for _, y in self.files[name]], dtype=np.int64)

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.files.items()}

    def sha256(self) -> str:
        blob = json.dumps({k: self.files[k] for k in sorted(self.files)}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def to_dict(self) -> dict:
        return {"root": self.root, "classes": self.classes, "seed": self.seed,
                "fractions": list(self.fractions), "presplit": self.presplit, "sha256": self.sha256(),
                "counts": self.counts(), "files": {k: [list(x) for x in v] for k, v in self.files.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Split":
        return cls(root=d["root"], classes=list(d["classes"]), seed=d.get("seed", 0),
                   fractions=tuple(d.get("fractions", (0.7, 0.15, 0.15))), presplit=d.get("presplit", False),
                   files={k: [(str(r), int(y)) for r, y in v] for k, v in d["files"].items()})

    def save(self, path: str | os.PathLike) -> None:
        from .bundle import atomic_write_json
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Split":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_classes(root: str | os.PathLike, classes: list[str] | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """List `root/<class>/<image>` as (path relative to root, class index). Clear errors for unusable layouts.

    With `classes` given (a model's labels), folders must be a subset of them: an unknown class folder is an
    error, so accuracy is never computed against labels the model does not have.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist")
    dirs = _class_dirs(root)
    names = [d.name for d in dirs]
    if classes is None:
        if len(dirs) < 2:
            raise DatasetError(f"{root} has {len(dirs)} class folder(s) {names}; need at least 2 "
                               "(layout: DIR/<class>/*.jpg)")
        classes = names
    else:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise DatasetError(f"{root} has class folder(s) {unknown} that the model does not know "
                               f"(its labels: {classes})")
    items: list[tuple[str, int]] = []
    for d in dirs:
        files = sorted(f for f in d.rglob("*") if is_image_file(f))
        if not files:
            raise DatasetError(f"class folder {d} has no images (looked for {', '.join(IMAGE_EXTS)})")
        idx = classes.index(d.name)
        items += [(str(f.relative_to(root)), idx) for f in files]
    return list(classes), items


def require_every_class(y: np.ndarray, classes: list[str], where: str, unreadable: int = 0) -> None:
    """A class with no readable image would train silently into a label the model can never predict (and a
    report that looks fine): name it instead."""
    counts = np.bincount(np.asarray(y, np.int64), minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise DatasetError(f"class(es) {', '.join(map(repr, empty))} have no readable images in the {where} "
                           f"({unreadable} unreadable file(s) skipped there); fix or remove those files, "
                           "or leave the class out (--exclude-classes)")


def is_presplit(root: str | os.PathLike) -> bool:
    root = Path(root)
    return all((root / s).is_dir() for s in ("train", "test")) and \
        set(d.name for d in _class_dirs(root)) <= set(SPLITS)


def stratified_split(items: list[tuple[str, int]], fractions=(0.7, 0.15, 0.15), seed: int = 42
                     ) -> dict[str, list[tuple[str, int]]]:
    """Per class: shuffle with `seed`, cut by `fractions`. Same items + seed -> same split, on any machine."""
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    labels = sorted({y for _, y in items})
    for y in labels:
        cls_items = sorted(x for x in items if x[1] == y)
        order = rng.permutation(len(cls_items))
        n = len(cls_items)
        n_val = int(round(fractions[1] * n))
        n_test = int(round(fractions[2] * n))
        if n >= 3:  # every split gets at least one image of every class when it can
            n_val, n_test = max(n_val, 1), max(n_test, 1)
        n_train = n - n_val - n_test
        if n_train < 1:
            raise DatasetError(f"class index {y} has only {n} image(s): too few to split 70/15/15")
        picked = [cls_items[i] for i in order]
        out["train"] += picked[:n_train]
        out["val"] += picked[n_train:n_train + n_val]
        out["test"] += picked[n_train + n_val:]
    return {k: sorted(v) for k, v in out.items()}


def make_split(root: str | os.PathLike, seed: int = 42, fractions=(0.7, 0.15, 0.15)) -> Split:
    """Scan a dataset folder and split it (or read its existing train/val/test folders)."""
    root = Path(root).resolve()
    if is_presplit(root):
        classes, _ = scan_classes(root / "train")
        files = {}
        for s in SPLITS:
            if (root / s).is_dir():
                _, items = scan_classes(root / s, classes)
                files[s] = [(str(Path(s) / r), y) for r, y in items]
        if "val" not in files:  # carve validation out of train, stratified, so early stopping has data
            parts = stratified_split(files["train"], (0.85, 0.15, 0.0), seed)
            files["train"], files["val"] = parts["train"] + parts["test"], parts["val"]
        return Split(str(root), classes, files, seed, fractions, presplit=True)
    classes, items = scan_classes(root)
    return Split(str(root), classes, stratified_split(items, fractions, seed), seed, tuple(fractions))
