"""Shared fixtures: a tiny synthetic dataset and tiny bundles built from it, so tests run in seconds.

The synthetic classes differ by dominant colour and stripe direction, which a 3-layer CNN learns to ~100 %,
so tests can assert real accuracy (not just that files exist).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
SHARED = REPO.parent / "shared" / "data" / "trashnet5"
CLASSES = ("red", "green", "blue")
TINY_SIZE = (32, 32)


def synth_image(cls: int, rng: np.random.Generator, size=(48, 40)) -> np.ndarray:
    h, w = size
    img = rng.integers(0, 60, (h, w, 3)).astype(np.float32)
    img[..., cls] += 150 + rng.integers(0, 40)
    if cls == 1:
        img[:, ::6] *= 0.5  # vertical stripes
    elif cls == 2:
        img[::6] *= 0.5  # horizontal stripes
    return np.clip(img, 0, 255).astype(np.uint8)


def write_synthetic_dataset(root: Path, per_class: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext = ".png" if i % 4 == 0 else ".jpg"
            Image.fromarray(synth_image(c, rng)).save(d / f"{name}_{i:03d}{ext}", quality=95)
    return root


def flat_image_folder(dest: Path, dataset: Path, per_class: int) -> Path:
    """The first `per_class` images of each class of `dataset`, copied into one folder as CLASS_NAME files."""
    for cls in sorted(os.listdir(dataset)):
        for f in sorted((dataset / cls).iterdir())[:per_class]:
            shutil.copy(f, dest / f"{cls}_{f.name}")
    return dest


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth") / "data")


def build_tiny_keras_bundle(out: Path, data: Path, epochs: int = 40):
    """A float Keras model in a real bundle (model.keras + split.json + metadata), ~5 s on 2 cores."""
    import keras

    from trashcam.edge.bundle import Bundle, Preprocessing
    from trashcam.edge.dataset import make_split
    from trashcam.edge.images import load_for_model

    keras.utils.set_random_seed(0)
    split = make_split(data, seed=1)
    pre = Preprocessing(input_size=TINY_SIZE)

    def arrays(name):
        x = np.stack([load_for_model(p, pre) for p in split.paths(name)]).astype(np.float32)
        return x, split.labels(name)

    xtr, ytr = arrays("train")
    inp = keras.Input((*TINY_SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outp = keras.layers.Dense(len(split.classes), activation="softmax", dtype="float32")(x)
    model = keras.Model(inp, outp)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(xtr, ytr, epochs=epochs, batch_size=16, verbose=0)

    bundle = Bundle.create(out, split.classes, pre, backbone="tiny-cnn")
    split.save(out / "split.json")
    bundle.add_file("split.json")
    bundle.metadata["split"] = {k: v for k, v in split.to_dict().items() if k != "files"}
    model.save(out / "model.keras")
    bundle.set_variant("keras", "model.keras", format="keras")
    bundle.save()
    return bundle


@pytest.fixture(scope="session")
def tiny_keras_bundle(tmp_path_factory, synthetic_dataset) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    build_tiny_keras_bundle(out, synthetic_dataset)
    return out


def add_plain_tflite(bundle_dir: Path) -> Path:
    """Add an unchecked tflite-fp32 variant straight from TensorFlow (for tests that only need *a* tflite)."""
    import keras
    import tensorflow as tf

    from trashcam.edge.bundle import Bundle

    b = Bundle.load(bundle_dir)
    model = keras.models.load_model(bundle_dir / "model.keras")
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    (bundle_dir / "model_fp32.tflite").write_bytes(conv.convert())
    b.set_variant("tflite-fp32", "model_fp32.tflite", format="tflite")
    b.save()
    return bundle_dir


@pytest.fixture(scope="session")
def tiny_tflite_bundle(tmp_path_factory, synthetic_dataset) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "tiny_tflite"
    build_tiny_keras_bundle(out, synthetic_dataset)
    return add_plain_tflite(out)


@pytest.fixture(scope="session")
def scored_bundle(tmp_path_factory, tiny_keras_bundle):
    """The tiny bundle converted (fp32 + int8, both with the features output) and calibrated."""
    from trashcam.calibration.config import CalibrationConfig
    from trashcam.calibration.pipeline import calibrate_bundle
    from trashcam.convert.config import ConvertConfig
    from trashcam.convert.pipeline import convert_bundle

    d = tmp_path_factory.mktemp("ood") / "b"
    shutil.copytree(tiny_keras_bundle, d)
    convert_bundle(d, ConvertConfig(variants=("tflite-fp32", "tflite-int8"), calib_size=30, check=False,
                                    threads=1))
    report = calibrate_bundle(d, CalibrationConfig(plots=False, threads=1))
    return d, report


def run_cli(*args: str, timeout: float = 600, check: bool = False, **kw) -> subprocess.CompletedProcess:
    """Run a console entry point's module in a fresh interpreter, as a user would from the shell."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def serving_url(proc: subprocess.Popen, timeout: float = 60) -> str:
    """The base URL an `edge-run --serve 0` child prints on stderr (`serving http://127.0.0.1:PORT/`)."""
    import re
    import time
    t_end = time.time() + timeout
    while time.time() < t_end:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, proc.stderr.read()
        m = re.search(r"serving (http://127\.0\.0\.1:\d+/)", line)
        if m:
            return m.group(1)
    raise AssertionError("no 'serving' line from edge-run")


def build_tiny_backbone(input_shape, weights=None):
    """A 3-block CNN named like EfficientNet's layers (stem_*, block1a_*, block2a_*) so recipe code can cut it."""
    import keras

    inp = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="rescaling")(inp)
    for name, ch in (("stem", 8), ("block1a", 16), ("block2a", 32)):
        x = keras.layers.Conv2D(ch, 3, strides=2, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        x = keras.layers.Activation("relu", name=f"{name}_activation")(x)
    return keras.Model(inp, x, name="tiny_backbone")


@pytest.fixture
def tiny_backbone(monkeypatch):
    """Make `--backbone tiny` resolve to build_tiny_backbone inside this test process."""
    from types import SimpleNamespace

    import trashcam.train.backbones as registry

    real_get = getattr(registry, "get", None)

    def get(name):
        if name == "tiny":
            return SimpleNamespace(name="tiny", build=build_tiny_backbone, input_size=32)
        return real_get(name)

    monkeypatch.setattr(registry, "get", get, raising=False)
    return "tiny"
