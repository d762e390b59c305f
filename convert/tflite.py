"""Keras -> TFLite: float32, float16 weights, and full-integer INT8 with a representative dataset.

`TFLiteConverter.from_keras_model` is the path picked by test: on Keras 3.15 / TF 2.21 it matches Keras to
~1e-13 (fp32), while `from_concrete_functions` produced NaNs. INT8 is per-channel (the converter's default).
By default it follows the recipe in convert/int8.py (bias correction, repaired calibration ranges, input stage
in float); with the recipe switched off it is the stock full-integer conversion with integer-only builtins, so a
model that cannot be fully quantised fails loudly instead of silently keeping float ops.
"""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _converter(model):
    import tensorflow as tf
    return tf, tf.lite.TFLiteConverter.from_keras_model(model)


def _convert(conv) -> bytes:
    # The converter prints "Saved artifact at ..." and a TensorSpec line per captured variable (hundreds for
    # Lite0) on stdout, which is edge-convert's table: kept out of sight unless the conversion fails.
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            return conv.convert()
    except Exception:
        sys.stderr.write(buf.getvalue()[-4000:])
        raise


def _write(path: Path, data: bytes) -> None:
    Path(path).write_bytes(data)


def convert_fp32(model, out: Path, ctx) -> dict[str, Any]:
    tf, conv = _converter(model)
    _write(out, _convert(conv))
    return {"converter": f"tf.lite.TFLiteConverter.from_keras_model (TF {tf.__version__})"}


def convert_fp16(model, out: Path, ctx) -> dict[str, Any]:
    tf, conv = _converter(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]
    _write(out, _convert(conv))
    return {"converter": f"tf.lite.TFLiteConverter.from_keras_model (TF {tf.__version__})",
            "weights": "float16", "activations": "float32"}


def representative_gen(images: np.ndarray) -> Iterator[list[np.ndarray]]:
    for im in images:
        yield [im[None].astype(np.float32)]


def quantizing_converter(model, images: np.ndarray):
    """(tf, converter) set up for post-training quantisation with `images` as the representative dataset."""
    tf, conv = _converter(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: representative_gen(images)
    return tf, conv


def _stock_int8(model, images: np.ndarray, int8_io: str) -> bytes:
    tf, conv = quantizing_converter(model, images)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io == "uint8":
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.uint8
    return _convert(conv)


def convert_int8(model, out: Path, ctx) -> dict[str, Any]:
    import tensorflow as tf

    from .int8 import int8_recipe

    c = ctx.config
    images, rep_info = ctx.representative()
    recipe = {"bias_correction": c.int8_bias_correction, "range_repair": c.int8_range_repair,
              "float_layers": c.int8_float_layers}
    if c.int8_bias_correction or c.int8_range_repair or c.int8_float_layers >= 0:
        data, details = int8_recipe(model, images.x, c.int8_io, c.int8_bias_correction, c.int8_range_repair,
                                    c.int8_float_layers)
        recipe.update(details)
    else:
        data = _stock_int8(model, images.x, c.int8_io)
    _write(out, data)
    float_ops = recipe.get("float_ops") or []
    return {"converter": f"tf.lite.TFLiteConverter.from_keras_model (TF {tf.__version__})",
            "weights": "int8 per-channel", "io": c.int8_io, "representative": rep_info, "int8_recipe": recipe,
            "activations": f"int8, float in {', '.join(float_ops)}" if float_ops else "int8"}
