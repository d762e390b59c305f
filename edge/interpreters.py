"""Interpreter wrappers, one per deployable format, and `open_engine(bundle, variant)`.

Engines take a batch of uint8 RGB images (N, H, W, 3) already at the model's input size and return float32
probabilities (N, C). They own quantisation: an INT8 model's uint8/int8 input is made with the scale and
zero-point the model itself declares, and its output is de-quantised, so callers never see model dtypes.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .bundle import Bundle, BundleError
from .images import keep_frame_memory
from .machine import default_threads


# Where a TFLite Interpreter can come from, in order of preference: LiteRT (the maintained runtime), the legacy
# tflite_runtime wheel, and full TensorFlow only as a last resort (present on training machines, never needed
# on a device). Imported by name, lazily, so nothing here pulls TensorFlow unless both small runtimes are absent.
TFLITE_RUNTIMES = (  # (name reported, module to import, attribute path to the Interpreter class)
    ("ai_edge_litert", "ai_edge_litert.interpreter", "Interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter", "Interpreter"),
    ("tensorflow.lite", "tensorflow", "lite.Interpreter"),  # tf.lite is a lazy attribute, not an importable path
)


def load_tflite_interpreter_class() -> tuple[type, str]:
    for name, module, attrs in TFLITE_RUNTIMES:
        try:
            obj = importlib.import_module(module)
        except ImportError:
            continue
        for attr in attrs.split("."):
            obj = getattr(obj, attr)
        return obj, name
    raise ImportError("no TFLite runtime found: `pip install ai-edge-litert` (or `pip install '.[edge]'`)")


def _quantize(x: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    if scale == 0:  # not quantised: a float or raw integer input
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


FEATURES_OUTPUT = "features"  # the names train/features.py gives the pooled-feature outputs
MAX_OUTPUT = "features_max"


def dequantize(raw: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (raw.astype(np.float32) - zero_point) * scale if scale else raw.astype(np.float32)


def _dequantize_codes(raw: np.ndarray, table: np.ndarray | None, quantization: tuple) -> np.ndarray:
    """`raw` output codes as float32: through `table` (_dequantize_table) when there is one, else arithmetic."""
    if table is not None:
        return table[raw.view(np.uint8)]  # an int8 code's bits, read as uint8, are its table row
    return dequantize(raw, *quantization)


def _dequantize_table(detail: dict) -> np.ndarray | None:
    """float32 value of each of the 256 codes of a quantised uint8/int8 output, indexed by the code's bits read as
    uint8; None for a float (or unquantised) output."""
    dtype, (scale, zero_point) = np.dtype(detail["dtype"]), tuple(detail["quantization"])
    if dtype not in (np.uint8, np.int8) or not scale:
        return None
    codes = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)  # int8: 0..127, -128..-1
    return (codes - zero_point) * scale


def model_outputs(interpreter) -> tuple[dict, dict | None, dict | None]:
    """(probabilities output, features output or None, features_max output or None) of a TFLite model.

    A converted model does not keep Keras' output order (the flatbuffer listed [features, probabilities] in a
    test), so the order comes from the signature (output_0 = probabilities, output_1 = features, output_2 = their
    maxima: train/features.py); without one, from the tensor names' ":k" suffix, else the narrower output is the
    probabilities."""
    outs = interpreter.get_output_details()
    if len(outs) == 1:
        return outs[0], None, None
    by_index = {d["index"]: d for d in outs}
    try:
        sig = next(iter(interpreter._get_full_signature_list().values()))["outputs"]  # noqa: SLF001
        ordered = [by_index[sig[k]] for k in sorted(sig, key=lambda k: int(k.rsplit("_", 1)[-1]))]
    except (AttributeError, StopIteration, KeyError, ValueError):
        def key(d):
            tail = str(d["name"]).rsplit(":", 1)[-1]
            return (0, int(tail)) if tail.isdigit() else (1, int(d["shape"][-1]))
        ordered = sorted(outs, key=key)
    return ordered[0], ordered[1], (ordered[2] if len(ordered) > 2 else None)


class _ScoreOutputs:
    """What the uncertainty score can read besides the probabilities: `_feat` and `_max` are the engine's own
    handles to the pooled features and the per-channel maxima, None where the model lacks that output."""

    _feat: Any = None
    _max: Any = None

    @property
    def has_features(self) -> bool:
        return self._feat is not None

    @property
    def has_features_max(self) -> bool:
        return self._max is not None


class TFLiteEngine(_ScoreOutputs):
    """One LiteRT interpreter, batch 1, built once. `invoke_raw` is what the latency benchmark times."""

    format = "tflite"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        Interpreter, self.runtime = load_tflite_interpreter_class()
        self.path = Path(path)
        self.threads = threads or default_threads()
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
        self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]
        self._out, self._feat, self._max = model_outputs(self.interpreter)
        self.input_dtype = np.dtype(self._in["dtype"])
        self.input_quant = tuple(self._in["quantization"])  # (scale, zero_point); (0.0, 0) when float
        self.output_quant = tuple(self._out["quantization"])
        self.input_shape = tuple(int(d) for d in self._in["shape"])
        # Quantising uint8 pixels is elementwise, so a 256-entry table gives bit-identical input without the
        # float round trip (0.3 ms of a 2.2 ms INT8 invoke, measured); scale 1 / zero-point 0 needs no copy.
        self._lut = None
        if self.input_dtype != np.float32:
            self._lut = _quantize(np.arange(256, dtype=np.float32), self.input_dtype, *self.input_quant)
        self._identity = self._lut is not None and self._lut.dtype == np.uint8 and \
            np.array_equal(self._lut, np.arange(256))
        # De-quantising a uint8/int8 output is elementwise too: one table lookup instead of astype, subtract and
        # multiply (the same float32 values; 3 numpy calls of overhead fewer per frame, for both outputs).
        self._out_lut = _dequantize_table(self._out)
        self._feat_lut = None if self._feat is None else _dequantize_table(self._feat)
        self._max_lut = None if self._max is None else _dequantize_table(self._max)

    def prepare(self, image_u8: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> the model's input tensor (1, H, W, 3) in its dtype."""
        if self._lut is None:
            return image_u8[None].astype(np.float32)
        if image_u8.dtype != np.uint8:
            return _quantize(image_u8[None].astype(np.float32), self.input_dtype, *self.input_quant)
        return image_u8[None] if self._identity else self._lut[image_u8][None]

    def invoke_raw(self, prepared: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self._in["index"], prepared)
        return self.invoke_filled()

    def input_array(self) -> np.ndarray | None:
        """The input tensor's own memory as a writable (H, W, 3) uint8 array when the model reads pixels as they
        are (uint8 input, scale 1, zero point 0), else None. A frame resized straight into it skips writing and
        copying a model-sized array per frame; every reference must be gone before `invoke_filled()` (LiteRT
        refuses to run while one is held)."""
        return self.interpreter.tensor(self._in["index"])()[0] if self._identity else None

    def invoke_filled(self) -> np.ndarray:
        """Invoke on the input as it stands (written by invoke_raw or through `input_array()`)."""
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out["index"])

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        return _dequantize_codes(raw, self._out_lut, self.output_quant)

    def features(self) -> np.ndarray | None:
        """The pooled features of the last invoke (1, D) float32, de-quantised; None for a probs-only model."""
        return self._read(self._feat, self._feat_lut)

    def features_max(self) -> np.ndarray | None:
        """The feature map's per-channel maxima of the last invoke (1, D) float32; None for models converted
        before that output (train/features.py)."""
        return self._read(self._max, self._max_lut)

    def _read(self, detail: dict | None, table: np.ndarray | None) -> np.ndarray | None:
        if detail is None:
            return None
        return _dequantize_codes(self.interpreter.get_tensor(detail["index"]), table, detail["quantization"])

    def predict(self, batch_u8: np.ndarray) -> np.ndarray:
        return np.concatenate([self.postprocess(self.invoke_raw(self.prepare(im))) for im in batch_u8])


class OnnxEngine(_ScoreOutputs):
    """ONNX Runtime on CPU (an optional dependency: only the `onnx` variant needs it)."""

    format = "onnx"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("the onnx variant needs onnxruntime: `pip install onnxruntime`") from e
        self.path = Path(path)
        self.threads = threads or default_threads()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self._in = self.session.get_inputs()[0].name
        names = [o.name for o in self.session.get_outputs()]
        self._max = next((i for i, n in enumerate(names) if MAX_OUTPUT in n), None)
        self._feat = next((i for i, n in enumerate(names) if FEATURES_OUTPUT in n and i != self._max), None) \
            if len(names) > 1 else None
        self._probs = next(i for i in range(len(names)) if i not in (self._feat, self._max))
        self._last: list = []
        self.runtime = f"onnxruntime {ort.__version__}"
        self.input_dtype = np.dtype(np.float32)

    def prepare(self, image_u8: np.ndarray) -> np.ndarray:
        return image_u8[None].astype(np.float32)

    def invoke_raw(self, prepared: np.ndarray) -> np.ndarray:
        self._last = self.session.run(None, {self._in: prepared})
        return self._last[self._probs]

    def features(self) -> np.ndarray | None:
        return None if self._feat is None else np.asarray(self._last[self._feat], np.float32)

    def features_max(self) -> np.ndarray | None:
        return None if self._max is None else np.asarray(self._last[self._max], np.float32)

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        return raw.astype(np.float32)

    def predict(self, batch_u8: np.ndarray) -> np.ndarray:
        return self.postprocess(self.invoke_raw(batch_u8.astype(np.float32)))


# Deployable formats -> engine. The keras variant needs TensorFlow and lives in trashcam.train (KerasEngine).
ENGINES: dict[str, Callable[..., Any]] = {"tflite": TFLiteEngine, "onnx": OnnxEngine}


def variant_format(bundle: Bundle, variant: str) -> str:
    info = bundle.variants.get(variant)
    if info is None:
        bundle.variant_path(variant)  # raises a clear BundleError listing what exists
    return info.get("format") or Path(info["file"]).suffix.lstrip(".")


def open_engine(bundle: Bundle, variant: str, threads: int | None = None):
    fmt = variant_format(bundle, variant)
    if fmt not in ENGINES:
        raise BundleError(f"variant {variant!r} ({fmt}) cannot run on the edge runtime; "
                          f"use one of: {', '.join(v for v in bundle.variants if variant_format(bundle, v) in ENGINES)}")
    keep_frame_memory()  # the engine will run frame after frame: reuse their buffers (see images.py)
    return ENGINES[fmt](bundle.variant_path(variant), threads)
