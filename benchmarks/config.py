"""`BenchConfig`: what `edge-bench` was asked to measure, frozen and saved inside the JSON result it produced."""
from __future__ import annotations

from dataclasses import dataclass

from trashcam.edge.config import JsonConfig


@dataclass(frozen=True)
class BenchConfig(JsonConfig):
    variants: tuple[str, ...] = ()  # empty: every variant the bundle has
    threads: tuple[int, ...] = ()  # empty: 1 and edge.runtime.default_threads()
    runs: int = 100  # timed runs per measurement, after `warmup` untimed ones
    warmup: int = 10
    data: str | None = None  # DIR/<class>/* instead of the bundle's saved test split
    data_root: str | None = None  # where the saved split's relative paths live, if the data moved
    max_images: int | None = None  # cap on the accuracy set (evenly spaced, so every class keeps its share)
    e2e_images: int = 32  # distinct image files cycled through by the end-to-end timing
    accuracy: bool = True  # False: latency and memory only
    isolate: bool = True  # each (variant, threads) in a fresh process: honest peak RSS, untouched thread pools
    record: bool = True  # write p50s into the bundle's metadata["bench"] (read by `edge-run --variant auto`)

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", tuple(self.variants))
        object.__setattr__(self, "threads", tuple(int(t) for t in self.threads))
        if self.runs < 1:
            raise ValueError(f"runs must be >= 1, got {self.runs}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if any(t < 1 for t in self.threads):
            raise ValueError(f"thread counts must be >= 1, got {list(self.threads)}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {self.max_images}")
        if self.e2e_images < 1:
            raise ValueError(f"e2e_images must be >= 1, got {self.e2e_images}")

    def resolved_threads(self) -> tuple[int, ...]:
        from trashcam.edge.runtime import default_threads
        return self.threads or tuple(sorted({1, default_threads()}))
