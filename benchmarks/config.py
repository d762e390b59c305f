"""`BenchConfig`: what `edge-bench` was asked to measure, frozen and saved inside the JSON result it produced."""
from __future__ import annotations

from dataclasses import dataclass

from trashcam.edge.config import ConfigError, JsonConfig, setting


@dataclass(frozen=True)
class BenchConfig(JsonConfig):
    variants: tuple[str, ...] = setting((), "variants to measure, comma-separated (default: all the bundle has)")
    threads: tuple[int, ...] = setting((), "thread counts to time, comma-separated (default: 1 and min(4, cores))",
                                       metavar="N[,N..]")
    runs: int = setting(100, "timed runs per measurement", min=1)
    warmup: int = setting(10, "untimed runs before timing", min=0)
    data: str | None = setting(None, "labelled folder DIR/<class>/*.jpg instead of the saved test split",
                               metavar="DIR")
    data_root: str | None = setting(None, "where the saved split's images live now, if moved", metavar="DIR")
    max_images: int | None = setting(None, "cap the accuracy set (evenly spread over classes)", min=1)
    e2e_images: int = setting(32, "distinct image files the end-to-end timing cycles through", min=1)
    accuracy: bool = setting(True, "measure accuracy; --no-accuracy: latency and memory only")
    isolate: bool = setting(True, "time each variant and thread count in a fresh process (honest peak RSS, "
                                  "untouched thread pools); --in-process: faster, no RSS figures",
                            flag="--isolate/--in-process")
    record: bool = setting(True, "write the p50s into the bundle's metadata (read by `edge-run --variant auto`)")
    # a recipe's speed budget is a ratio to another model ("INT8 invoke <= 1.3x Lite0-288's"); timed apart, two
    # bundles' invokes differ by the machine's drift between the runs, so the baseline is timed interleaved
    baseline: str | None = setting(None, "another bundle whose same variant is timed interleaved with each variant "
                                   "(invoke only): the JSON and table get the invoke-time ratio; its model then "
                                   "counts in the RSS figures", metavar="BUNDLE")

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(t < 1 for t in self.threads):
            raise ConfigError("threads", "must all be >= 1", self.threads)

    def resolved_threads(self) -> tuple[int, ...]:
        from trashcam.edge.machine import default_threads
        return self.threads or tuple(sorted({1, default_threads()}))
