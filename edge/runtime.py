"""TensorFlow-free inference: one frame through an engine (edge/interpreters.py), the choice of variant on this
device, and the `Classifier` API.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bundle import Bundle, BundleError, Preprocessing
from .images import ImageLike, load_for_model
# The engines lived here before edge/interpreters.py; their names stay importable from trashcam.edge.runtime.
from .interpreters import (ENGINES, OnnxEngine, TFLiteEngine, load_tflite_interpreter_class,  # noqa: F401
                           open_engine, variant_format)
from .machine import default_threads, usable_cores  # noqa: F401
from .ood import OodScore, load_for_variant
from .resize import resize_linear
from .temperature import apply_temperature


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


def uncertainty_rule(bundle: Bundle, variant: str, engine, min_confidence: float | None = None
                     ) -> tuple[OodScore | None, float]:
    """(fitted score or None, max-probability threshold): what `flag_frame` reads. The variant's fitted score
    when the engine can feed it (a feature score needs the features output); else, or when `min_confidence` is
    given, max-probability under that or the bundle's calibrated threshold."""
    if min_confidence is not None:
        return None, float(min_confidence)
    ood = load_for_variant(bundle, variant)
    if ood is not None and not ood.runs_on(engine):
        ood = None
    return ood, float(bundle.calibration.get("threshold", 0.0))


def flag_frame(ood: OodScore | None, min_confidence: float, engine, probs: np.ndarray) -> tuple[float, bool]:
    """(uncertainty score, uncertain?) of the frame `engine` just ran: the one "uncertain" rule, shared by
    `Classifier`, edge-run's streams and edge-bench's measurements. The features output is read (and
    de-quantised) only for a score that uses it."""
    if ood is not None:
        score = ood.frame_score(probs, ood.frame_features(engine))
        return score, score > ood.threshold
    conf = float(np.max(probs))
    return 1.0 - conf, conf < min_confidence


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
        self.ood, self.min_confidence = uncertainty_rule(self.bundle, self.variant, self.engine, min_confidence)

    def probs(self, image_u8: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for one preprocessed (H, W, 3) uint8 image."""
        return calibrated_probs(self.engine, image_u8, self.temperature)

    def frame_score(self, engine, probs: np.ndarray) -> tuple[float, bool]:
        """(uncertainty score, uncertain?) of the frame `engine` (this classifier's or a stream's) just ran."""
        return flag_frame(self.ood, self.min_confidence, engine, probs)

    def classify(self, image: ImageLike) -> Prediction:
        t0 = time.perf_counter()
        p = classify_timed(self.engine, self.pre, self.temperature, image)[0]
        i = int(np.argmax(p))
        conf = float(p[i])
        score, uncertain = self.frame_score(self.engine, p)
        ms = (time.perf_counter() - t0) * 1e3
        return Prediction(self.labels[i], i, conf, p, ms, uncertain=uncertain, score=score)
