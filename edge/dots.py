"""A chain of matrix products as a tiny TFLite model with int8 weights: what lets neighbour-lite (edge/neighbours.py)
read a quarter of its float32 bytes a frame. NumPy's dots are float32 only (its float16 and int8 ones are 3-17x
slower); the TFLite runtime's dynamic-range FULLY_CONNECTED kernel quantises the input on the fly and multiplies with
int8 weights, so one frame's basis, centres and rows are 0.56 MB instead of 2.2 MB.

Each product is a FULLY_CONNECTED op with per-tensor int8 weights, every row scaled to the full int8 range, then a
MUL by the rows' own scales: per-channel precision from ops every runtime runs (tflite_runtime 2.14, the last
tflite-runtime release and common on Raspberry Pis, returns wrong numbers for per-channel hybrid weights, silently).
Built TF-free with LiteRT's flatbuffer schema at calibration time; run by whichever TFLite runtime
the device has. A probe frame and its float result travel with the model, and a runtime that does not reproduce
them is not used: the score falls back to NumPy.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np

from .vectors import length

log = logging.getLogger(__name__)

# Largest error a device may make on the probe, relative to its largest float result: int8 weights and inputs
# reproduce a cosine to ~0.01 of the largest (docs/cold-start.md, stop 46); a broken kernel is off by ~1.
PROBE_TOLERANCE = 0.05


def build_model(mats: list[np.ndarray]) -> bytes | None:
    """A .tflite computing mats[-1] @ ... @ mats[0] @ x for a (1, D) float32 x; None without LiteRT's schema."""
    try:
        import flatbuffers
        from ai_edge_litert import schema_py_generated as S
    except ImportError:
        return None
    m = S.ModelT()
    m.version, m.description, m.buffers = 3, b"trashcam score dots", [S.BufferT()]  # buffer 0: empty, by convention
    m.operatorCodes = []
    for op in (S.BuiltinOperator.FULLY_CONNECTED, S.BuiltinOperator.MUL):
        code = S.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = op
        code.version = 9 if op == S.BuiltinOperator.FULLY_CONNECTED else 1  # 9: asymmetric input quantisation
        m.operatorCodes.append(code)
    sg = S.SubGraphT()
    sg.name, sg.tensors, sg.operators = b"main", [], []

    def tensor(name: str, shape, typ, data: np.ndarray | None = None, scale: float | None = None) -> int:
        t = S.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), np.array(shape, np.int32), typ, 0
        if data is not None:
            b = S.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            m.buffers.append(b)
            t.buffer = len(m.buffers) - 1
        if scale is not None:
            q = S.QuantizationParametersT()
            q.scale, q.zeroPoint = np.array([scale], np.float32), np.zeros(1, np.int64)
            t.quantization = q
        sg.tensors.append(t)
        return len(sg.tensors) - 1

    def op(code: int, inputs, output: int, options_type, options) -> None:
        o = S.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = code, np.array(inputs, np.int32), np.array([output], np.int32)
        o.builtinOptionsType, o.builtinOptions = options_type, options
        sg.operators.append(o)

    x = tensor("features", [1, mats[0].shape[1]], S.TensorType.FLOAT32)
    sg.inputs = np.array([x], np.int32)
    for k, w in enumerate(mats):
        w = np.asarray(w, np.float32)
        row_scale = np.maximum(np.abs(w).max(axis=1), 1e-30).astype(np.float32)
        wq = np.clip(np.round(w / row_scale[:, None] * 127), -127, 127).astype(np.int8)
        fc_opts = S.FullyConnectedOptionsT()
        fc_opts.fusedActivationFunction, fc_opts.asymmetricQuantizeInputs = S.ActivationFunctionType.NONE, True
        raw = tensor(f"dots{k}/int8", [1, len(w)], S.TensorType.FLOAT32)
        op(0, [x, tensor(f"w{k}", w.shape, S.TensorType.INT8, wq, 1 / 127), -1], raw,
           S.BuiltinOptions.FullyConnectedOptions, fc_opts)
        x = tensor(f"dots{k}", [1, len(w)], S.TensorType.FLOAT32)
        mul_opts = S.MulOptionsT()
        mul_opts.fusedActivationFunction = S.ActivationFunctionType.NONE
        op(1, [raw, tensor(f"s{k}", [len(w)], S.TensorType.FLOAT32, row_scale)], x, S.BuiltinOptions.MulOptions,
           mul_opts)
    sg.outputs = np.array([x], np.int32)
    m.subgraphs = [sg]
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@dataclass
class DotsModel:
    """`model` (build_model's bytes) with a probe input and its float result; calling it gives the products of one
    (D,) float32 vector. One interpreter per thread (an interpreter is not thread-safe; the score is shared)."""

    model: bytes
    probe: np.ndarray  # (D,) float32
    expect: np.ndarray  # (K,) float32: the float products of `probe`
    _local: threading.local = field(default_factory=threading.local, repr=False, compare=False)

    @classmethod
    def fit(cls, mats: list[np.ndarray], probe: np.ndarray) -> "DotsModel | None":
        """The model of `mats` if one can be built and run here, else None (the caller keeps NumPy's dots)."""
        model = build_model(mats)
        if model is None:
            return None
        expect = np.asarray(probe, np.float64)
        for w in mats:
            expect = np.asarray(w, np.float64) @ expect
        return cls.checked(model, np.asarray(probe, np.float32), expect.astype(np.float32))

    @classmethod
    def checked(cls, model: bytes, probe: np.ndarray, expect: np.ndarray) -> "DotsModel | None":
        """The model if this device's runtime reproduces `expect` from `probe`, else None with a warning."""
        dots = cls(bytes(model), probe, expect)
        try:
            got = dots(probe)
        except (ImportError, RuntimeError, ValueError) as e:  # no TFLite runtime, or one that cannot run the ops
            log.warning("the uncertainty score's int8 dots cannot run here (%s); using NumPy's", e)
            return None
        err = float(np.abs(got - expect).max() / max(float(np.abs(expect).max()), 1e-30))
        if not err <= PROBE_TOLERANCE:
            log.warning("this TFLite runtime computes the uncertainty score's int8 dots %.0f %% off on their probe; "
                        "using NumPy's", 100 * err)
            return None
        return dots

    def __call__(self, v: np.ndarray) -> np.ndarray:
        it = getattr(self._local, "it", None)
        if it is None:
            from .interpreters import load_tflite_interpreter_class

            it = load_tflite_interpreter_class()[0](model_content=self.model, num_threads=1)
            it.allocate_tensors()
            self._local.it = it
            self._local.io = (it.get_input_details()[0]["index"], it.get_output_details()[0]["index"])
        i, o = self._local.io
        it.set_tensor(i, v.reshape(1, -1))
        it.invoke()
        return it.get_tensor(o)[0]

    def cosines(self, feats: np.ndarray) -> np.ndarray:
        """(N, K) float64: each of (N, D) features' products over its length (cosines, for unit weight rows)."""
        x = np.atleast_2d(np.asarray(feats, np.float32))
        return np.array([self(v) / length(v) for v in x], np.float64).reshape(len(x), -1)

    def __getstate__(self) -> dict:  # a copy or a pickle takes the model, never another thread's interpreter
        return {"model": self.model, "probe": self.probe, "expect": self.expect}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    @property
    def nbytes(self) -> int:
        return len(self.model)

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {f"{prefix}dots": np.frombuffer(self.model, np.uint8), f"{prefix}dots_probe": self.probe,
                f"{prefix}dots_expect": self.expect}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "") -> "DotsModel | None":
        """The stored model, checked on this device; None if there is none (bundles calibrated before it) or it
        fails its probe."""
        if f"{prefix}dots" not in arrays:
            return None
        return cls.checked(np.asarray(arrays[f"{prefix}dots"], np.uint8).tobytes(),
                           np.asarray(arrays[f"{prefix}dots_probe"], np.float32),
                           np.asarray(arrays[f"{prefix}dots_expect"], np.float32))
