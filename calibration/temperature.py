"""Temperature scaling: one scalar T fitted on validation by minimising NLL of softmax(log p / T).

NLL is convex in 1/T, hence unimodal in log T: a golden-section search over log T in [T_MIN, T_MAX] finds the
optimum without a gradient or SciPy. T = 1 (no change) is always a candidate, so scaling never makes the
validation NLL worse.
"""
from __future__ import annotations

import math

import numpy as np

from .metrics import nll_at, pseudo_logits

T_MIN, T_MAX = 0.05, 20.0


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
