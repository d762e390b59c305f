"""The accuracy-drop check: a converted variant against the Keras float model, on the same decoded images.

A variant passes when its accuracy is at most `max_drop` percentage points below the float model's. Agreement
(same top-1 as float) and max |Δprob| are reported alongside because they show a degradation before accuracy
on a small test set moves.
"""
from __future__ import annotations

import numpy as np

PASS, FAIL, UNCHECKED, ERROR = "PASS", "FAIL", "UNCHECKED", "ERROR"


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == labels)) if len(labels) else float("nan")


def compare(probs: np.ndarray, ref_probs: np.ndarray, labels: np.ndarray) -> dict:
    """Metrics of `probs` (a variant) against `ref_probs` (Keras float) on images with true `labels`."""
    if probs.shape != ref_probs.shape:
        raise ValueError(f"variant output shape {probs.shape} differs from the float model's {ref_probs.shape}")
    acc, acc_ref = accuracy(probs, labels), accuracy(ref_probs, labels)
    diff = np.abs(probs.astype(np.float64) - ref_probs.astype(np.float64))
    return {
        "n_images": int(len(labels)),
        "accuracy": round(acc, 6),
        "accuracy_float": round(acc_ref, 6),
        "drop_pp": round((acc_ref - acc) * 100.0, 4),
        "agreement": round(float(np.mean(probs.argmax(1) == ref_probs.argmax(1))), 6),
        "max_abs_dprob": float(diff.max()) if diff.size else 0.0,
        "mean_abs_dprob": float(diff.mean()) if diff.size else 0.0,
    }


def judge(metrics: dict, max_drop: float) -> str:
    ok = np.isfinite(metrics["drop_pp"]) and metrics["drop_pp"] <= max_drop + 1e-9
    return PASS if ok else FAIL


def run_check(engine, images, ref_probs: np.ndarray, max_drop: float) -> dict:
    probs = engine.predict(images.x)
    if not np.all(np.isfinite(probs)):
        m = compare(np.nan_to_num(probs, nan=0.0), ref_probs, images.y)
        return {**m, "status": FAIL, "max_drop_pp": max_drop, "reason": "non-finite outputs (NaN/inf)"}
    m = compare(probs, ref_probs, images.y)
    return {**m, "status": judge(m, max_drop), "max_drop_pp": max_drop}
