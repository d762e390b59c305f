"""Latency of one engine: `invoke_raw()` alone, and end-to-end from an image file to probabilities.

All follow the same protocol (untimed warm-up, then N timed runs, perf_counter per run) so the numbers
differ only by what is inside the timed region: the invoke alone, or decode + resize + prepare + invoke +
postprocess through `edge.images.load_for_model`, the path `edge-run` takes for every frame (and "frame":
the same from already-decoded camera-sized arrays, so without the JPEG decode).
"""
from __future__ import annotations

import time
from itertools import cycle
from typing import Callable, Sequence

import numpy as np

from trashcam.edge.bundle import Preprocessing
from trashcam.edge.images import load_for_model

STAT_KEYS = ("mean", "std", "min", "p50", "p90", "p99", "max")


def summarize(ms: Sequence[float]) -> dict:
    """mean, std, min, p50, p90, p99, max (ms), the run count and fps (1000 / mean)."""
    a = np.asarray(ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no timings to summarise")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    mean = float(a.mean())
    out = {"mean": mean, "std": float(a.std()), "min": float(a.min()), "p50": float(p50), "p90": float(p90),
           "p99": float(p99), "max": float(a.max())}
    out = {k: round(v, 5) for k, v in out.items()}  # 10 ns: tiny models invoke in ~20 us
    out["runs"] = int(a.size)
    out["fps"] = round(1000.0 / mean, 2) if mean > 0 else None
    return out


def time_calls(fn: Callable[[], object], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def time_invoke(engine, image_u8: np.ndarray, runs: int, warmup: int) -> dict:
    """The model alone: the input tensor is prepared once, outside the timed region."""
    x = engine.prepare(image_u8)
    return summarize(time_calls(lambda: engine.invoke_raw(x), runs, warmup))


def time_end_to_end(engine, sources: Sequence, pre: Preprocessing, runs: int, warmup: int) -> dict:
    """source -> load_for_model -> prepare -> invoke -> postprocess -> top-1, cycling through `sources`.

    With image file paths this is the full per-image cost including JPEG decode; cycling real files (not one
    cached array) keeps decode and resize cost realistic, and after the warm-up the files are in the page
    cache. With decoded full-size frames (HxWx3 uint8 arrays) it is what edge-run pays per camera frame.
    """
    if not len(sources):
        raise ValueError("end-to-end timing needs at least one image")
    it = iter(cycle(list(sources)))

    def one():
        x = load_for_model(next(it), pre)
        return int(np.argmax(engine.postprocess(engine.invoke_raw(engine.prepare(x)))))

    return summarize(time_calls(one, runs, warmup))


def evenly_spaced(items: Sequence, n: int) -> list:
    """`n` items spread over the whole list (a sorted, class-ordered list keeps every class represented)."""
    if n >= len(items):
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]
