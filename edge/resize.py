"""The "linear" resize of the preprocessing contract: OpenCV's INTER_LINEAR, pixel for pixel, with or without OpenCV.

Half-pixel centres, two taps per axis, no antialiasing, OpenCV's fixed-point rounding. PIL's "bilinear" (what
bundles before this one used) widens its filter when it shrinks an image: 0.65-0.85 ms for a 320x240 frame to
288x288 on a 2-core EPYC, 40 % of a 2 ms INT8 invoke; cv2.resize takes 0.09-0.15 ms for the same frame.

The [edge] extra stays free of OpenCV: `resize_linear` uses cv2 when it imports (the [video] extra, apt's
python3-opencv) and otherwise `resize_linear_numpy`, which computes the same integers with tables cached per
(source, target) shape. tests/test_resize.py holds the two equal on many shapes. The NumPy path keeps the pixels,
not the speed: 1.3-1.5 ms for that frame (1.7x PIL's time: a dozen whole-array integer passes), so a device that
resizes on the CPU (image folders, USB cameras, video) should have OpenCV; the Pi camera's ISP resizes for free.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

# OpenCV's INTER_RESIZE_COEF_BITS: weights are integers out of 2048.
_COEF_SCALE = 2048

_cv2 = None  # the module once imported; False when it is not installed


def backend() -> str:
    """"opencv" or "numpy": which implementation `resize_linear` uses in this process."""
    global _cv2
    if _cv2 is None:
        try:
            import cv2
            _cv2 = cv2
        except ImportError:
            _cv2 = False
    return "opencv" if _cv2 else "numpy"


def resize_linear(arr: np.ndarray, size: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """HxWx3 uint8 -> size (height, width) x3 uint8, as cv2.resize(arr, (w, h), interpolation=INTER_LINEAR);
    written into `out` (a contiguous array of that shape, e.g. the interpreter's input tensor) when given."""
    h, w = size
    if backend() == "opencv":
        # One thread: a frame is small, and the interpreter threads (or other streams) hold the cores.
        if _cv2.getNumThreads() != 1:
            _cv2.setNumThreads(1)
        return _cv2.resize(np.ascontiguousarray(arr), (w, h), dst=out, interpolation=_cv2.INTER_LINEAR)
    if out is None:
        return resize_linear_numpy(arr, size)
    np.copyto(out, resize_linear_numpy(arr, size))
    return out


@lru_cache(maxsize=32)
def _axis(n_in: int, n_out: int, clamp_weights: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(first index, second index, first weight, second weight) per output position along one axis.

    OpenCV computes the source coordinate in float32 and rounds the weights half to even (cvRound). Along x it
    also sets the weight of a clamped neighbour to 0; along y it clamps the rows and keeps both weights, which
    rounds differently at the border, so both are kept as OpenCV has them.
    """
    f = ((np.arange(n_out, dtype=np.float64) + 0.5) * (1.0 / (n_out / n_in)) - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if clamp_weights:
        edge = (s < 0) | (s >= n_in - 1)
        f[edge] = 0
        s = np.clip(s, 0, n_in - 1)
    i0, i1 = np.clip(s, 0, n_in - 1), np.clip(s + 1, 0, n_in - 1)
    w0 = np.rint((np.float32(1) - f) * np.float32(_COEF_SCALE)).astype(np.int32)
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int32)
    for a in (i0, i1, w0, w1):
        a.setflags(write=False)
    return i0, i1, w0, w1


@lru_cache(maxsize=32)
def _tables(h_in: int, w_in: int, c: int, h: int, w: int) -> tuple[np.ndarray, ...]:
    """Per (source, target) shape: byte columns to read along x and their weights, rows to read along y and theirs.
    Only the source rows the output reads are resized along x; r0/r1 index those."""
    x0, x1, a0, a1 = _axis(w_in, w, True)
    y0, y1, b0, b1 = _axis(h_in, h, False)
    ch = np.arange(c)
    rows = np.union1d(y0, y1)
    out = ((x0[:, None] * c + ch).ravel(), (x1[:, None] * c + ch).ravel(), np.repeat(a0, c), np.repeat(a1, c),
           rows, np.searchsorted(rows, y0), np.searchsorted(rows, y1), b0[:, None], b1[:, None])
    for a in out:
        a.setflags(write=False)
    return out


def resize_linear_numpy(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """OpenCV's INTER_LINEAR for 8-bit images in NumPy: the same integers, step for step.

    Rows first along x: sums of pixel x weight (at most 255 * 2048), then OpenCV's vertical step,
    ((b0 * (r0 >> 4)) >> 16) + ((b1 * (r1 >> 4)) >> 16) + 2 >> 2, whose truncations make the result depend on
    that order. Gathers run on the uint8 bytes; the products are int32.
    """
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an HxWxC uint8 array, got {arr.dtype} {arr.shape}")
    h_in, w_in, c = arr.shape
    h, w = size
    xi0, xi1, a0, a1, rows, r0, r1, b0, b1 = _tables(h_in, w_in, c, h, w)
    src = (arr if len(rows) == h_in else arr[rows]).reshape(len(rows), w_in * c)
    across = np.multiply(np.take(src, xi0, axis=1), a0, dtype=np.int32)
    across += np.multiply(np.take(src, xi1, axis=1), a1, dtype=np.int32)
    across >>= 4
    out = np.take(across, r0, axis=0)
    out *= b0
    out >>= 16
    low = np.take(across, r1, axis=0)
    low *= b1
    low >>= 16
    out += low
    out += 2
    out >>= 2
    return out.astype(np.uint8).reshape(h, w, c)
