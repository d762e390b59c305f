"""TFLite Model Metadata (convert/metadata.py): every .tflite variant describes itself to apps that are not ours.

MediaPipe Tasks' ImageClassifier (the `mediapipe` package, [dev] only) runs fp32, fp16 and INT8 of a tiny bundle
trained on data/sample, returns the class names, and on the sample test split is within 1 pp of our runtime.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import SAMPLE, build_tiny_keras_bundle

TFLITE = {"tflite-fp32": "model_fp32.tflite", "tflite-fp16": "model_fp16.tflite", "tflite-int8": "model_int8.tflite"}


@pytest.fixture(scope="module")
def sample_tflite_bundle(tmp_path_factory):
    """A tiny CNN trained on data/sample (32x32), converted to the three TFLite variants (~15 s)."""
    from trashcam.convert.config import ConvertConfig
    from trashcam.convert.pipeline import convert_bundle

    out = tmp_path_factory.mktemp("meta") / "sample"
    build_tiny_keras_bundle(out, SAMPLE, epochs=15)
    report = convert_bundle(out, ConvertConfig(variants=tuple(TFLITE), calib_size=40, threads=1, max_drop=100))
    assert all(r["installed"] for r in report["variants"].values()), report["variants"]
    return out, report


def test_every_tflite_variant_carries_metadata_and_labels(sample_tflite_bundle):
    from trashcam.convert.metadata import read
    from trashcam.edge.bundle import Bundle, sha256_file

    d, report = sample_tflite_bundle
    b = Bundle.load(d)  # every sha256 is that of the final file (metadata embedded before the install)
    for variant, rel in TFLITE.items():
        assert b.metadata["files"][rel]["sha256"] == sha256_file(d / rel)
        meta, files = read((d / rel).read_bytes())
        assert meta.name.decode().endswith(f"({variant})") and meta.version and meta.description
        assert files == {"labels.txt": ("\n".join(b.labels) + "\n").encode()}
        inp = meta.subgraphMetadata[0].inputTensorMetadata[0]
        size = inp.content.contentProperties.defaultSize
        assert (size.height, size.width) == tuple(b.preprocessing.input_size)
        norm = inp.processUnits[0].options
        assert list(norm.mean) == [0.0] and list(norm.std) == [1.0]  # the model takes 0..255 pixels
        out = meta.subgraphMetadata[0].outputTensorMetadata[0]
        assert out.name == b"probability" and out.associatedFiles[0].name == b"labels.txt"
        assert b.variants[variant]["tflite_metadata"]["outputs"][0] == "probability"  # [1]: features (issue 15)
        assert report["variants"][variant]["info"]["tflite_metadata"]["associated_files"] == ["labels.txt"]


def test_metadata_changes_no_output(sample_tflite_bundle):
    from trashcam.convert.metadata import with_metadata
    from trashcam.edge.bundle import Bundle
    from trashcam.edge.imageset import split_images
    from trashcam.edge.interpreters import TFLiteEngine

    d, _ = sample_tflite_bundle
    b = Bundle.load(d)
    x = split_images(b, "test").x[:8]
    plain = d.parent / "plain.tflite"
    import keras
    import tensorflow as tf
    plain.write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras.models.load_model(d / "model.keras")).convert())
    described = d.parent / "described.tflite"
    described.write_bytes(with_metadata(plain.read_bytes(), b, "tflite-fp32")[0])
    assert described.stat().st_size > plain.stat().st_size
    np.testing.assert_array_equal(TFLiteEngine(plain, 1).predict(x), TFLiteEngine(described, 1).predict(x))


def _mediapipe_top1(model_path, images_u8: np.ndarray) -> list[str]:
    mp = pytest.importorskip("mediapipe", reason="mediapipe is in the [dev] extra")
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    opts = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(model_path)), max_results=1)
    with vision.ImageClassifier.create_from_options(opts) as clf:
        out = []
        for im in images_u8:
            r = clf.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(im)))
            out.append(r.classifications[0].categories[0].category_name)
    return out


def test_mediapipe_image_classifier_reads_every_variant(sample_tflite_bundle):
    """Images handed over at the model's input size: the resize filter is the one thing TFLite metadata cannot
    express (the schema has no field for it), so this compares what the metadata does say."""
    from trashcam.edge.bundle import Bundle
    from trashcam.edge.imageset import split_images
    from trashcam.edge.interpreters import TFLiteEngine

    d, _ = sample_tflite_bundle
    b = Bundle.load(d)
    test = split_images(b, "test")
    truth = [b.labels[y] for y in test.y]
    for variant, rel in TFLITE.items():
        names = _mediapipe_top1(d / rel, test.x)
        assert set(names) <= set(b.labels) and all(names), names  # class names, never empty
        ours = [b.labels[i] for i in TFLiteEngine(d / rel, 1).predict(test.x).argmax(1)]
        acc_mp = np.mean([a == t for a, t in zip(names, truth)])
        acc_ours = np.mean([a == t for a, t in zip(ours, truth)])
        assert abs(acc_mp - acc_ours) * 100 <= 1.0, (variant, acc_mp, acc_ours)


def test_undescribable_preprocessing_fails_the_variant_and_keeps_the_old_file(sample_tflite_bundle, tmp_path):
    from trashcam.convert.config import ConvertConfig
    from trashcam.convert.pipeline import convert_bundle
    from trashcam.edge.bundle import Bundle

    d = tmp_path / "b"
    shutil.copytree(sample_tflite_bundle[0], d)
    before = (d / "model_fp16.tflite").read_bytes()
    meta = json.loads((d / "metadata.json").read_text())
    meta["preprocessing"]["normalization"] = "imagenet_mean_std"  # done outside the model: not describable
    (d / "metadata.json").write_text(json.dumps(meta))
    report = convert_bundle(d, ConvertConfig(variants=("tflite-fp16",), check=False))
    row = report["variants"]["tflite-fp16"]
    assert row["status"] == "ERROR" and not report["ok"]
    assert "MetadataError" in row["error"] and "normalization" in row["error"] and row["kept_previous"]
    assert (d / "model_fp16.tflite").read_bytes() == before
    Bundle.load(d)  # still intact
