"""`ConvertConfig`: everything `edge-convert` was asked to do, frozen and saved in the report it produced.

Each field's `setting(...)` carries its help text and its bounds: edge-convert derives its flags from them.
"""
from __future__ import annotations

from dataclasses import dataclass

from trashcam.edge.config import JsonConfig, setting

INT8_IO = ("uint8", "float")


@dataclass(frozen=True)
class ConvertConfig(JsonConfig):
    variants: tuple[str, ...] = setting((), "variants to make, comma-separated: tflite-fp32, tflite-fp16, "
                                            "tflite-int8, onnx (or fp32, fp16, int8) (default: all)")
    check: bool = setting(True, "run each variant on the test images and keep it only if it passes; "
                                "--no-check: keep it UNCHECKED")
    max_drop: float = setting(1.0, "allowed accuracy drop vs the Keras model, percentage points", min=0.0,
                              metavar="PP")
    data: str | None = setting(None, "check on DIR/<class>/*.jpg instead of the saved test split", metavar="DIR")
    data_root: str | None = setting(None, "where the saved split's images live now, if moved", metavar="DIR")
    calib_size: int = setting(300, "INT8: representative images, class-balanced from the train split", min=1)
    calib_data: str | None = setting(None, "INT8: take representative images from DIR instead", metavar="DIR")
    seed: int = setting(0, "INT8: selects the representative images")
    int8_io: str = setting("uint8", "INT8 input/output: uint8 (integer) or float (float I/O around the integer "
                                    "model)", choices=INT8_IO)
    # The INT8 recipe (convert/int8.py); all three off = the stock converter.
    int8_bias_correction: bool = setting(True, "INT8: cancel the mean output shift that int8 weight rounding "
                                               "causes in each layer")
    int8_range_repair: bool = setting(True, "INT8: re-measure the calibrated activation ranges op by op; the "
                                            "TFLite calibrator records some too wide (TF issue 127842); ~15 s "
                                            "for 300 images at 288 px")
    int8_float_layers: int = setting(2, "INT8: keep the input normalisation and the first N conv/dense layers "
                                        "in float (2: stem + first depthwise, the most rounding-sensitive; 0-5 % "
                                        "slower than fully integer here); 0: only the normalisation; -1: fully "
                                        "integer, for NPUs / Edge TPU", min=-1)
    opset: int = setting(13, "ONNX opset", min=1)
    threads: int | None = setting(None, "inference threads for the check", min=1)
