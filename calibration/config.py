"""`CalibrationConfig`: what `edge-calibrate` was asked to do, frozen and saved in its report."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CalibrationConfig:
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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["variants"] = list(self.variants)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CalibrationConfig":
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown calibration config key(s): {unknown}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> "CalibrationConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
