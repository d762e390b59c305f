"""`ConvertConfig`: everything `edge-convert` was asked to do, frozen and saved in the report it produced."""
from __future__ import annotations

from dataclasses import dataclass

from trashcam.edge.config import JsonConfig

INT8_IO = ("uint8", "float")


@dataclass(frozen=True)
class ConvertConfig(JsonConfig):
    variants: tuple[str, ...] = ()  # empty: every variant in convert.variants.VARIANTS
    check: bool = True  # run the accuracy check before a file is installed
    max_drop: float = 1.0  # percentage points of test accuracy a variant may lose against the Keras model
    calib_size: int = 300  # representative images for INT8 (class-balanced)
    calib_data: str | None = None  # another folder for INT8 calibration instead of the train split
    seed: int = 0  # selects the representative images
    int8_io: str = "uint8"  # "uint8": integer input/output; "float": float I/O around an integer model
    # The INT8 recipe (convert/int8.py); all three off = the stock converter, as before.
    int8_bias_correction: bool = True  # cancel the mean output shift of int8 weight rounding
    int8_range_repair: bool = True  # re-measure calibrated ranges (TFLite records some wrongly, TF #127842)
    int8_float_layers: int = 2  # input normalisation + first N conv/dense layers stay float; -1: fully integer
    opset: int = 13
    data: str | None = None  # folder of class folders for the check instead of the saved test split
    data_root: str | None = None  # where the saved split's relative paths live, if the data moved
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.int8_io not in INT8_IO:
            raise ValueError(f"int8_io must be one of {INT8_IO}, got {self.int8_io!r}")
        if self.calib_size < 1:
            raise ValueError(f"calib_size must be >= 1, got {self.calib_size}")
        if self.int8_float_layers < -1:
            raise ValueError(f"int8_float_layers must be >= -1 (-1: fully integer), got {self.int8_float_layers}")
        if self.max_drop < 0:
            raise ValueError(f"max_drop is a tolerance in percentage points and must be >= 0, got {self.max_drop}")
        object.__setattr__(self, "variants", tuple(self.variants))
