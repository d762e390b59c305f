"""Keras -> ONNX, verified by onnx.checker (and by onnxruntime in the accuracy check).

tf2onnx 1.17 converts Keras 3.15 models directly and lets us name the input and pick the opset; Keras' own
`model.export(format="onnx")` (tf2onnx underneath) is the fallback. Both matched Keras to ~4e-15 on the tiny
test model. The batch dimension is left dynamic so onnxruntime can also run batches.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np

INPUT_NAME = "image"


def convert_onnx(model, out: Path, ctx) -> dict[str, Any]:
    import onnx
    import tensorflow as tf

    opset = int(ctx.config.opset)
    shape = (None, *[int(d) for d in model.inputs[0].shape[1:]])
    errors = []
    with contextlib.redirect_stdout(sys.stderr):  # converters print progress; stdout is edge-convert's table
        try:
            import tf2onnx
            spec = (tf.TensorSpec(shape, tf.float32, name=INPUT_NAME),)
            tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, output_path=str(out))
            converter = f"tf2onnx {tf2onnx.__version__}"
        except Exception as e:  # tf2onnx lags Keras/TF releases: try Keras' own exporter before giving up
            errors.append(f"tf2onnx: {e}")
            try:
                # Keras' exporter refuses a model never called, as the [probabilities, features] wrapper is
                model([np.zeros((1, *shape[1:]), np.float32)])
                model.export(str(out), format="onnx", opset_version=opset)
                converter = "keras.Model.export(format='onnx')"
            except Exception as e2:
                raise RuntimeError(f"ONNX export failed ({errors[0]}; keras export: {e2})") from e2
    onnx.checker.check_model(onnx.load(str(out)))
    return {"converter": converter, "opset": opset, **({"fallback_reason": errors[0]} if errors else {})}
