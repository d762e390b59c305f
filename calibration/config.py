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
    # the "uncertain" score (calibration/ood.py): auto | msp | mahalanobis | combined, its threshold flagging
    # `flag_rate` of the validation images, its class statistics from up to `ood_fit_images` train images
    ood_score: str = "auto"
    flag_rate: float = 0.05
    ood_fit_images: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", tuple(self.variants))
        if not 0 < self.target_precision <= 1:
            raise ValueError(f"target_precision must be in (0, 1], got {self.target_precision}")
        if self.target_coverage is not None and not 0 < self.target_coverage <= 1:
            raise ValueError(f"target_coverage must be in (0, 1], got {self.target_coverage}")
        if not 0 < self.flag_rate < 1:
            raise ValueError(f"flag_rate must be in (0, 1), got {self.flag_rate}")
        if self.ood_score not in ("auto", "msp", "mahalanobis", "combined"):
            raise ValueError(f"ood_score must be auto, msp, mahalanobis or combined, got {self.ood_score!r}")
        if self.bins < 1:
            raise ValueError(f"bins must be >= 1, got {self.bins}")
