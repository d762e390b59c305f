"""Row arithmetic the feature scores share (edge/ood.py, edge/prototypes.py). NumPy only."""
from __future__ import annotations

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (its direction)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _einsum_row_dots(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.einsum("kd,d->k", w, v)


# w @ v on one thread, by numpy's own loops: the vecdot ufunc (numpy >= 2) is the faster of the two after an invoke
row_dots = getattr(np, "vecdot", None) or _einsum_row_dots
