"""The TFLite converter, set up the one way every variant uses it: from the Keras model, its stdout kept quiet.

Shared by convert/tflite.py (fp32, fp16) and convert/int8.py (INT8), so neither imports the other.
`TFLiteConverter.from_keras_model` is the path picked by test: on Keras 3.15 / TF 2.21 it matches Keras to
~1e-13 (fp32), while `from_concrete_functions` produced NaNs.
"""
from __future__ import annotations

import contextlib
import io
import sys
from typing import Iterator

import numpy as np


def keras_converter(model):
    """(tf, a TFLiteConverter for `model`)."""
    import tensorflow as tf
    return tf, tf.lite.TFLiteConverter.from_keras_model(model)


def converter_name() -> str:
    import tensorflow as tf
    return f"tf.lite.TFLiteConverter.from_keras_model (TF {tf.__version__})"


def run_converter(conv) -> bytes:
    # The converter prints "Saved artifact at ..." and a TensorSpec line per captured variable (hundreds for
    # Lite0) on stdout, which is edge-convert's table: kept out of sight unless the conversion fails.
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            return conv.convert()
    except Exception:
        sys.stderr.write(buf.getvalue()[-4000:])
        raise


def representative_gen(images: np.ndarray) -> Iterator[list[np.ndarray]]:
    for im in images:
        yield [im[None].astype(np.float32)]


def quantizing_converter(model, images: np.ndarray):
    """(tf, converter) set up for post-training quantisation with `images` as the representative dataset."""
    tf, conv = keras_converter(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: representative_gen(images)
    return tf, conv


def stock_int8(model, images: np.ndarray, int8_io: str) -> bytes:
    """The stock full-integer conversion with integer-only builtins (only public converter API): a model that
    cannot be fully quantised fails loudly instead of silently keeping float ops."""
    tf, conv = quantizing_converter(model, images)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io == "uint8":
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.uint8
    return run_converter(conv)
