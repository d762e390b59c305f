"""Keras -> TFLite float variants: float32, and float16 weights with float32 compute.

INT8 (with its recipe) lives in convert/int8.py; both build on convert/converter.py and neither imports the
other. The TFLite Model Metadata that makes each file self-describing is added by convert/metadata.py (see
convert/variants.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .converter import converter_name, keras_converter, run_converter


def convert_fp32(model, out: Path, ctx) -> dict[str, Any]:
    _, conv = keras_converter(model)
    Path(out).write_bytes(run_converter(conv))
    return {"converter": converter_name()}


def convert_fp16(model, out: Path, ctx) -> dict[str, Any]:
    tf, conv = keras_converter(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]
    Path(out).write_bytes(run_converter(conv))
    return {"converter": converter_name(), "weights": "float16", "activations": "float32"}
