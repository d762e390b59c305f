"""Row arithmetic the feature scores share (edge/ood.py, edge/prototypes.py). NumPy only."""
from __future__ import annotations

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (its direction)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def length(v: np.ndarray) -> float:
    """One frame's feature length for the per-frame paths, never 0 (an all-zero frame scores as far, not NaN)."""
    return max(float(v @ v), 1e-24) ** 0.5


def _einsum_row_dots(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.einsum("kd,d->k", w, v)


# w @ v on one thread, by numpy's own loops: the vecdot ufunc (numpy >= 2) is the faster of the two after an invoke
row_dots = getattr(np, "vecdot", None) or _einsum_row_dots
