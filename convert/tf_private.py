"""Every private TensorFlow / LiteRT API the converter uses, in one place, behind a capability probe.

The INT8 recipe (convert/int8.py) and the TFLite metadata writer (convert/metadata.py) need things no public
API offers: the converter's calibrate-only mode, `mlir_quantize` with a deny-list, the interpreter's op list,
and the flatbuffer object API of the .tflite schema. Private APIs move between releases without notice, so:

- `probe()` says, before anything is converted, whether each one is still there with the signature we call;
- each wrapper turns an AttributeError/TypeError/ImportError from inside TensorFlow into `PrivateApiError`;
- callers fall back to public API when a capability is missing (int8.py: the stock INT8 converter) and record
  that they did.

TESTED is the range CI ran the tests against (setup.cfg's [train] pins the same range).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from typing import Any, Callable

TESTED = {"tensorflow": ("2.21.0",), "keras": ("3.15.1",)}

# capability -> what needs it
INT8_RECIPE_NEEDS = ("calibrate_only", "mlir_quantize", "ops_details", "flatbuffer_utils")
METADATA_NEEDS = ("flatbuffer_utils",)


class PrivateApiError(RuntimeError):
    """A private TensorFlow/LiteRT API is missing or changed its signature in this release."""


def _guard(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except (AttributeError, ImportError, TypeError) as e:
            raise PrivateApiError(f"{fn.__name__}: {type(e).__name__}: {e}") from e
    return wrapper


def _check_calibrate_only(conv=None) -> None:
    if conv is None:
        from tensorflow.lite.python.lite import TFLiteConverterBase
        src = inspect.getsource(TFLiteConverterBase.__init__)
        if "_experimental_calibrate_only" not in src:
            raise AttributeError("TFLiteConverter has no _experimental_calibrate_only")
    elif not hasattr(conv, "_experimental_calibrate_only"):
        raise AttributeError("TFLiteConverter has no _experimental_calibrate_only")


def _check_mlir_quantize() -> None:
    from tensorflow.lite.python import convert as tflite_convert
    params = inspect.signature(tflite_convert.mlir_quantize).parameters
    missing = {"input_data_type", "output_data_type", "denylisted_nodes"} - set(params)
    if missing:
        raise TypeError(f"mlir_quantize lacks {sorted(missing)}")


def _check_ops_details() -> None:
    from trashcam.edge.interpreters import load_tflite_interpreter_class
    cls, _ = load_tflite_interpreter_class()
    if not hasattr(cls, "_get_ops_details"):
        raise AttributeError(f"{cls.__module__}.{cls.__name__} has no _get_ops_details")


def _check_flatbuffer_utils() -> None:
    from tensorflow.lite.tools import flatbuffer_utils
    for name in ("read_model_from_bytearray", "convert_object_to_bytearray"):
        getattr(flatbuffer_utils, name)
    from tensorflow.lite.python import schema_py_generated as s
    for name in ("BufferT", "MetadataT"):
        getattr(s, name)


_CHECKS: dict[str, Callable[[], None]] = {
    "calibrate_only": _check_calibrate_only, "mlir_quantize": _check_mlir_quantize,
    "ops_details": _check_ops_details, "flatbuffer_utils": _check_flatbuffer_utils,
}


@functools.lru_cache(maxsize=None)
def probe() -> dict[str, str | None]:
    """capability -> None when usable, else why not. Cheap: imports and signatures, no conversion."""
    out: dict[str, str | None] = {}
    for name, check in _CHECKS.items():
        try:
            check()
            out[name] = None
        except Exception as e:  # any failure means "do not rely on it"
            out[name] = f"{type(e).__name__}: {e}"
    return out


def missing(needs: tuple[str, ...]) -> dict[str, str]:
    """The capabilities among `needs` that this TensorFlow lacks, with the reason."""
    got = probe()
    return {n: got[n] for n in needs if got.get(n)}


def versions() -> dict[str, Any]:
    """Installed TF/Keras versions and whether CI tested exactly these."""
    import keras
    import tensorflow as tf
    v = {"tensorflow": tf.__version__, "keras": keras.__version__}
    return {**v, "tested": all(v[k] in TESTED[k] for k in TESTED)}


# -- the private calls ---------------------------------------------------------------------------------------
@_guard
def calibrate_only(conv) -> None:
    """Switch `conv` to TFLite's calibrate-only mode (a float model with recorded min/max per tensor); the
    mode `tf.lite.experimental.QuantizationDebugger` uses."""
    _check_calibrate_only(conv)
    conv._experimental_calibrate_only = True  # noqa: SLF001


@_guard
def mlir_quantize(calibrated: bytes, io: str, denylisted_nodes: list[str]) -> bytes:
    """Full-integer quantisation of a calibrated model; `denylisted_nodes` stay float. I/O uint8 or float."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tflite_convert

    t = tf.uint8 if io == "uint8" else tf.float32
    with contextlib.redirect_stdout(sys.stderr):
        return tflite_convert.mlir_quantize(calibrated, input_data_type=t, output_data_type=t,
                                            denylisted_nodes=denylisted_nodes or None)


@_guard
def ops_details(it) -> list[tuple[str, list[int]]]:
    """(op name, output tensor indices) of every op of an allocated interpreter, in execution order."""
    return [(op["op_name"], list(op["outputs"])) for op in it._get_ops_details()]  # noqa: SLF001


@_guard
def read_model(data: bytes):
    """The .tflite flatbuffer as a mutable object tree (schema ModelT)."""
    from tensorflow.lite.tools import flatbuffer_utils
    return flatbuffer_utils.read_model_from_bytearray(bytearray(data))


@_guard
def write_model(model) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


@_guard
def schema():
    """The generated .tflite schema module (BufferT, MetadataT, ...)."""
    from tensorflow.lite.python import schema_py_generated
    return schema_py_generated
