"""Latency of one engine: `invoke_raw()` alone, and end-to-end from an image to calibrated probabilities.

All follow the same protocol (untimed warm-up, then N timed runs, perf_counter per run) so the numbers
differ only by what is inside the timed region: the invoke alone, or decode + resize + prepare + invoke +
postprocess + temperature through `edge.images.load_for_model`, the path `edge-run` and `Classifier` take for
every frame (and "frame": the same from already-decoded arrays, so without the JPEG decode).

`time_interleaved` runs those measurements round-robin, one call of each per round in a rotating order, so
CPU contention that comes and goes (a shared machine, thermal throttling) lands on all of them alike and the
e2e / invoke ratio stays meaningful; timed one block after the other, a busy minute during one block made the
ratio swing between 0.98x and 1.43x on a shared 2-core machine.
"""
from __future__ import annotations

import time
from itertools import cycle
from typing import Callable, Sequence

import numpy as np

from trashcam.edge.bundle import Preprocessing
from trashcam.edge.images import load_for_model
from trashcam.edge.runtime import classify_timed

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


def per_frame(engine, sources: Sequence, pre: Preprocessing, temperature: float = 1.0) -> Callable[[], int]:
    """A call that classifies the next of `sources` (cycling) exactly as `Classifier.classify` and edge-run do
    (runtime.classify_timed): image -> resize (straight into the input tensor where the model allows) -> invoke
    -> postprocess -> temperature -> top-1.

    With image file paths this is the full per-image cost including JPEG decode; cycling real files (not one
    cached array) keeps decode and resize cost realistic, and after the warm-up the files are in the page
    cache. With decoded full-size frames (HxWx3 uint8 arrays) it is what edge-run pays per camera frame.
    """
    if not len(sources):
        raise ValueError("end-to-end timing needs at least one image")
    it = iter(cycle(list(sources)))

    def one() -> int:
        return int(np.argmax(classify_timed(engine, pre, temperature, next(it))[0]))

    return one


def time_interleaved(fns: dict[str, Callable[[], object]], runs: int, warmup: int) -> dict[str, list[float]]:
    """ms per call of each of `fns`, timed round-robin: every round calls each once, the order rotating by one
    per round so none always follows the same neighbour. Warm-up rounds are not timed."""
    names = list(fns)
    out: dict[str, list[float]] = {k: [] for k in names}
    for r in range(warmup + runs):
        k0 = r % len(names)
        for k in names[k0:] + names[:k0]:
            t0 = time.perf_counter()
            fns[k]()
            dt = (time.perf_counter() - t0) * 1e3
            if r >= warmup:
                out[k].append(dt)
    return out


def ratio_interval(base_ms, other_ms, draws: int = 2000, seed: int = 0) -> list[float]:
    """95 % bootstrap interval of median(other) / median(base), two call lists of time_interleaved. Its rounds are
    resampled whole, a round's two calls together: they ran back to back, under the same state of the machine. It
    says how far one run's ratio can be trusted against a budget (issue 15: the score's 5 %); drift between runs on
    a shared machine comes on top."""
    b, o = np.asarray(base_ms, np.float64), np.asarray(other_ms, np.float64)
    i = np.random.default_rng(seed).integers(0, len(b), (draws, len(b)))
    r = np.median(o[i], axis=1) / np.median(b[i], axis=1)
    return [round(float(x), 4) for x in np.percentile(r, [2.5, 97.5])]


def time_streamed(engine, paths: Sequence[str], pre: Preprocessing, temperature: float, runs: int, warmup: int,
                  chunk: int = 25, make_engine: Callable[[int], object] | None = None
                  ) -> tuple[list[float], list[float], int]:
    """Per-frame time of image files streamed as edge-run streams a folder with `engine.threads` threads, and
    invoke-only times of `engine` from the same chunks. Returns (ms per frame, invoke ms, streams).

    edge-run's plan (edge.streams.plan_streams): with T > 1 threads, T single-threaded interpreters classify
    frames at once (`make_engine(1)` builds the extra ones; the caller's thread reads and decodes); with one
    thread, or without `make_engine`, `engine` alone with the frames decoded and resized ahead in a thread
    (edge.grabber.PrefetchSource). A throughput figure: time per frame in a stream, not the latency of one
    image, which stays what `per_frame` measures. Chunks of `chunk` streamed frames (each a fresh stream) alternate
    with as many invoke-only calls, so both see the same contention; each chunk's first frame, which waits for
    the stream to fill, is read but not counted. Warm-up frames are dropped.
    """
    from trashcam.edge.grabber import PrefetchSource
    from trashcam.edge.sources import ImageFolderSource
    from trashcam.edge.runtime import classify_timed
    from trashcam.edge.streams import StreamPool, classified, plan_streams

    streams, per = plan_streams(None, getattr(engine, "threads", 1), paced=False)
    pool = None
    if streams > 1 and make_engine is not None:
        pool = StreamPool([make_engine(per) for _ in range(streams)],
                          lambda eng, f: classify_timed(eng, pre, temperature, f.image, f.model_input))
    else:
        streams = 1

    def stream(n: int) -> list[float]:
        src = ImageFolderSource(list(paths), loop=True)
        if pool is None:
            src = PrefetchSource(src, lambda im: load_for_model(im, pre))
        out: list[float] = []
        it = classified(src, engine, pre, temperature, pool)
        try:
            next(it)
            t_prev = time.perf_counter()
            for _frame, res in it:
                if res is None:  # unreadable: its time goes to the next frame, as in edge-run
                    continue
                int(np.argmax(res[0]))
                now = time.perf_counter()
                out.append((now - t_prev) * 1e3)
                t_prev = now
                if len(out) == n:
                    break
        finally:
            it.close()
            src.close()
        return out

    x = engine.prepare(load_for_model(paths[0], pre))
    frames: list[float] = []
    invokes: list[float] = []
    total = warmup + runs
    for c in range((total + chunk - 1) // chunk):
        n = min(chunk, total - c * chunk)
        parts = [lambda: frames.extend(stream(n)),
                 lambda: invokes.extend(_timed(lambda: engine.invoke_raw(x)) for _ in range(n))]
        for part in (parts if c % 2 == 0 else parts[::-1]):
            part()
    return frames[warmup:], invokes[warmup:], streams


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def evenly_spaced(items: Sequence, n: int) -> list:
    """`n` items spread over the whole list (a sorted, class-ordered list keeps every class represented)."""
    if n >= len(items):
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]
