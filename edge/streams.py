"""Throughput mode: the frames of a folder, stdin paths or a video file classified on several interpreters at once.

One interpreter with T threads splits every layer over T cores, which meet at a barrier after each layer: they
wait on each other (INT8 Lite0 at 288 px, 2-core Xeon: 2 threads run 1.7-1.8x one thread's speed), and a
frame's decode and resize must then squeeze between invokes on cores that are already spoken for (edge-bench
measured 1.21x the invoke time per frame with read-ahead at 2 threads). A stream that no camera paces can use
the cores better: T interpreters of one thread each, every one classifying its own frame (resize, invoke,
postprocess), while the caller's thread reads and decodes the next ones. Per-frame time then approaches
(one-thread invoke + resize) / T. Each single frame takes longer (a whole one-thread invoke), so cameras keep
one multi-threaded interpreter, where what counts is how old the decision is.

Results come out in the order the frames went in, unreadable frames included, so smoothing, logs and counts
are the same as on the serial path.
"""
from __future__ import annotations

import queue
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence

from .runtime import classify_timed


def plan_streams(requested: int | None, threads: int, paced: bool) -> tuple[int, int]:
    """(interpreters, threads each) for `threads` threads in all. `requested` None means: one interpreter of one
    thread per thread for a stream nothing paces (folders, stdin, video files), one interpreter with every thread
    for a camera."""
    threads = max(1, int(threads))
    n = (1 if paced else threads) if requested is None else max(1, min(int(requested), threads))
    return n, max(1, threads // n)


class StreamPool:
    """`StreamPool(engines, work).map(frames)` -> (frame, work(engine, frame) or None when the frame is unreadable),
    in order, with `len(engines)` frames classified at once, each on its own engine."""

    def __init__(self, engines: Sequence, work: Callable, depth: int | None = None):
        if not engines:
            raise ValueError("a stream pool needs at least one engine")
        self.engines, self.work = list(engines), work
        self.depth = depth or 2 * len(self.engines)  # frames in flight: every worker has the next one waiting
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for e in self.engines:
            self._free.put(e)

    def _run(self, frame):
        engine = self._free.get()  # never waits: as many workers as engines
        try:
            return self.work(engine, frame)
        finally:
            self._free.put(engine)

    def map(self, frames: Iterable) -> Iterator[tuple[object, object]]:
        pending: deque[tuple[object, Future | None]] = deque()
        ex = ThreadPoolExecutor(len(self.engines), thread_name_prefix="stream")
        try:
            for f in frames:
                pending.append((f, ex.submit(self._run, f) if f.ok else None))
                while len(pending) >= self.depth:
                    f0, fut = pending.popleft()
                    yield f0, fut.result() if fut else None
            while pending:
                f0, fut = pending.popleft()
                yield f0, fut.result() if fut else None
        finally:
            ex.shutdown(wait=True, cancel_futures=True)  # a consumer that stops early waits for <= depth frames


def classified(frames: Iterable, engine, pre, temperature: float, pool: StreamPool | None = None) -> Iterator:
    """(frame, runtime.classify_timed's result, or None for an unreadable frame), in order: on `pool`'s engines
    when there is one, else on `engine` in the caller's thread. The loop of edge-run and of edge-bench's
    streamed timing."""
    if pool is not None:
        yield from pool.map(frames)
        return
    for f in frames:
        yield f, classify_timed(engine, pre, temperature, f.image, f.model_input) if f.ok else None
