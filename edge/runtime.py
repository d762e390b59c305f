"""TensorFlow-free inference: interpreter wrappers for each deployable format, and the `Classifier` API.

Engines take a batch of uint8 RGB images (N, H, W, 3) already at the model's input size and return float32
probabilities (N, C). They own quantisation: an INT8 model's uint8/int8 input is made with the scale and
zero-point the model itself declares, and its output is de-quantised, so callers never see model dtypes.
"""
from __future__ import annotations

import importlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .bundle import Bundle, BundleError, Preprocessing
from .images import ImageLike, keep_frame_memory, load_for_model
from .resize import resize_linear
from .ood import OodScore, load_for_variant
from .temperature import apply_temperature


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


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: a container or `taskset` may allow fewer)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _quantize(x: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    if scale == 0:  # not quantised: a float or raw integer input
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


FEATURES_OUTPUT = "features"  # the name train/features.py gives the pooled-feature output


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


def probs_and_features(interpreter) -> tuple[dict, dict | None]:
    """(probabilities output, features output or None) of a TFLite model.

    A converted model does not keep Keras' output order (the flatbuffer listed [features, probabilities] in a
    test), so the order comes from the signature (output_0 = probabilities, output_1 = features); without one,
    from the tensor names' ":k" suffix, else the narrower output is the probabilities."""
    outs = interpreter.get_output_details()
    if len(outs) == 1:
        return outs[0], None
    by_index = {d["index"]: d for d in outs}
    try:
        sig = next(iter(interpreter._get_full_signature_list().values()))["outputs"]  # noqa: SLF001
        ordered = [by_index[sig[k]] for k in sorted(sig, key=lambda k: int(k.rsplit("_", 1)[-1]))]
    except (AttributeError, StopIteration, KeyError, ValueError):
        def key(d):
            tail = str(d["name"]).rsplit(":", 1)[-1]
            return (0, int(tail)) if tail.isdigit() else (1, int(d["shape"][-1]))
        ordered = sorted(outs, key=key)
    return ordered[0], ordered[1]


class TFLiteEngine:
    """One LiteRT interpreter, batch 1, built once. `invoke_raw` is what the latency benchmark times."""

    format = "tflite"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        Interpreter, self.runtime = load_tflite_interpreter_class()
        self.path = Path(path)
        self.threads = threads or default_threads()
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
        self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]
        self._out, self._feat = probs_and_features(self.interpreter)
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

    @property
    def has_features(self) -> bool:
        return self._feat is not None

    def features(self) -> np.ndarray | None:
        """The pooled features of the last invoke (1, D) float32, de-quantised; None for a probs-only model."""
        if self._feat is None:
            return None
        return _dequantize_codes(self.interpreter.get_tensor(self._feat["index"]), self._feat_lut,
                                 self._feat["quantization"])

    def predict(self, batch_u8: np.ndarray) -> np.ndarray:
        return np.concatenate([self.postprocess(self.invoke_raw(self.prepare(im))) for im in batch_u8])


class OnnxEngine:
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
        self._feat = next((i for i, n in enumerate(names) if FEATURES_OUTPUT in n), None) if len(names) > 1 else None
        self._probs = next(i for i in range(len(names)) if i != self._feat)
        self._last: list = []
        self.runtime = f"onnxruntime {ort.__version__}"
        self.input_dtype = np.dtype(np.float32)

    def prepare(self, image_u8: np.ndarray) -> np.ndarray:
        return image_u8[None].astype(np.float32)

    def invoke_raw(self, prepared: np.ndarray) -> np.ndarray:
        self._last = self.session.run(None, {self._in: prepared})
        return self._last[self._probs]

    @property
    def has_features(self) -> bool:
        return self._feat is not None

    def features(self) -> np.ndarray | None:
        return None if self._feat is None else np.asarray(self._last[self._feat], np.float32)

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


def calibrated_probs(engine, image_u8: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities for one preprocessed (H, W, 3) uint8 image: the per-frame path of `Classifier`,
    also what edge-bench times (prepare -> invoke -> de-quantise -> temperature)."""
    return apply_temperature(engine.postprocess(engine.invoke_raw(engine.prepare(image_u8)))[0], temperature)


def classify_timed(engine, pre: Preprocessing, temperature: float, image: ImageLike,
                   model_input: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """(calibrated probs, invoke ms, ms from the frame to the probabilities) for one RGB frame: calibrated_probs'
    steps after the resize, with the invoke timed apart. `model_input` is the same frame already at the model's
    size when a read-ahead source made it. The per-frame path of edge-run, serial or streamed."""
    t0 = time.perf_counter()
    if model_input is None and _resize_into_input(engine, image, pre):
        t1 = time.perf_counter()
        raw = engine.invoke_filled()
    else:
        prepared = engine.prepare(model_input if model_input is not None else load_for_model(image, pre))
        t1 = time.perf_counter()
        raw = engine.invoke_raw(prepared)
    t2 = time.perf_counter()
    probs = apply_temperature(engine.postprocess(raw)[0], temperature)
    return probs, (t2 - t1) * 1e3, (time.perf_counter() - t0) * 1e3


def _resize_into_input(engine, image, pre: Preprocessing) -> bool:
    """Resize a decoded RGB frame straight into `engine`'s input tensor when the bundle's resize is "linear" and
    the model takes uint8 pixels as they are; False (nothing written) otherwise: the caller takes load_for_model."""
    if not (pre.resize == "linear" and isinstance(image, np.ndarray) and image.dtype == np.uint8
            and image.ndim == 3 and image.shape[2] == 3 and image.size and hasattr(engine, "input_array")):
        return False
    buf = engine.input_array()
    if buf is None:
        return False
    failed = None
    try:
        if image.shape[:2] == buf.shape[:2]:
            np.copyto(buf, image)
        else:
            resize_linear(image, buf.shape[:2], out=buf)
    except Exception as e:
        # the traceback's frames hold the view (as arguments), and a live view makes the interpreter refuse
        # every later invoke: raise the error without them
        failed = e.with_traceback(None)
    del buf
    if failed is not None:
        raise failed
    return True


def bundle_temperature(bundle: Bundle, variant: str) -> float:
    """The calibrated temperature for `variant` (its own, else the bundle's, else 1.0: uncalibrated)."""
    cal = bundle.calibration
    return float(cal.get("temperature_by_variant", {}).get(variant) or cal.get("temperature") or 1.0)


def ood_for_engine(bundle: Bundle, variant: str, engine) -> OodScore | None:
    """The variant's fitted uncertainty score if this engine can feed it (a feature score needs the features
    output), else None: the caller falls back to max-probability."""
    ood = load_for_variant(bundle, variant)
    if ood is not None and ood.needs_features and not getattr(engine, "has_features", False):
        return None
    return ood


# Preferred order when nothing measured says otherwise: smallest first among those that passed the check.
PREFERENCE = ("tflite-int8", "tflite-fp16", "tflite-fp32", "onnx")


def passed_variants(bundle: Bundle) -> list[str]:
    return [v for v in PREFERENCE if v in bundle.variants
            and bundle.variants[v].get("check", {}).get("status", "PASS") == "PASS"
            and variant_format(bundle, v) in ENGINES]


_PROBED: dict[tuple, dict[str, float]] = {}


def probe_variants(bundle: Bundle, variants: list[str], threads: int | None = None,
                   budget_s: float = 0.6, max_runs: int = 15) -> dict[str, float]:
    """Median invoke() ms of each variant on this device: a few runs each within `budget_s`, after a warm-up.

    Cached per process (bundle, files, threads) so building several Classifiers does not probe again.
    A variant whose file does not match its recorded size and sha256 is left out before it is loaded (a
    corrupted or swapped model file never reaches the interpreter); so is one that fails to load.
    """
    key = (str(bundle.path.resolve()), threads or default_threads(),
           tuple((v, bundle.metadata.get("files", {}).get(bundle.variants[v]["file"], {}).get("sha256"))
                 for v in variants))
    if key in _PROBED:
        return _PROBED[key]
    h, w = bundle.preprocessing.input_size
    # A gradient rather than a blank frame, so activations (and timings) resemble a real image more.
    img = np.broadcast_to(np.linspace(0, 255, w, dtype=np.float32)[None, :, None], (h, w, 3)).astype(np.uint8)
    times: dict[str, float] = {}
    for v in variants:
        try:
            bundle.verify([bundle.variants[v]["file"]])
        except (BundleError, KeyError, OSError):
            continue
        try:
            eng = open_engine(bundle, v, threads)
            x = eng.prepare(img)
            eng.invoke_raw(x)
        except Exception:  # noqa: BLE001 - an unloadable variant is simply not a candidate
            continue
        runs, t_end = [], time.perf_counter() + budget_s
        while len(runs) < max_runs and (len(runs) < 3 or time.perf_counter() < t_end):
            t0 = time.perf_counter()
            eng.invoke_raw(x)
            runs.append((time.perf_counter() - t0) * 1e3)
        times[v] = float(np.median(runs))
        del eng
    _PROBED[key] = times
    return times


def choose_variant(bundle: Bundle, requested: str = "auto", threads: int | None = None,
                   probe: bool = True) -> str:
    """`auto`: the fastest passing variant recorded by `edge-bench` for this thread count (the bundle's
    metadata["bench"]["p50_ms"][str(threads)][variant]); without a bench result, a short on-device probe of
    the passing variants (`probe=False`: the preference order instead)."""
    if requested != "auto":
        return requested
    ok = passed_variants(bundle)
    if not ok:
        raise BundleError(f"bundle {bundle.path} has no deployable variant that passed its accuracy check; "
                          f"run `edge-convert {bundle.path}`")
    bench = bundle.metadata.get("bench", {}).get("p50_ms", {})
    timed = {v: ms for v, ms in bench.get(str(threads or default_threads()), {}).items() if v in ok}
    if not timed and probe and len(ok) > 1:
        timed = probe_variants(bundle, ok, threads)
    return min(timed, key=timed.get) if timed else ok[0]


@dataclass
class Prediction:
    label: str
    index: int
    confidence: float
    probs: np.ndarray = field(repr=False)
    latency_ms: float = 0.0
    uncertain: bool = False
    score: float = float("nan")  # the bundle's uncertainty score (edge/ood.py), higher = more foreign

    def to_dict(self, labels: list[str] | None = None) -> dict[str, Any]:
        d = {"label": self.label, "index": self.index, "confidence": round(self.confidence, 4),
             "latency_ms": round(self.latency_ms, 3), "uncertain": self.uncertain}
        if self.score == self.score:  # not NaN: JSON has no NaN
            d["score"] = round(self.score, 4)
        if labels:
            d["probs"] = {k: round(float(p), 4) for k, p in zip(labels, self.probs)}
        return d


class Classifier:
    """`Classifier(bundle, variant, threads).classify(image) -> Prediction`.

    Preprocessing comes from the bundle's metadata, the temperature and the "uncertain" rule from its
    calibration: the variant's fitted uncertainty score (edge/ood.py) when the bundle has one and the model
    outputs its features, else max-probability below `threshold` (also when `min_confidence` is given).
    `latency_ms` covers decode + resize + invoke + postprocess (+ the score) for that image.
    """

    def __init__(self, bundle: Bundle | str | os.PathLike, variant: str = "auto", threads: int | None = None,
                 min_confidence: float | None = None, temperature: float | None = None):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle, verify=False)
        self.variant = choose_variant(self.bundle, variant, threads)
        self.bundle.variant_path(self.variant)  # clear error naming the variants the bundle has
        self.bundle.verify([self.bundle.variants[self.variant]["file"]])
        self.engine = open_engine(self.bundle, self.variant, threads)
        self.labels = self.bundle.labels
        self.pre = self.bundle.preprocessing
        self.temperature = float(temperature or bundle_temperature(self.bundle, self.variant))
        cal = self.bundle.calibration
        self.min_confidence = float(min_confidence if min_confidence is not None else cal.get("threshold", 0.0))
        self.ood = None if min_confidence is not None else ood_for_engine(self.bundle, self.variant, self.engine)

    def probs(self, image_u8: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for one preprocessed (H, W, 3) uint8 image."""
        return calibrated_probs(self.engine, image_u8, self.temperature)

    def frame_score(self, engine, probs: np.ndarray) -> tuple[float, bool]:
        """(uncertainty score, uncertain?) of the frame `engine` (this classifier's or a stream's) just ran."""
        if self.ood is not None:
            score = self.ood.frame_score(probs, engine.features())
            return score, score > self.ood.threshold
        conf = float(np.max(probs))
        return 1.0 - conf, conf < self.min_confidence

    def classify(self, image: ImageLike) -> Prediction:
        t0 = time.perf_counter()
        p = classify_timed(self.engine, self.pre, self.temperature, image)[0]
        i = int(np.argmax(p))
        conf = float(p[i])
        score, uncertain = self.frame_score(self.engine, p)
        ms = (time.perf_counter() - t0) * 1e3
        return Prediction(self.labels[i], i, conf, p, ms, uncertain=uncertain, score=score)
