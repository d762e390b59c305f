"""The INT8 recipe: calibrate, repair the calibrated ranges, keep the input stage in float, quantise.

Measured on the default Lite0 bundle (docs/accuracy.md), the plain converter loses accuracy for three reasons, each
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
and what `tf.lite.experimental.QuantizationDebugger` uses for its deny-lists): private APIs, all called through
convert/tf_private.py. With every step switched off, or when `tf_private.probe()` says this TensorFlow lacks one
of them, `convert_int8` uses the stock converter instead and records why.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from . import tf_private
from .converter import converter_name, quantizing_converter, run_converter, stock_int8

# TFLite ops that carry weights; "the first N layers kept in float" counts these, in execution order.
WEIGHT_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D"})
BIAS_CORRECTION_IMAGES = 128  # the shift is a per-channel mean over images x positions: 128 images is plenty


def _interpreter(model_content: bytes, preserve_all: bool = False):
    """A reference-kernel interpreter (no XNNPACK: a delegate hides intermediate tensors)."""
    import importlib

    from trashcam.edge.interpreters import load_tflite_interpreter_class

    cls, _ = load_tflite_interpreter_class()
    resolver = importlib.import_module(cls.__module__).OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = cls(model_content=model_content, experimental_preserve_all_tensors=preserve_all,
             experimental_op_resolver_type=resolver, num_threads=1)
    it.allocate_tensors()
    return it


def calibrate(model, images: np.ndarray) -> bytes:
    """A float TFLite model with min/max statistics recorded per tensor (the converter's calibrate-only mode)."""
    _, conv = quantizing_converter(model, images)
    tf_private.calibrate_only(conv)
    return run_converter(conv)


def _op_outputs(it) -> list[tuple[str, list[int]]]:
    return tf_private.ops_details(it)


def repair_ranges(calibrated: bytes, images: np.ndarray) -> tuple[bytes, dict[str, Any]]:
    """Replace each op output's recorded min/max with the one measured op by op on `images`.

    `experimental_preserve_all_tensors` stops buffer sharing, so every op output is still intact when read.
    """
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
    model = tf_private.read_model(calibrated)
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
    return tf_private.write_model(model), info


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


def pin_input_range(calibrated: bytes, value_range: tuple[float, float]) -> tuple[bytes, list[float] | None]:
    """Set the model input's calibrated range to the preprocessing's full pixel range (0..255).

    The calibrator records the range the representative images happened to cover (e.g. 0..240 on dim photos):
    a brighter pixel would then clip, and the uint8 input would not be the raw pixel (scale 240/255), which apps
    that feed raw pixels (MediaPipe Tasks) assume. Returns the new bytes and the range that was recorded."""
    model = tf_private.read_model(calibrated)
    sub = model.subgraphs[0]
    q = sub.tensors[sub.inputs[0]].quantization
    if q is None or q.min is None or len(q.min) != 1:
        return calibrated, None
    recorded = [float(q.min[0]), float(q.max[0])]
    q.min, q.max = np.array([value_range[0]], np.float32), np.array([value_range[1]], np.float32)
    return tf_private.write_model(model), recorded


def quantize(calibrated: bytes, io: str, denylisted_nodes: list[str]) -> bytes:
    """Full-integer quantisation of a calibrated model; `denylisted_nodes` stay float (with (de)quantise ops
    around them). I/O as `TFLiteConverter` makes it: uint8 in/out, or float in/out."""
    return tf_private.mlir_quantize(calibrated, io, denylisted_nodes)


def float_compute_ops(model_content: bytes) -> list[str]:
    """Ops of a quantised model that compute in float (a float output's final DEQUANTIZE does not count)."""
    it = _interpreter(model_content)
    dtype = {t["index"]: t["dtype"] for t in it.get_tensor_details()}
    model_outputs = {d["index"] for d in it.get_output_details()}
    return [op for op, outs in _op_outputs(it)
            if any(dtype[i] == np.float32 for i in outs) and not (op == "DEQUANTIZE" and set(outs) <= model_outputs)]


def int8_recipe(model, images: np.ndarray, io: str, bias_correction: bool, range_repair: bool,
                float_layers: int, input_range: tuple[float, float] = (0.0, 255.0)) -> tuple[bytes, dict[str, Any]]:
    """Run the recipe; returns the .tflite bytes and what was done (for the bundle's metadata)."""
    from .bias_correction import bias_correct, weight_layers

    info: dict[str, Any] = {}
    if bias_correction:
        kept_float = {layer.name for layer in weight_layers(model)[:max(float_layers, 0)]}
        model, info["bias_correction"] = bias_correct(model, images[:BIAS_CORRECTION_IMAGES], skip=kept_float)
    calibrated = calibrate(model, images)
    if range_repair:
        calibrated, info["range_repair"] = repair_ranges(calibrated, images)
    calibrated, info["input_range_recorded"] = pin_input_range(calibrated, input_range)
    nodes = float_front_nodes(calibrated, float_layers) if float_layers >= 0 else []
    data = quantize(calibrated, io, nodes)
    info["float_ops"] = float_compute_ops(data)
    if float_layers < 0 and info["float_ops"]:
        raise ValueError(f"--int8-float-layers -1 asks for a fully integer model, but TFLite left "
                         f"{info['float_ops']} in float (ops without an int8 kernel)")
    return data, info


def _recipe_wanted(c) -> bool:
    return c.int8_bias_correction or c.int8_range_repair or c.int8_float_layers >= 0


def convert_int8(model, out: Path, ctx) -> dict[str, Any]:
    """The INT8 variant: the recipe when asked for and this TensorFlow supports it, else the stock converter."""
    c = ctx.config
    images, rep_info = ctx.representative()
    recipe: dict[str, Any] = {"bias_correction": c.int8_bias_correction, "range_repair": c.int8_range_repair,
                              "float_layers": c.int8_float_layers}
    data = None
    if _recipe_wanted(c):
        lacking = tf_private.missing(tf_private.INT8_RECIPE_NEEDS)
        try:
            if lacking:
                raise tf_private.PrivateApiError("; ".join(f"{k}: {v}" for k, v in lacking.items()))
            data, details = int8_recipe(model, images.x, c.int8_io, c.int8_bias_correction,
                                        c.int8_range_repair, c.int8_float_layers,
                                        tuple(ctx.bundle.preprocessing.value_range))
            recipe.update(details)
        except tf_private.PrivateApiError as e:
            # A TensorFlow outside the tested range: still a valid INT8 file, from public API only.
            recipe["fallback"] = {"used": "stock INT8 converter", "reason": str(e),
                                  "versions": tf_private.versions()}
            print(f"WARNING: INT8 recipe unavailable on this TensorFlow ({e}); using the stock INT8 converter",
                  file=sys.stderr)
    if data is None:
        data = stock_int8(model, images.x, c.int8_io)
    Path(out).write_bytes(data)
    float_ops = recipe.get("float_ops") or []
    return {"converter": converter_name(), "weights": "int8 per-channel", "io": c.int8_io,
            "representative": rep_info, "int8_recipe": recipe,
            "activations": f"int8, float in {', '.join(float_ops)}" if float_ops else "int8"}
