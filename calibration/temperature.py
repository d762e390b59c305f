"""Temperature scaling: the fit lives in trashcam.edge.temperature beside `apply_temperature` (what a device
computes); re-exported here for calibration's own modules."""
from __future__ import annotations

from trashcam.edge.temperature import T_MAX, T_MIN, at_bound, fit_temperature

__all__ = ["T_MIN", "T_MAX", "fit_temperature", "at_bound"]
