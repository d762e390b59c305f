"""`CalibrationConfig`: what `edge-calibrate` was asked to do, frozen and saved in its report."""
from __future__ import annotations

from dataclasses import dataclass

from trashcam.edge.config import JsonConfig


@dataclass(frozen=True)
class CalibrationConfig(JsonConfig):
    variants: tuple[str, ...] = ()  # empty: keras + every variant present that did not fail its check
    data: str | None = None  # labelled folder (DIR/<class>/*) instead of the saved validation split
    data_root: str | None = None  # where the saved split's relative paths live, if the data moved
    target_precision: float = 0.95  # the "uncertain" threshold keeps accepted predictions at least this accurate
    target_coverage: float | None = None  # ...or accepts this share of images (wins over target_precision)
    bins: int = 15
    plots: bool = True
    ood_data: str | None = None  # images of no known class: report how many the rule flags as uncertain
    threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", tuple(self.variants))
        if not 0 < self.target_precision <= 1:
            raise ValueError(f"target_precision must be in (0, 1], got {self.target_precision}")
        if self.target_coverage is not None and not 0 < self.target_coverage <= 1:
            raise ValueError(f"target_coverage must be in (0, 1], got {self.target_coverage}")
        if self.bins < 1:
            raise ValueError(f"bins must be >= 1, got {self.bins}")
