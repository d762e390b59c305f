"""trashcam.calibration: temperature scaling and the "uncertain" threshold, fitted on validation.

Library entry: `calibrate_bundle(bundle_dir, CalibrationConfig(...)) -> report dict`.
"""
from .config import CalibrationConfig
from .pipeline import calibrate_bundle

__all__ = ["CalibrationConfig", "calibrate_bundle"]
