"""edge-run's parts: smoothing, the HTTP address rule, `--variant auto`, the slim bundle export, quantised output
arithmetic and read-ahead (the camera side is in test_camera.py)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, synth_image
from trashcam.edge.bundle import Bundle, BundleError
from trashcam.edge.runtime import Classifier, choose_variant
from trashcam.edge.smoothing import UNCERTAIN, Smoother


@pytest.fixture(scope="module")
def clf(tiny_tflite_bundle):
    return Classifier(tiny_tflite_bundle, "tflite-fp32", threads=1)


def test_smoother_majority_ema_stable_and_uncertain():
    labels = ["a", "b"]
    A, B, MID = np.array([0.9, 0.1]), np.array([0.2, 0.8]), np.array([0.55, 0.45])
    s = Smoother(labels, "majority", window=3, stable=2)
    shown = [s.update(p).label for p in (A, A, B, A, B, B, B)]
    # A stray B never shows; B is shown once it has the majority (frame 4) and held it 2 frames (frame 5).
    assert shown == [None, "a", "a", "a", "a", "b", "b"]
    s = Smoother(labels, "ema", window=3, stable=1, min_confidence=0.6)
    d = [s.update(p) for p in (A, MID, MID, MID)]
    assert d[0].label == "a" and d[-1].label == UNCERTAIN and d[-1].candidate_confidence < 0.6
    assert abs(d[1].candidate_confidence - (0.5 * 0.55 + 0.5 * 0.9)) < 1e-9  # alpha = 2 / (N + 1)
    with pytest.raises(ValueError):
        Smoother(labels, "median")




def test_parse_address_defaults_to_localhost():
    from trashcam.edge.server import parse_address
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address("0.0.0.0:81") == ("0.0.0.0", 81)
    with pytest.raises(ValueError):
        parse_address("host:99999")


def _two_variant_bundle(src, tmp_path) -> tuple:
    """A copy of `src` whose fp32 model is also registered as a passing tflite-fp16 variant."""
    d = tmp_path / "two"
    shutil.copytree(src, d)
    b = Bundle.load(d)
    shutil.copy(d / "model_fp32.tflite", d / "model_fp16.tflite")
    b.set_variant("tflite-fp16", "model_fp16.tflite", format="tflite", check={"status": "PASS"})
    b.variants["tflite-fp32"]["check"] = {"status": "PASS"}
    return d, b


def test_auto_variant_uses_bench_then_probe(tiny_tflite_bundle, tmp_path):
    d, b = _two_variant_bundle(tiny_tflite_bundle, tmp_path)
    assert choose_variant(b, "auto", threads=1, probe=False) == "tflite-fp16"  # preference order
    b.metadata["bench"] = {"p50_ms": {"1": {"tflite-fp32": 1.0, "tflite-fp16": 2.0}}}
    assert choose_variant(b, "auto", threads=1) == "tflite-fp32"  # the recorded bench wins
    del b.metadata["bench"]
    from trashcam.edge import runtime
    picked = choose_variant(b, "auto", threads=1)
    key = next(k for k in runtime._PROBED if k[0] == str(d.resolve()))
    times = runtime._PROBED[key]
    assert set(times) == {"tflite-fp16", "tflite-fp32"} and all(t > 0 for t in times.values())
    assert picked == min(times, key=times.get)
    b.variants["tflite-fp16"]["check"]["status"] = "FAIL"
    assert choose_variant(b, "auto", threads=1) == "tflite-fp32"


def test_edge_export_slim_bundle(tiny_tflite_bundle, tmp_path, synthetic_dataset, clf):
    dest = tmp_path / "slim"
    p = run_cli("-m", "trashcam.edge.export_cli", str(tiny_tflite_bundle), str(dest), "--variant", "tflite-fp32",
                check=True)
    assert "tflite-fp32 + metadata + labels" in p.stdout
    assert sorted(f.name for f in dest.iterdir()) == ["labels.txt", "metadata.json", "model_fp32.tflite"]
    slim = Bundle.load(dest)
    assert list(slim.variants) == ["tflite-fp32"] and slim.labels == clf.labels
    img = next((synthetic_dataset / "red").glob("*.jpg"))
    assert Classifier(dest, threads=1).classify(img).probs.tolist() == clf.classify(img).probs.tolist()
    again = run_cli("-m", "trashcam.edge.export_cli", str(tiny_tflite_bundle), str(dest), "--variant",
                    "tflite-fp32")
    assert again.returncode == 2 and "--force" in again.stderr  # nothing good overwritten by accident
    assert run_cli("-m", "trashcam.edge.export_cli", str(tiny_tflite_bundle), str(dest), "--variant",
                   "tflite-fp32", "--force").returncode == 0
    with pytest.raises(BundleError, match="has no variant"):
        from trashcam.edge.export import export_edge_bundle
        export_edge_bundle(tiny_tflite_bundle, tmp_path / "x", "tflite-int8")
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())



@pytest.fixture(scope="module")
def quantized_models(tiny_tflite_bundle, tmp_path_factory) -> dict[str, Path]:
    """The tiny model fully quantised with uint8 and with int8 input/output (~2 s each)."""
    import keras
    import tensorflow as tf

    model = keras.models.load_model(tiny_tflite_bundle / "model.keras")
    out, d = {}, tmp_path_factory.mktemp("quant")
    for dt in (tf.uint8, tf.int8):
        rng = np.random.default_rng(0)
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([synth_image(i % 3, rng, (32, 32))[None].astype(np.float32)]
                                               for i in range(12))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = dt
        out[dt.name] = d / f"tiny_{dt.name}.tflite"
        out[dt.name].write_bytes(conv.convert())
    return out


def _reference_temperature(probs: np.ndarray, t: float) -> np.ndarray:
    """apply_temperature as first written (np.clip, fresh temporaries); the faster one must match it exactly."""
    z = np.log(np.clip(probs, 1e-7, 1.0)) / t
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def test_dequantise_table_and_temperature_match_the_arithmetic_exactly(quantized_models, tiny_tflite_bundle):
    from trashcam.edge.interpreters import TFLiteEngine
    from trashcam.edge.temperature import apply_temperature

    x = np.stack([synth_image(c, np.random.default_rng(c), (32, 32)) for c in range(3)])
    float_top1 = TFLiteEngine(tiny_tflite_bundle / "model_fp32.tflite", threads=1).predict(x).argmax(-1).tolist()
    for name, path in quantized_models.items():
        eng = TFLiteEngine(path, threads=1)
        assert eng._out_lut is not None and eng.output_quant[0] > 0, name
        codes = np.arange(256, dtype=np.uint8).view(np.dtype(name)).reshape(2, 128)  # every output code
        scale, zp = eng.output_quant
        want = (codes.astype(np.float32) - zp) * scale
        got = eng.postprocess(codes)
        assert got.dtype == want.dtype and np.array_equal(got, want), name
        probs = eng.predict(x)
        assert np.allclose(probs.sum(-1), 1, atol=0.05) and probs.argmax(-1).tolist() == float_top1, name
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(5), size=50).astype(np.float32)
    p[0, 0] = 0.0  # the 1e-7 clip
    for t in (0.68, 1.7):
        assert np.array_equal(apply_temperature(p, t), _reference_temperature(p, t))
        assert np.array_equal(apply_temperature(p[3], t), _reference_temperature(p[3], t))
    before = p.copy()
    apply_temperature(p, 0.5)
    assert np.array_equal(p, before)  # the caller's array is not modified in place


def test_classifier_per_frame_path_matches_the_batch_path(clf, synthetic_dataset):
    """Classifier.probs (prepare -> invoke -> postprocess -> temperature, one frame) == predict + temperature."""
    from trashcam.edge.images import load_for_model
    from trashcam.edge.temperature import apply_temperature

    for path in sorted(synthetic_dataset.rglob("*.*"))[::7]:
        x = load_for_model(path, clf.pre)
        for t in (1.0, 0.68):
            clf.temperature = t
            want = apply_temperature(clf.engine.predict(x[None])[0], t)
            assert np.array_equal(clf.probs(x), want)
        pred = clf.classify(path)
        assert pred.index == int(np.argmax(want)) and pred.latency_ms > 0
    clf.temperature = 1.0


def test_read_ahead_keeps_every_frame_in_order_with_its_model_input(synthetic_dataset, tmp_path):
    import threading
    from trashcam.edge.bundle import Preprocessing
    from trashcam.edge.grabber import PrefetchSource
    from trashcam.edge.images import load_for_model
    from trashcam.edge.sources import ImageFolderSource, open_source

    pre = Preprocessing(input_size=(16, 20))
    files = sorted(str(p) for p in synthetic_dataset.rglob("*.*"))[:9]
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    files.insert(4, str(tmp_path / "bad.jpg"))
    calls: list[str] = []

    def prepare(image):
        calls.append(threading.current_thread().name)
        return load_for_model(image, pre)

    src = PrefetchSource(ImageFolderSource(files), prepare)
    got = list(src)
    src.close()
    assert [f.name for f in got] == files and [f.index for f in got] == list(range(10))
    assert [f.ok for f in got] == [i != 4 for i in range(10)] and got[4].model_input is None
    for f in got[:4] + got[5:]:
        assert np.array_equal(f.model_input, load_for_model(f.name, pre))  # what the serial path would feed
    assert set(calls) == {"prefetch-10 files"}  # decoded and resized off the classifying thread
    assert not src._thread.is_alive()

    # only file sources read ahead, and only when asked; edge-run asks
    assert isinstance(open_source(str(synthetic_dataset), prepare=prepare), PrefetchSource)
    assert isinstance(open_source(str(synthetic_dataset)), ImageFolderSource)


def test_edge_run_reads_a_folder_ahead_and_classifies_as_the_api_does(tiny_tflite_bundle, synthetic_dataset, clf):
    import io
    from trashcam.edge.grabber import PrefetchSource
    from trashcam.edge.config import RunConfig
    from trashcam.edge.live import LiveRunner

    seen: list[dict] = []
    runner = LiveRunner(RunConfig(bundle=str(tiny_tflite_bundle), variant="tflite-fp32", source=str(synthetic_dataset),
                                  threads=1, quiet=True, smooth="none"), out=io.StringIO(), err=io.StringIO())
    assert isinstance(runner.source, PrefetchSource)
    summary = runner.run(on_frame=seen.append)
    files = sorted(str(p) for p in synthetic_dataset.rglob("*.*"))
    assert summary["frames"] == len(files) == len(seen) and summary["stopped_by"] == "end"
    assert [e["class_index"] for e in seen] == [clf.classify(f).index for f in files]


def test_read_ahead_passes_errors_on_and_stops_promptly():
    import threading
    from trashcam.edge.grabber import PrefetchSource
    from trashcam.edge.sources import Frame, FrameSource

    class Endless(FrameSource):
        name = "endless"
        closed = False

        def __iter__(self):
            i = 0
            while not self.stop.is_set():
                if i == 5 and getattr(self, "fail", False):
                    raise OSError("disk gone")
                yield Frame(i, 0.0, np.zeros((4, 4, 3), np.uint8))
                i += 1

        def close(self):
            self.closed = True

    inner = Endless(threading.Event())
    inner.fail = True
    with pytest.raises(OSError, match="disk gone"):
        [f.index for f in PrefetchSource(inner, lambda im: im[:2])]
    inner = Endless(threading.Event())
    src = PrefetchSource(inner, lambda im: im[:2], depth=2)
    t0 = time.monotonic()
    for f in src:
        assert f.model_input.shape == (2, 4, 3)
        if f.index == 3:
            break  # the consumer stops; the reader is blocked on a full queue
    src.close()
    assert time.monotonic() - t0 < 2 and not src._thread.is_alive() and inner.closed


def test_auto_probe_checks_sha256_before_loading(tiny_tflite_bundle, tmp_path, monkeypatch):
    """`--variant auto` without a bench result loaded every variant into an interpreter before any checksum."""
    from trashcam.edge import runtime

    d, b = _two_variant_bundle(tiny_tflite_bundle, tmp_path)
    with open(d / "model_fp16.tflite", "r+b") as f:  # corrupted after it was recorded
        f.seek(100)
        f.write(b"\x00\x01\x02")
    loaded = []
    real = runtime.open_engine
    monkeypatch.setattr(runtime, "open_engine",
                        lambda bundle, v, threads=None: loaded.append(v) or real(bundle, v, threads))
    assert choose_variant(b, "auto", threads=1) == "tflite-fp32"
    assert loaded == ["tflite-fp32"]
