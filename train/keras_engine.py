"""The Keras float model behind the same engine interface as the edge runtimes.

`edge-convert` compares every converted variant with this engine on the same images, and `edge-bench` /
`edge-calibrate` use it as the float reference, so the reference goes through exactly the code path the variants
do: uint8 NHWC batch in, float32 probabilities out. TensorFlow/Keras are imported when an engine is built, never
at module import.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from trashcam.edge.bundle import Bundle, BundleError

KERAS_VARIANT = "keras"


def _register_custom_objects() -> None:
    # Backbones may define custom layers registered with keras.saving; importing the registry makes them
    # loadable. A bundle made by a plain Keras model needs none of this, so a missing registry is fine.
    try:
        import trashcam.train.backbones  # noqa: F401
    except ImportError:
        pass


def as_float32(model):
    """The same model with every layer computing in float32 (weights shared by value).

    A model trained on GPU is saved with `mixed_float16` layers; TFLite cannot convert float16 compute
    (Conv2D/Mul/... "neither a custom op nor a flex op"), and the edge runs float32 anyway. Models that are
    already float32 are returned unchanged.
    """
    import keras

    def policies(m):
        for layer in m.layers:
            yield layer.dtype_policy.name
            if isinstance(layer, keras.Model):
                yield from policies(layer)

    if all(p == "float32" for p in policies(model)):
        return model

    def to_f32(layer):
        if isinstance(layer, keras.Model):
            return as_float32(layer)
        cfg = layer.get_config()
        cfg["dtype"] = "float32"
        return layer.__class__.from_config(cfg)

    clone = keras.models.clone_model(model, clone_function=to_f32)
    clone.set_weights(model.get_weights())
    return clone


def load_keras_model(bundle: Bundle | str | os.PathLike, variant: str = KERAS_VARIANT, float32: bool = True):
    """The bundle's Keras model (checksum verified), without optimizer state; float32 compute unless asked."""
    import keras

    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle, verify=False)
    path = bundle.variant_path(variant)
    bundle.verify([bundle.variants[variant]["file"]])
    _register_custom_objects()
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:  # keras raises many types for a damaged or foreign file
        raise BundleError(f"cannot load the Keras model {path}: {e}") from e
    return as_float32(model) if float32 else model


class KerasEngine:
    """`KerasEngine(path_or_model, threads)`: prepare / invoke_raw / postprocess / predict like TFLiteEngine."""

    format = "keras"

    def __init__(self, path, threads: int | None = None, batch_size: int = 32):
        import keras

        if threads:
            # Must happen before TF runs its first op; harmless (and ignored) if it already has.
            try:
                import tensorflow as tf
                tf.config.threading.set_intra_op_parallelism_threads(int(threads))
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except (ImportError, RuntimeError):
                pass
        if isinstance(path, (str, os.PathLike)):
            _register_custom_objects()
            self.path = Path(path)
            self.model = as_float32(keras.models.load_model(self.path, compile=False))
        else:  # an already-loaded keras.Model: lets convert load the model once for all variants
            self.path = None
            self.model = path
        self.threads = threads
        self.batch_size = int(batch_size)
        self.runtime = f"keras {keras.__version__}"
        self.input_dtype = np.dtype(np.float32)
        self.input_shape = tuple(1 if d is None else int(d) for d in self.model.inputs[0].shape)
        import tensorflow as tf
        # A traced graph, not eager calls: eager EfficientNet at batch 1 measured ~15x slower than TFLite fp32,
        # which made the keras row of edge-bench meaningless. reduce_retracing: batch 1 and batch N share a trace.
        self._call = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    @classmethod
    def from_bundle(cls, bundle: Bundle, threads: int | None = None, batch_size: int = 32) -> "KerasEngine":
        return cls(load_keras_model(bundle), threads, batch_size)

    def prepare(self, image_u8: np.ndarray) -> np.ndarray:
        return image_u8[None].astype(np.float32)

    def invoke_raw(self, prepared: np.ndarray) -> np.ndarray:
        # Calling the traced model (not model.predict) avoids building a tf.data pipeline per call: far faster
        # at batch 1, which is what the latency benchmark times.
        return self._call(prepared).numpy()

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        return np.asarray(raw, dtype=np.float32)

    def predict(self, batch_u8: np.ndarray) -> np.ndarray:
        n = len(batch_u8)
        if n == 0:
            return np.zeros((0, int(self.model.outputs[0].shape[-1])), np.float32)
        outs = [self.postprocess(self.invoke_raw(batch_u8[i:i + self.batch_size].astype(np.float32)))
                for i in range(0, n, self.batch_size)]
        return np.concatenate(outs)
