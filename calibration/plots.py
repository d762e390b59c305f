"""PNG figures for calibration: reliability diagrams (before/after temperature) and the coverage/accuracy curve.

Matplotlib is imported lazily with the Agg backend: no display needed, and nothing is imported for `--help`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .metrics import N_BINS, ece, reliability_bins
from .threshold import coverage_curve


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    from trashcam.edge.bundle import atomic_write_bytes
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def reliability_diagram(panels: list[tuple[str, np.ndarray]], labels: np.ndarray, path: str | os.PathLike,
                        title: str = "", n_bins: int = N_BINS) -> Path:
    """One panel per (name, probs): accuracy per confidence bin against the diagonal, ECE in the title."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (name, probs) in zip(axes[0], panels):
        b = reliability_bins(probs, labels, n_bins)
        centers = (b["edges"][:-1] + b["edges"][1:]) / 2
        used = b["count"] > 0
        w = 1.0 / n_bins
        ax.bar(centers[used], b["accuracy"][used], width=w, edgecolor="k", label="accuracy")
        ax.bar(centers[used], (b["confidence"] - b["accuracy"])[used], bottom=b["accuracy"][used], width=w,
               color="none", edgecolor="tab:red", hatch="//", label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=f"{name}: ECE {ece(probs, labels, n_bins) * 100:.2f} %")
        ax.legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title)
    out = _save(fig, path)
    plt.close(fig)
    return out


def coverage_plot(probs: np.ndarray, labels: np.ndarray, chosen: dict, path: str | os.PathLike,
                  title: str = "") -> Path:
    """Accuracy among accepted predictions vs the share accepted, with the chosen threshold marked."""
    plt = _plt()
    c = coverage_curve(probs, labels)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.plot(c["coverage"], c["precision"], lw=2)
    if chosen.get("met"):
        ax.plot([chosen["coverage"]], [chosen["precision"]], "o", color="tab:red",
                label=f"threshold {chosen['threshold']:.3f}: coverage {chosen['coverage'] * 100:.1f} %, "
                      f"accuracy {chosen['precision'] * 100:.1f} %")
        ax.legend(loc="lower left", fontsize=8)
    ax.set(xlim=(0, 1.02), xlabel="coverage (share not flagged uncertain)",
           ylabel="accuracy of accepted predictions", title=title or "uncertain-threshold trade-off")
    ax.grid(alpha=0.3)
    out = _save(fig, path)
    plt.close(fig)
    return out
