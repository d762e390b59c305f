"""The frozen layers' LiteRT fast path: same outputs as Keras, used only when asked or when it pays, and a
failure falls back to Keras instead of stopping the training."""
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from trashcam.train import frozen_inference as fi  # noqa: E402
from trashcam.train.config import resolve  # noqa: E402


def _model():
    import keras
    inp = keras.Input((32, 32, 3))
    x = keras.layers.DepthwiseConv2D(3, padding="same")(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="swish")(x)
    return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))


def test_tflite_matches_keras_on_every_batch_size():
    model = _model()
    x = np.random.default_rng(0).uniform(0, 255, (21, 32, 32, 3)).astype(np.float32)
    compute = {}
    fast = fi.frozen_predictor(model, resolve("quick", frozen_inference="tflite"), compute, x[:4], batch=8)
    assert isinstance(fast, fi.TFLitePredictor) and compute["frozen_inference"][model.name].startswith("tflite")
    got = fast.predict(x)  # 8 + 8 + 5: the last batch is padded
    want = model.predict(x, verbose=0)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_auto_uses_keras_where_conversion_does_not_pay():
    model, compute = _model(), {}
    cfg = resolve("quick")
    assert fi.frozen_predictor(model, cfg, compute, n_images=10) is model and compute["frozen_inference"] == {model.name: "keras"}
    assert fi.use_tflite(cfg, {"gpus": 0, "replicas": 1}, fi.AUTO_MIN_IMAGES)
    assert not fi.use_tflite(cfg, {"gpus": 1, "replicas": 1}, 10 ** 6)
    assert not fi.use_tflite(resolve("quick", frozen_inference="keras"), {}, 10 ** 6)


def test_a_mismatch_falls_back_to_keras(monkeypatch):
    model = _model()
    x = np.ones((4, 32, 32, 3), np.float32)
    monkeypatch.setattr(fi.TFLitePredictor, "predict", lambda self, xb, **kw: np.zeros((len(xb), 8), np.float32) + 7)
    compute = {}
    assert fi.frozen_predictor(model, resolve("quick", frozen_inference="tflite"), compute, x) is model
    assert compute["frozen_inference"][model.name].startswith("keras (LiteRT failed: LiteRT output differs")
