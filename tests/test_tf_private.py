"""The TensorFlow version fence (convert/tf_private.py): every private converter API behind a probe, and the
stock INT8 converter, recorded as such, when the probe says one is missing."""
from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO


def test_this_tensorflow_has_every_private_capability():
    """Fails on a TensorFlow/LiteRT upgrade that moved a private API: then the INT8 recipe silently becomes the
    stock converter for users (recorded, not broken), and this test says which capability went."""
    from trashcam.convert import tf_private

    assert {k: v for k, v in tf_private.probe().items() if v} == {}
    v = tf_private.versions()
    assert set(v) == {"tensorflow", "keras", "tested"}


PRIVATE = ("_experimental_", "_get_ops_details", "mlir_quantize", "flatbuffer_utils", "schema_py_generated",
           "tensorflow.lite.python", "tensorflow.lite.tools")


def test_private_apis_are_called_only_from_tf_private():
    """No other converter module names TensorFlow's or the interpreter's private APIs (code, not docstrings)."""
    offenders = []
    for path in sorted((REPO / "convert").glob("*.py")):
        if path.name in ("tf_private.py", "_metadata_schema_fb.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Attribute):
                if not (isinstance(node.value, ast.Name) and node.value.id == "tf_private"):  # the fenced wrappers
                    names.append(node.attr)
            elif isinstance(node, ast.Name):
                names.append(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names += [getattr(node, "module", None) or "", *(a.name for a in node.names)]
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n and any(p in n for p in PRIVATE)]
    assert offenders == []


def test_int8_and_tflite_do_not_import_each_other():
    for name, other in (("int8.py", "tflite"), ("tflite.py", "int8")):
        tree = ast.parse((REPO / "convert" / name).read_text())
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert other not in mods and f"trashcam.convert.{other}" not in mods, (name, mods)


def test_missing_private_api_falls_back_to_the_stock_converter_and_says_so(tiny_keras_bundle, tmp_path,
                                                                          monkeypatch):
    from trashcam.convert import tf_private
    from trashcam.convert.config import ConvertConfig
    from trashcam.convert.pipeline import convert_bundle
    from trashcam.edge.bundle import Bundle

    d = Path(shutil.copytree(tiny_keras_bundle, tmp_path / "b"))
    real = tf_private.probe()
    monkeypatch.setattr(tf_private, "probe", lambda: {**real, "mlir_quantize": "TypeError: signature changed"})
    report = convert_bundle(d, ConvertConfig(variants=("tflite-int8",), calib_size=30, threads=1))
    row = report["variants"]["tflite-int8"]
    assert row["status"] == "PASS" and row["installed"]
    fallback = row["info"]["int8_recipe"]["fallback"]  # in the convert report ...
    assert fallback["used"] == "stock INT8 converter" and "mlir_quantize" in fallback["reason"]
    assert fallback["versions"]["tensorflow"]
    saved = Bundle.load(d).variants["tflite-int8"]["int8_recipe"]["fallback"]  # ... and in metadata.json
    assert saved == json.loads(json.dumps(fallback))
    assert "float_ops" not in Bundle.load(d).variants["tflite-int8"]["int8_recipe"]  # the recipe did not run


def test_a_private_call_that_breaks_at_run_time_also_falls_back(tiny_keras_bundle, tmp_path, monkeypatch):
    from trashcam.convert import tf_private
    from trashcam.convert.config import ConvertConfig
    from trashcam.convert.pipeline import convert_bundle

    d = Path(shutil.copytree(tiny_keras_bundle, tmp_path / "b"))

    @tf_private._guard
    def broken(*a, **kw):
        raise AttributeError("'TFLiteConverter' object has no attribute '_experimental_calibrate_only'")

    monkeypatch.setattr(tf_private, "calibrate_only", broken)
    row = convert_bundle(d, ConvertConfig(variants=("tflite-int8",), calib_size=30, threads=1,
                                          check=False))["variants"]["tflite-int8"]
    assert row["installed"] and "_experimental_calibrate_only" in row["info"]["int8_recipe"]["fallback"]["reason"]


def test_probe_reports_a_missing_capability_instead_of_raising(monkeypatch):
    from trashcam.convert import tf_private

    def gone():
        raise ImportError("No module named 'tensorflow.lite.python.convert'")

    monkeypatch.setitem(tf_private._CHECKS, "mlir_quantize", gone)
    tf_private.probe.cache_clear()
    try:
        assert "No module named" in tf_private.probe()["mlir_quantize"]
        assert tf_private.missing(tf_private.INT8_RECIPE_NEEDS).keys() == {"mlir_quantize"}
    finally:
        monkeypatch.undo()
        tf_private.probe.cache_clear()
    with pytest.raises(tf_private.PrivateApiError, match="AttributeError"):
        tf_private.ops_details(object())
