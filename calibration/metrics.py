"""Calibration metrics on softmax outputs: NLL, expected calibration error and its reliability bins.

The models output probabilities, not logits; log p differs from the logits by a per-row constant, so it serves
as logits for temperature scaling (trashcam.edge.temperature: the same clip EPS as on a device).
"""
from __future__ import annotations

import numpy as np

from trashcam.edge.temperature import EPS, nll_at, pseudo_logits  # noqa: F401 - EPS, nll_at: this module's API

N_BINS = 15


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return nll_at(pseudo_logits(probs), labels, 1.0)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Equal-width confidence bins (i/B, (i+1)/B]: count, mean confidence and accuracy per bin."""
    conf = np.asarray(probs).max(axis=1).astype(np.float64)
    correct = (np.asarray(probs).argmax(axis=1) == labels).astype(np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, n_bins) / count
        acc = np.bincount(idx, correct, n_bins) / count
    return {"count": count, "confidence": mean_conf, "accuracy": acc,
            "edges": np.linspace(0.0, 1.0, n_bins + 1)}


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error: sum over bins of (bin share) * |accuracy - mean confidence|."""
    b = reliability_bins(probs, labels, n_bins)
    n = b["count"].sum()
    if n == 0:
        return float("nan")
    used = b["count"] > 0
    return float(np.sum(b["count"][used] / n * np.abs(b["accuracy"][used] - b["confidence"][used])))


def summary(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> dict[str, float]:
    return {"accuracy": float(np.mean(probs.argmax(1) == labels)), "nll": nll(probs, labels),
            "ece": ece(probs, labels, n_bins), "mean_confidence": float(probs.max(1).mean())}
