"""Forward passes through frozen parts of the network with LiteRT (XNNPACK) instead of Keras, on a CPU.

The `cached` mode spends a third of its time running the frozen trunk over every augmented view. TensorFlow's
CPU kernels are slow for EfficientNet's depthwise convolutions; the same float32 graph as a TFLite model runs
4.4x faster (Lite0 trunk to block5a at 288 px, 2 cores: 206 img/s against 47). Nothing is quantised: outputs
match Keras to float32 rounding, which is checked on the first batch; any failure falls back to Keras.

Only for weights that do not change while the predictor is used (a trunk before stage 2 moves it, stage 1's
feature extractor, the trained model's test evaluation): the graph is converted once, with the weights as they
are then.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from trashcam.edge.machine import usable_cores

from .config import TrainConfig

log = logging.getLogger(__name__)

# relative to the largest |output|: float32 reorderings differ by ~1e-6; a wrong graph differs by O(1)
MATCH_TOLERANCE = 1e-3


class TFLitePredictor:
    """A converted Keras model with Keras' `predict(x, batch_size=, verbose=)` signature."""

    def __init__(self, tflite_bytes: bytes, threads: int, batch: int):
        from trashcam.edge.interpreters import load_tflite_interpreter_class

        Interpreter, self.runtime = load_tflite_interpreter_class()
        self.interpreter = Interpreter(model_content=tflite_bytes, num_threads=threads)
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        self.batch = batch
        self.interpreter.resize_tensor_input(self._in["index"], [batch, *self._in["shape"][1:]])
        self.interpreter.allocate_tensors()

    def predict(self, x: np.ndarray, batch_size: int = 0, verbose: int = 0) -> np.ndarray:
        out = []
        for i in range(0, len(x), self.batch):
            xb = np.asarray(x[i:i + self.batch], np.float32)
            n = len(xb)
            if n < self.batch:  # pad the last batch: one tensor shape, no reallocation
                xb = np.concatenate([xb, np.zeros((self.batch - n, *xb.shape[1:]), np.float32)])
            self.interpreter.set_tensor(self._in["index"], xb)
            self.interpreter.invoke()
            out.append(self.interpreter.get_tensor(self._out["index"])[:n].copy())
        return np.concatenate(out) if out else np.zeros((0, *self._out["shape"][1:]), np.float32)


# "auto" converts only when it pays: a conversion costs ~2.5 s, LiteRT saves ~16 ms an image (Lite0 trunk, 288 px)
AUTO_MIN_IMAGES = 1000


def use_tflite(cfg: TrainConfig, compute: dict, n_images: int = AUTO_MIN_IMAGES) -> bool:
    """`cfg.frozen_inference`: "tflite", "keras", or "auto" (LiteRT on a CPU-only single-process run with at
    least AUTO_MIN_IMAGES forward passes to do; on a GPU Keras is the fast one)."""
    if cfg.frozen_inference != "auto":
        return cfg.frozen_inference == "tflite"
    return (compute.get("gpus", 0) == 0 and compute.get("replicas", 1) == 1 and cfg.strategy != "multiworker"
            and n_images >= AUTO_MIN_IMAGES)


def frozen_predictor(model, cfg: TrainConfig, compute: dict, probe: np.ndarray | None = None, n_images: int = 0,
                     batch: int = 16):
    """`model` itself, or a TFLitePredictor for it that matched Keras on `probe` (a few inputs); `n_images`: how
    many forward passes it will do. Records which one in `compute["frozen_inference"][model.name]` (saved in
    metrics.json)."""
    record = compute.setdefault("frozen_inference", {})
    if not use_tflite(cfg, compute, n_images):
        record[model.name] = "keras"
        return model
    try:
        import contextlib
        import io

        import tensorflow as tf

        with contextlib.redirect_stdout(io.StringIO()):  # the export prints every captured variable
            tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
        fast = TFLitePredictor(tflite, cfg.threads or usable_cores(), batch)
        if probe is not None and len(probe):
            want = np.asarray(model.predict(probe.astype(np.float32), verbose=0))
            got = fast.predict(probe)
            err = float(np.max(np.abs(want - got)) / max(1e-12, float(np.max(np.abs(want)))))
            if not math.isfinite(err) or err > MATCH_TOLERANCE:
                raise ValueError(f"LiteRT output differs from Keras by {err:.2e} (relative)")
        record[model.name] = f"tflite ({fast.runtime})"
        return fast
    except Exception as e:  # noqa: BLE001 - any converter/runtime failure: Keras still works, only slower
        log.warning("frozen layers run in Keras (LiteRT unavailable: %s)", e)
        record[model.name] = f"keras (LiteRT failed: {e})"[:200]
        return model

