"""Run statistics with bounded memory: latency percentiles over a reservoir sample, fps over a short window, RSS.

A camera left running for weeks must not grow a list per frame, so percentiles come from a fixed-size uniform
reservoir (exact for runs shorter than the reservoir) and the fps from the last few seconds of frames.
"""
from __future__ import annotations

import random
import time
from collections import deque

import numpy as np


class Reservoir:
    """Uniform sample of at most `size` values (Vitter's algorithm R) plus exact count/mean/max."""

    def __init__(self, size: int = 8192, seed: int = 0):
        self.size, self.values, self.count, self.total, self.max = size, [], 0, 0.0, 0.0
        self._rng = random.Random(seed)

    def add(self, x: float) -> None:
        self.count += 1
        self.total += x
        self.max = max(self.max, x)
        if len(self.values) < self.size:
            self.values.append(x)
        else:
            j = self._rng.randrange(self.count)
            if j < self.size:
                self.values[j] = x

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.values, q)) if self.values else 0.0

    def summary(self) -> dict[str, float]:
        return {"p50": round(self.percentile(50), 3), "p95": round(self.percentile(95), 3),
                "mean": round(self.total / self.count, 3) if self.count else 0.0, "max": round(self.max, 3)}


class RateMeter:
    """Frames per second over the last `window` seconds."""

    def __init__(self, window: float = 3.0):
        self.window, self.times = window, deque()

    def tick(self, t: float | None = None) -> None:
        t = time.perf_counter() if t is None else t
        self.times.append(t)
        while len(self.times) > 2 and t - self.times[0] > self.window:
            self.times.popleft()

    @property
    def fps(self) -> float:
        if len(self.times) < 2:
            return 0.0
        span = self.times[-1] - self.times[0]
        return (len(self.times) - 1) / span if span > 0 else 0.0


def rss_kb() -> int:
    """Resident set size of this process in KiB (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
