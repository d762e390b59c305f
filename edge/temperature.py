"""Temperature scaling, fit and apply: one scalar T, softmax(log p / T), the same clip EPS everywhere.

The models output probabilities, not logits; log p differs from the logits by a per-row constant, so it serves
as logits. Fitting (edge-calibrate, and edge-train's calibrated validation loss) and applying (every frame on a
device) live here together so what is fitted is what a device computes. NumPy only: train/ and calibration/
import it from here, and edge/ stays TF-free.

NLL is convex in 1/T, hence unimodal in log T: a golden-section search over log T in [T_MIN, T_MAX] finds the
optimum without a gradient or SciPy. T = 1 (no change) is always a candidate, so scaling never makes the
validation NLL worse.
"""
from __future__ import annotations

import math

import numpy as np

EPS = 1e-7  # probabilities are clipped here before the log, in fitting and on the device
T_MIN, T_MAX = 0.05, 20.0


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Re-scale softmax outputs as if their logits were divided by T (log p differs from logits by a constant)."""
    if temperature == 1.0:
        return probs
    # The same float32 operations as log(clip(p)) / T, softmax, in place: np.clip and the temporaries cost more
    # than the arithmetic on 5 numbers, once per frame.
    z = np.log(np.minimum(np.maximum(probs, EPS), 1.0))
    z /= temperature
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def pseudo_logits(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, np.float64), EPS, 1.0))


def nll_at(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of softmax(logits / T)."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(labels)), labels]))


def fit_temperature(probs: np.ndarray, labels: np.ndarray, t_min: float = T_MIN, t_max: float = T_MAX,
                    iters: int = 100) -> float:
    if len(labels) == 0:
        raise ValueError("cannot fit a temperature on zero images")
    z = pseudo_logits(probs)
    labels = np.asarray(labels, np.int64)

    def f(log_t: float) -> float:
        return nll_at(z, labels, math.exp(log_t))

    a, b = math.log(t_min), math.log(t_max)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    best = (a + b) / 2
    return float(math.exp(best)) if f(best) < f(0.0) else 1.0


def at_bound(temperature: float, t_min: float = T_MIN, t_max: float = T_MAX) -> bool:
    """A fit at the search bound usually means too little validation data (e.g. no errors at all)."""
    return temperature <= t_min * 1.01 or temperature >= t_max / 1.01
