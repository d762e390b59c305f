"""Open any variant of a bundle behind one engine interface, and measure one (variant, threads) pair.

The deployable formats come from `edge.interpreters.ENGINES`; the `keras` float model needs TensorFlow and comes
from `trashcam.train.keras_engine`, imported only when that variant is asked for, so edge-bench runs on a
device that has nothing but LiteRT.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from trashcam.edge.bundle import Bundle
from trashcam.edge import resize
from trashcam.edge.images import keep_frame_memory, load_for_model, open_image
from trashcam.edge.interpreters import open_engine, variant_format
from trashcam.edge.runtime import bundle_temperature

from .latency import per_frame, ratio_interval, summarize, time_interleaved, time_streamed


class VariantUnavailable(RuntimeError):
    """A variant this machine cannot run (its runtime is not installed): skipped with a note, not fatal."""


_TFLITE_DIST = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime",
                "tensorflow.lite": "tensorflow"}


def _dist_version(dist: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def import_runtime(fmt: str) -> str:
    """Import the runtime a format needs (so load time excludes library import); returns its name + version."""
    try:
        if fmt == "tflite":
            from trashcam.edge.interpreters import load_tflite_interpreter_class
            name = load_tflite_interpreter_class()[1]
            return f"{name} {_dist_version(_TFLITE_DIST.get(name, name))}"
        if fmt == "onnx":
            import onnxruntime
            return f"onnxruntime {onnxruntime.__version__}"
        if fmt == "keras":
            import keras
            import tensorflow  # noqa: F401
            from trashcam.train.keras_engine import KerasEngine  # noqa: F401
            return f"keras {keras.__version__}"
    except ImportError as e:
        need = {"tflite": "ai-edge-litert", "onnx": "onnxruntime", "keras": "tensorflow + keras"}[fmt]
        raise VariantUnavailable(f"{fmt} needs {need}, which is not installed here ({e})") from e
    raise VariantUnavailable(f"no benchmark engine for format {fmt!r}")


def open_bench_engine(bundle: Bundle, variant: str, threads: int | None):
    fmt = variant_format(bundle, variant)
    if fmt == "keras":
        import_runtime(fmt)
        from trashcam.train.keras_engine import KerasEngine
        return KerasEngine(bundle.variant_path(variant), threads)
    import_runtime(fmt)
    return open_engine(bundle, variant, threads)


def measure_variant(bundle_dir: str | Path, variant: str, threads: int, paths: Sequence[str], runs: int,
                    warmup: int, on_loaded=None, on_timed=None, baseline: str | None = None) -> dict:
    """Load time, first-invoke time, invoke-only and end-to-end latency of one variant at one thread count.

    `on_loaded()` is called after the runtime import and before the model load (memory.py reads the baseline
    RSS there), `on_timed()` after the single-engine timings, before the streamed one loads more engines
    (memory.py reads the variant's peak RSS there). The invoke-only input is the first image file, decoded
    once. Invoke-only, e2e from files and e2e from decoded frames are timed interleaved
    (latency.time_interleaved), with the per-process setup that edge-run has (keep_frame_memory) and the
    bundle's calibrated temperature, and with `baseline` (another bundle's directory) that bundle's same variant's
    invoke, on its own first test image. Then the files once more as
    edge-run streams a folder (latency.time_streamed: one single-threaded interpreter per thread, or one
    interpreter with the files read ahead in a thread): time per frame, pipelined.
    """
    bundle = Bundle.load(bundle_dir, verify=False)
    fmt = variant_format(bundle, variant)
    runtime = import_runtime(fmt)
    keep_frame_memory()  # as open_engine does for edge-run; the keras engine does not go through open_engine
    pre = bundle.preprocessing
    image = load_for_model(paths[0], pre)
    frames = [np.asarray(open_image(p)) for p in paths]  # full-size decoded frames, as from a camera
    if on_loaded:
        on_loaded()
    t0 = time.perf_counter()
    engine = open_bench_engine(bundle, variant, threads)
    load_ms = (time.perf_counter() - t0) * 1e3
    x = engine.prepare(image)
    t0 = time.perf_counter()
    probs = engine.postprocess(engine.invoke_raw(x))
    first_ms = (time.perf_counter() - t0) * 1e3
    if not np.all(np.isfinite(probs)):
        raise RuntimeError(f"{variant} produced non-finite outputs")
    temperature = bundle_temperature(bundle, variant)
    from .score_cost import cost_summary, quality, score_rule, timed_calls
    rule = score_rule(bundle, variant, engine)
    ms = time_interleaved({"invoke": lambda: engine.invoke_raw(x),
                           **_baseline_call(baseline, variant, threads, paths),
                           "e2e": per_frame(engine, paths, pre, temperature),
                           "frame": per_frame(engine, frames, pre, temperature),
                           **timed_calls(rule, engine, image, temperature)}, runs, warmup)
    uncertainty = quality(bundle, variant, rule[0])
    if uncertainty is not None:
        uncertainty["cost"] = cost_summary(ms, summarize)
    if on_timed:
        on_timed()
    invoke = summarize(ms["invoke"])
    base = {}
    if baseline:
        b = summarize(ms["baseline_invoke"])
        base = {"baseline": {"bundle": str(Path(baseline).resolve()), "latency_ms": b,
                             "invoke_ratio_p50": round(invoke["p50"] / b["p50"], 3),
                             "invoke_ratio_p50_ci95": ratio_interval(ms["baseline_invoke"], ms["invoke"])}}
    return {
        "runtime": runtime,
        "load_ms": round(load_ms, 3),
        "first_invoke_ms": round(first_ms, 3),
        "latency_ms": invoke,
        "e2e_latency_ms": summarize(ms["e2e"]),
        "frame_latency_ms": summarize(ms["frame"]),
        "frame_size": [int(d) for d in np.median([f.shape[:2] for f in frames], axis=0)],  # (h, w) of the frames
        "resize": resize_info(pre.resize),
        "temperature": temperature,
        "uncertainty": uncertainty,
        **_pipelined(engine, paths, pre, temperature, runs, warmup,
                     make_engine=(lambda t: open_engine(bundle, variant, t)) if fmt != "keras" else None),
        **base,
    }


def _baseline_call(baseline: str | None, variant: str, threads: int, paths: Sequence[str]) -> dict:
    """{"baseline_invoke": one invoke of `baseline`'s `variant`} to time beside this bundle's, or {}."""
    if not baseline:
        return {}
    other = Bundle.load(baseline, verify=False)  # run_benchmark checked that it has `variant`
    engine = open_bench_engine(other, variant, threads)
    x = engine.prepare(load_for_model(paths[0], other.preprocessing))
    return {"baseline_invoke": lambda: engine.invoke_raw(x)}


def resize_info(method: str) -> str:
    """The bundle's resize and what computes it here: "linear" runs at OpenCV's speed only where cv2 imports."""
    return f"{method} ({resize.backend() if method == 'linear' else 'pillow'})"


def _pipelined(engine, paths, pre, temperature, runs, warmup, make_engine) -> dict:
    """The streamed per-frame time; its ratio to invoke-only is mean / p50: with several streams, frames finish
    in bursts, so only the mean is time per frame."""
    per_frame_ms, invoke_ms, streams = time_streamed(engine, paths, pre, temperature, runs, warmup,
                                                     make_engine=make_engine)
    inv = float(np.median(invoke_ms))
    return {"pipelined_latency_ms": summarize(per_frame_ms), "pipelined_streams": streams,
            "pipelined_over_invoke": round(float(np.mean(per_frame_ms)) / inv, 3) if inv > 0 else None}
