"""The bundle contract: checksums verified on load, clear errors, atomic updates, slim export."""
from __future__ import annotations

import json
import shutil

import pytest

from trashcam.edge.bundle import SCHEMA_VERSION, Bundle, BundleError, Preprocessing, atomic_write_bytes


def _bundle(tmp_path):
    b = Bundle.create(tmp_path / "b", ["cat", "dog"], Preprocessing(input_size=(8, 8)), backbone="x")
    (b.path / "model_fp32.tflite").write_bytes(b"\x00" * 100)
    b.set_variant("tflite-fp32", "model_fp32.tflite", format="tflite")
    b.save()
    return b


def test_roundtrip_and_contents(tmp_path):
    b = _bundle(tmp_path)
    again = Bundle.load(b.path)
    assert again.labels == ["cat", "dog"]
    assert again.preprocessing.input_size == (8, 8)
    assert again.metadata["schema_version"] == SCHEMA_VERSION
    assert (b.path / "labels.txt").read_text().split() == ["cat", "dog"]
    assert set(again.metadata["files"]) == {"labels.txt", "model_fp32.tflite"}
    assert again.metadata["files"]["model_fp32.tflite"]["size_bytes"] == 100


def test_tampered_and_truncated_files_fail_clearly(tmp_path):
    b = _bundle(tmp_path)
    p = b.path / "model_fp32.tflite"
    p.write_bytes(b"\x01" + b"\x00" * 99)
    with pytest.raises(BundleError, match="sha256"):
        Bundle.load(b.path)
    p.write_bytes(b"\x00" * 50)
    with pytest.raises(BundleError, match="truncated"):
        Bundle.load(b.path)
    p.unlink()
    with pytest.raises(BundleError, match="missing"):
        Bundle.load(b.path)
    Bundle.load(b.path, verify=False)  # metadata itself is fine


def test_schema_and_missing_bundle_errors(tmp_path):
    with pytest.raises(BundleError, match="not a directory"):
        Bundle.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="metadata.json is missing"):
        Bundle.load(tmp_path / "empty")
    b = _bundle(tmp_path)
    meta = json.loads((b.path / "metadata.json").read_text())
    meta["schema_version"] = 999
    (b.path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="schema_version 999"):
        Bundle.load(b.path)
    (b.path / "metadata.json").write_text("{ truncated")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(b.path)


def test_unknown_variant_lists_what_exists(tmp_path):
    b = _bundle(tmp_path)
    with pytest.raises(BundleError, match="tflite-fp32"):
        b.variant_path("tflite-int8")


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "f.json"
    atomic_write_bytes(p, b"good")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(p, b"bad")
    assert p.read_bytes() == b"good"
    assert [x.name for x in tmp_path.iterdir()] == ["f.json"]  # no temp file left behind


def test_export_slim_keeps_one_variant(tmp_path):
    b = _bundle(tmp_path)
    (b.path / "big.bin").write_bytes(b"x" * 1000)
    b.add_file("big.bin")
    b.save()
    slim = b.export_slim(tmp_path / "slim", "tflite-fp32")
    assert sorted(p.name for p in slim.path.iterdir()) == ["labels.txt", "metadata.json", "model_fp32.tflite"]
    Bundle.load(slim.path)
    shutil.rmtree(slim.path)


def test_too_few_labels():
    with pytest.raises(BundleError, match="at least 2"):
        Bundle.create("/tmp/never", ["one"], Preprocessing(), backbone="x")


def test_json_config_roundtrip_and_unknown_keys(tmp_path):
    from dataclasses import dataclass

    from trashcam.edge.config import JsonConfig

    @dataclass(frozen=True)
    class C(JsonConfig):
        a: int = 1
        sizes: tuple[int, ...] = (1, 2)

    c = C(3, (4, 5))
    c.save(tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": 3, "sizes": [4, 5]}
    assert C.load(tmp_path / "c.json") == c
    with pytest.raises(ValueError, match="unknown C key"):
        C.from_dict({"a": 1, "b": 2})
