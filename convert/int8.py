"""The INT8 recipe: calibrate, repair the calibrated ranges, keep the input stage in float, quantise.

Measured on the default Lite0 bundle (see README), the plain converter loses accuracy for three reasons, each
fixed here by a separate, switchable step:

1. Weight rounding shifts every layer's mean output (a class bias): `bias_correction.bias_correct`.
2. The TFLite calibrator records a wrong range for a tensor whose buffer the next op reuses in place
   (tensorflow/tensorflow#127842): the Rescaling MUL output got [-0.99, 1.99] instead of [0, 1.99], so the
   input was requantised at 1.5x the pixel step, and each residual block's projection inherited the wider range
   of the Add after it. `repair_ranges` re-measures every op output's min/max on the same images.
3. The input normalisation and the first convolutions are the most sensitive part of an
   EfficientNet/MobileNet-style network (BN-folded stem and first depthwise kernels reach |w| ~ 18, so their
   int8 grid is coarse) and cost little to run in float: `float_front_nodes` keeps them out of quantisation.

This path uses TFLite's calibrate-only mode and `mlir_quantize` (what `TFLiteConverter.convert()` runs inside,
and what `tf.lite.experimental.QuantizationDebugger` uses for its deny-lists). With every step switched off,
`tflite.convert_int8` uses the stock converter instead.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any

import numpy as np

# TFLite ops that carry weights; "the first N layers kept in float" counts these, in execution order.
WEIGHT_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D"})
BIAS_CORRECTION_IMAGES = 128  # the shift is a per-channel mean over images x positions: 128 images is plenty


def _interpreter(model_content: bytes, preserve_all: bool = False):
    """A reference-kernel interpreter (no XNNPACK: a delegate hides intermediate tensors)."""
    import importlib

    from trashcam.edge.runtime import load_tflite_interpreter_class

    cls, _ = load_tflite_interpreter_class()
    resolver = importlib.import_module(cls.__module__).OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = cls(model_content=model_content, experimental_preserve_all_tensors=preserve_all,
             experimental_op_resolver_type=resolver, num_threads=1)
    it.allocate_tensors()
    return it


def calibrate(model, images: np.ndarray) -> bytes:
    """A float TFLite model with min/max statistics recorded per tensor (the converter's calibrate-only mode)."""
    from .tflite import _convert, quantizing_converter

    _, conv = quantizing_converter(model, images)
    conv._experimental_calibrate_only = True  # noqa: SLF001 - documented by QuantizationDebugger's use of it
    return _convert(conv)


def _op_outputs(it) -> list[tuple[str, list[int]]]:
    return [(op["op_name"], list(op["outputs"])) for op in it._get_ops_details()]  # noqa: SLF001


def repair_ranges(calibrated: bytes, images: np.ndarray) -> tuple[bytes, dict[str, Any]]:
    """Replace each op output's recorded min/max with the one measured op by op on `images`.

    `experimental_preserve_all_tensors` stops buffer sharing, so every op output is still intact when read.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    it = _interpreter(calibrated, preserve_all=True)
    inp = it.get_input_details()[0]
    outs = sorted({i for _, o in _op_outputs(it) for i in o})
    lo = dict.fromkeys(outs, np.inf)
    hi = dict.fromkeys(outs, -np.inf)
    for im in images:
        it.set_tensor(inp["index"], im[None].astype(np.float32))
        it.invoke()
        for i in outs:
            v = it.get_tensor(i)
            lo[i], hi[i] = min(lo[i], float(v.min())), max(hi[i], float(v.max()))
    names = {t["index"]: t["name"] for t in it.get_tensor_details()}
    measured = {names[i]: (lo[i], hi[i]) for i in outs}
    del it
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    narrowed = []
    for t in model.subgraphs[0].tensors:
        q, name = t.quantization, t.name.decode()
        if name not in measured or q is None or q.min is None or len(q.min) != 1:
            continue  # weights and per-channel statistics are not calibrated ranges
        new_lo, new_hi = min(measured[name][0], 0.0), max(measured[name][1], 0.0)  # int8 ranges include 0
        old_width, new_width = float(q.max[0] - q.min[0]), new_hi - new_lo
        if new_width < old_width * (1 - 1e-3):
            narrowed.append({"tensor": name.split(";")[0], "recorded": [float(q.min[0]), float(q.max[0])],
                             "measured": [round(new_lo, 6), round(new_hi, 6)]})
        q.min, q.max = np.array([new_lo], np.float32), np.array([new_hi], np.float32)

    def ratio(n):
        return (n["recorded"][1] - n["recorded"][0]) / max(n["measured"][1] - n["measured"][0], 1e-12)

    info = {"tensors_narrowed": len(narrowed), "largest": sorted(narrowed, key=ratio, reverse=True)[:3]}
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), info


def float_front_nodes(calibrated: bytes, n_layers: int) -> list[str]:
    """Output tensor names of every op before the (n_layers + 1)-th weight op, in execution order: the input
    normalisation (Rescaling, Normalization, padding) plus the first `n_layers` conv/dense layers."""
    it = _interpreter(calibrated)
    names = {t["index"]: t["name"] for t in it.get_tensor_details()}
    nodes, seen = [], 0
    for op_name, outputs in _op_outputs(it):
        if op_name in WEIGHT_OPS:
            if seen == n_layers:
                break
            seen += 1
        nodes += [names[i] for i in outputs]
    return nodes


def quantize(calibrated: bytes, io: str, denylisted_nodes: list[str]) -> bytes:
    """Full-integer quantisation of a calibrated model; `denylisted_nodes` stay float (with (de)quantise ops
    around them). I/O as `TFLiteConverter` makes it: uint8 in/out, or float in/out."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tflite_convert

    t = tf.uint8 if io == "uint8" else tf.float32
    with contextlib.redirect_stdout(sys.stderr):
        return tflite_convert.mlir_quantize(calibrated, input_data_type=t, output_data_type=t,
                                            denylisted_nodes=denylisted_nodes or None)


def float_compute_ops(model_content: bytes) -> list[str]:
    """Ops of a quantised model that compute in float (a float output's final DEQUANTIZE does not count)."""
    it = _interpreter(model_content)
    dtype = {t["index"]: t["dtype"] for t in it.get_tensor_details()}
    model_outputs = {d["index"] for d in it.get_output_details()}
    return [op for op, outs in _op_outputs(it)
            if any(dtype[i] == np.float32 for i in outs) and not (op == "DEQUANTIZE" and set(outs) <= model_outputs)]


def int8_recipe(model, images: np.ndarray, io: str, bias_correction: bool, range_repair: bool,
                float_layers: int) -> tuple[bytes, dict[str, Any]]:
    """Run the recipe; returns the .tflite bytes and what was done (for the bundle's metadata)."""
    from .bias_correction import bias_correct, weight_layers

    info: dict[str, Any] = {}
    if bias_correction:
        kept_float = {layer.name for layer in weight_layers(model)[:max(float_layers, 0)]}
        model, info["bias_correction"] = bias_correct(model, images[:BIAS_CORRECTION_IMAGES], skip=kept_float)
    calibrated = calibrate(model, images)
    if range_repair:
        calibrated, info["range_repair"] = repair_ranges(calibrated, images)
    nodes = float_front_nodes(calibrated, float_layers) if float_layers >= 0 else []
    data = quantize(calibrated, io, nodes)
    info["float_ops"] = float_compute_ops(data)
    if float_layers < 0 and info["float_ops"]:
        raise ValueError(f"--int8-float-layers -1 asks for a fully integer model, but TFLite left "
                         f"{info['float_ops']} in float (ops without an int8 kernel)")
    return data, info
