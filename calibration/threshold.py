"""The "uncertain" rule: a confidence threshold below which the edge answers "not sure" instead of a class.

Chosen on validation (after temperature scaling) as the lowest threshold whose accepted predictions reach a
target precision (accuracy among accepted), or the one that keeps a target coverage. The stored value sits
halfway between the last accepted and the first rejected confidence, so float round-off on a device cannot
move an image across it.
"""
from __future__ import annotations

import numpy as np


def coverage_curve(probs: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Sorted by confidence (high first): after accepting the top k, coverage k/n and accuracy among them."""
    conf = probs.max(axis=1).astype(np.float64)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    order = np.argsort(-conf, kind="stable")
    conf, correct = conf[order], correct[order]
    k = np.arange(1, len(conf) + 1)
    return {"confidence": conf, "coverage": k / len(conf), "precision": np.cumsum(correct) / k}


def _cut_after(conf: np.ndarray, k: int) -> float:
    """Threshold accepting exactly the top k (ties included) of descending `conf`."""
    last = conf[k - 1]
    lower = conf[k:][conf[k:] < last]
    return float((last + lower[0]) / 2) if len(lower) else float(last)


def choose_threshold(probs: np.ndarray, labels: np.ndarray, target_precision: float | None = 0.95,
                     target_coverage: float | None = None) -> dict:
    """-> {"threshold", "coverage", "precision", "met", ...} measured on the data it was chosen on.

    `target_coverage`, when given, wins over `target_precision`.
    """
    if len(labels) == 0:
        raise ValueError("cannot choose a threshold on zero images")
    c = coverage_curve(probs, labels)
    conf, prec, n = c["confidence"], c["precision"], len(labels)
    # Accepting the top k is only possible where no tie straddles the cut (conf >= t takes all of a tie).
    valid = np.r_[conf[:-1] > conf[1:], True]
    if target_coverage is not None:
        if not 0 < target_coverage <= 1:
            raise ValueError(f"target coverage must be in (0, 1], got {target_coverage}")
        k0 = int(np.ceil(target_coverage * n - 1e-9))
        k = k0 + int(np.flatnonzero(valid[k0 - 1:])[0])
        rule = {"target_coverage": target_coverage}
    else:
        if target_precision is None or not 0 < target_precision <= 1:
            raise ValueError(f"target precision must be in (0, 1], got {target_precision}")
        ok = np.flatnonzero(valid & (prec >= target_precision - 1e-12))
        k = int(ok.max()) + 1 if len(ok) else 0
        rule = {"target_precision": target_precision}
    if k == 0:  # nothing reaches the target: everything is "uncertain"
        return {"threshold": float(conf[0]) + 1e-6, "coverage": 0.0, "precision": None,
                "met": False, "n_images": n, **rule}
    return {"threshold": _cut_after(conf, k), "coverage": k / n, "precision": float(prec[k - 1]),
            "met": True, "n_images": n, **rule}


def flagged_fraction(probs: np.ndarray, threshold: float) -> float:
    """Share of images the rule would call uncertain (for images of classes the model never saw)."""
    return float(np.mean(probs.max(axis=1) < threshold)) if len(probs) else float("nan")
