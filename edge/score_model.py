"""The neighbour scores' per-frame work as a tiny TFLite model with int8 weights (edge/neighbours.py): a frame's
feature in, its two parts out (the nearest centre's cosine averaged over the k-means fits, the nearest train row's
distance in radii). NumPy's dots are float32 only (its float16 and int8 ones are 3-17x slower), and after a 4 ms
invoke its dozen small calls run on cold caches; the runtime's dynamic-range FULLY_CONNECTED multiplies with int8
weights (the input quantised on the fly), so neighbour-lite's frame reads 0.54 MB instead of 2.2 MB and runs one
invoke instead of a dozen NumPy calls: x1.027 of an INT8 frame at 2 threads against NumPy's x1.109 (docs/cold-start.md).
The relative score (reviewed foreign images, edge/prototypes.py) runs the same model with the foreign centres as its
rows and radius 1: x1.034 against NumPy's x1.087-1.102 (stop 47).

Each product is a FULLY_CONNECTED op with per-tensor int8 weights, every row scaled to the full int8 range, then a
MUL by the rows' own scales: per-channel precision from ops every runtime runs (tflite_runtime 2.14, the last
tflite-runtime release and common on Raspberry Pis, returns wrong numbers for per-channel hybrid weights, silently).
Built TF-free with LiteRT's flatbuffer schema at calibration time; run by whichever TFLite runtime the device has.
edge-calibrate keeps a model only where its parts follow the float64 arithmetic; a probe frame and the model's parts
of it travel with the model, and a device whose runtime does not reproduce them falls back to NumPy.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

# Least correlation, over the calibration images, of each part with its float64 value for a model to be used: int8
# weights and inputs give 0.9998-0.9999 on a leave-one-class-out fold and 0.976-0.997 on the tests' tight synthetic
# clusters (where the rows' small radii magnify a cosine's rounding); a broken kernel gives garbage.
MIN_AGREEMENT = 0.9
# Largest difference a device may show from the calibrating machine's parts of the probe (absolute, or relative
# above 1): runtimes round a little differently; a broken kernel is off by ~1.
PROBE_TOLERANCE = 0.05
_OPS = ("FULLY_CONNECTED", "MUL", "SUM", "RSQRT", "RESHAPE", "REDUCE_MAX", "MEAN", "ADD", "REDUCE_MIN",
        "CONCATENATION")


def build_model(basis: np.ndarray | None, centres: np.ndarray, rows: np.ndarray, members: int,
                inv_r: np.ndarray) -> bytes | None:
    """A .tflite taking a (1, D) float32 feature to (1, 2) [mean over the `members` fits of the nearest centre's
    cosine, min over rows of (1 - cosine) / radius]; `basis` (p, D) first maps the unit feature (neighbour-lite).
    None without LiteRT's schema."""
    try:
        import flatbuffers
        from ai_edge_litert import schema_py_generated as S
    except ImportError:
        return None
    m = S.ModelT()
    m.version, m.description, m.buffers = 3, b"trashcam uncertainty score", [S.BufferT()]  # buffer 0: empty
    m.operatorCodes = []
    for name in _OPS:
        code = S.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = getattr(S.BuiltinOperator, name)
        code.version = 9 if name == "FULLY_CONNECTED" else 1  # 9: asymmetric input quantisation
        m.operatorCodes.append(code)
    sg = S.SubGraphT()
    sg.name, sg.tensors, sg.operators = b"main", [], []

    def tensor(name: str, shape, typ=S.TensorType.FLOAT32, data=None, scale: float | None = None) -> int:
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

    def op(name: str, inputs, shape, options=None) -> int:
        o = S.OperatorT()
        o.opcodeIndex, o.inputs = _OPS.index(name), np.array(inputs, np.int32)
        y = tensor(f"{name.lower()}_{len(sg.operators)}", shape)
        o.outputs = np.array([y], np.int32)
        if options is not None:
            o.builtinOptionsType = getattr(S.BuiltinOptions, type(options).__name__[:-1])  # FooOptionsT -> FooOptions
            o.builtinOptions = options
        sg.operators.append(o)
        return y

    def opts(cls, **kw):
        o = cls()
        for k, v in kw.items():
            setattr(o, k, v)
        return o

    def axis(a: int) -> int:
        return tensor(f"axis_{len(sg.tensors)}", [1], S.TensorType.INT32, np.array([a], np.int32))

    none = S.ActivationFunctionType.NONE

    def mul(a: int, b: int, shape) -> int:
        return op("MUL", [a, b], shape, opts(S.MulOptionsT, fusedActivationFunction=none))

    def product(x: int, w: np.ndarray, name: str) -> int:
        w = np.asarray(w, np.float32)
        row_scale = np.maximum(np.abs(w).max(axis=1), 1e-30).astype(np.float32)
        wq = np.clip(np.round(w / row_scale[:, None] * 127), -127, 127).astype(np.int8)
        raw = op("FULLY_CONNECTED", [x, tensor(f"{name}/int8", w.shape, S.TensorType.INT8, wq, 1 / 127), -1],
                 [1, len(w)], opts(S.FullyConnectedOptionsT, fusedActivationFunction=none,
                                   asymmetricQuantizeInputs=True))
        return mul(raw, tensor(f"{name}/row_scale", [len(w)], data=row_scale), [1, len(w)])

    d = int(centres.shape[1] if basis is None else basis.shape[1])
    x = tensor("features", [1, d])
    sg.inputs = np.array([x], np.int32)
    # the unit feature: x / |x|
    sq = op("SUM", [mul(x, x, [1, d]), axis(1)], [1, 1], opts(S.ReducerOptionsT, keepDims=True))
    u = mul(x, op("RSQRT", [sq], [1, 1]), [1, d])
    g = u if basis is None else product(u, basis, "basis")
    per_fit = len(centres) // members
    cos = op("RESHAPE", [product(g, centres, "centres"),
                         tensor("fits_shape", [2], S.TensorType.INT32, np.array([members, per_fit], np.int32))],
             [members, per_fit], opts(S.ReshapeOptionsT, newShape=np.array([members, per_fit], np.int32)))
    best = op("REDUCE_MAX", [cos, axis(1)], [members, 1], opts(S.ReducerOptionsT, keepDims=True))
    near = op("MEAN", [best, axis(0)], [1, 1], opts(S.ReducerOptionsT, keepDims=True))
    inv_r = np.asarray(inv_r, np.float32)
    rows_cos = product(g, rows, "rows")
    in_radii = op("ADD", [mul(rows_cos, tensor("minus_inv_r", [len(inv_r)], data=-inv_r), [1, len(inv_r)]),
                          tensor("inv_r", [len(inv_r)], data=inv_r)],
                  [1, len(inv_r)], opts(S.AddOptionsT, fusedActivationFunction=none))  # (1 - cos) / radius
    far = op("REDUCE_MIN", [in_radii, axis(1)], [1, 1], opts(S.ReducerOptionsT, keepDims=True))
    out = op("CONCATENATION", [near, far], [1, 2], opts(S.ConcatenationOptionsT, axis=1, fusedActivationFunction=none))
    sg.outputs = np.array([out], np.int32)
    m.subgraphs = [sg]
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@dataclass
class ScoreModel:
    """`model` (build_model's bytes) with a probe feature and its float parts; calling it gives one (D,) float32
    feature's (plain, far) parts. One interpreter per thread (an interpreter is not thread-safe; the score is
    shared)."""

    model: bytes
    probe: np.ndarray  # (D,) float32
    expect: np.ndarray  # (2,): the probe's (plain, far) as the model computed them where it was calibrated
    _local: threading.local = field(default_factory=threading.local, repr=False, compare=False)

    @classmethod
    def fit(cls, model: bytes | None, val: np.ndarray, exact: tuple[np.ndarray, np.ndarray],
            what: str = "uncertainty score") -> "ScoreModel | None":
        """The model if it runs here and its parts of the (N, D) features `val` follow `exact`, their float64
        (plain, far) (correlation >= MIN_AGREEMENT each), with its parts of val[0] as the probe a device must
        reproduce; else None, with a warning where there was a model."""
        if model is None:
            return None
        score = cls(bytes(model), np.asarray(val[0], np.float32), np.zeros(2))
        got = _first_run(score.parts, val)
        if got is None:
            return None
        agree = min(float(np.corrcoef(g, e)[0, 1]) for g, e in zip(got, exact))
        if not agree >= MIN_AGREEMENT:  # NaN (fewer than 2 images, or a constant part) too
            log.warning("the %s's int8 model follows the float arithmetic at %.3f correlation here; "
                        "using NumPy", what, agree)
            return None
        score.expect = np.array([got[0][0], got[1][0]])
        return score

    @classmethod
    def checked(cls, model: bytes | None, probe: np.ndarray, expect: np.ndarray) -> "ScoreModel | None":
        """The model if this device's runtime reproduces `expect` from `probe`, else None (with a warning if there
        was a model to check)."""
        if model is None:
            return None
        score = cls(bytes(model), np.asarray(probe, np.float32), np.asarray(expect, np.float64))
        got = _first_run(score, score.probe)
        if got is None:
            return None
        err = float(np.max(np.abs(np.array(got) - score.expect) / np.maximum(np.abs(score.expect), 1.0)))
        if not err <= PROBE_TOLERANCE:
            log.warning("this TFLite runtime computes the uncertainty score's int8 model %.2f off on its probe; "
                        "using NumPy", err)
            return None
        return score

    def __call__(self, v: np.ndarray) -> tuple[float, float]:
        it = getattr(self._local, "it", None)
        if it is None:
            from .interpreters import load_tflite_interpreter_class

            it = load_tflite_interpreter_class()[0](model_content=self.model, num_threads=1)
            it.allocate_tensors()
            self._local.it = it
            self._local.io = (it.get_input_details()[0]["index"], it.get_output_details()[0]["index"])
        i, o = self._local.io
        it.set_tensor(i, np.asarray(v, np.float32).reshape(1, -1))
        it.invoke()
        near, far = it.get_tensor(o)[0].tolist()
        return 1.0 - near, far

    def parts(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N,) plain and (N,) far parts of (N, D) features."""
        x = np.atleast_2d(np.asarray(feats, np.float32))
        p = np.array([self(v) for v in x], np.float64).reshape(len(x), 2)
        return p[:, 0], p[:, 1]

    def __getstate__(self) -> dict:  # a copy or a pickle takes the model, never another thread's interpreter
        return {"model": self.model, "probe": self.probe, "expect": self.expect}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    @property
    def nbytes(self) -> int:
        return len(self.model)

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {f"{prefix}score_model": np.frombuffer(self.model, np.uint8), f"{prefix}score_model_probe": self.probe,
                f"{prefix}score_model_expect": self.expect}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "") -> "ScoreModel | None":
        """The stored model, checked on this device; None if there is none (bundles calibrated before it) or it
        fails its probe."""
        if f"{prefix}score_model" not in arrays:
            return None
        return cls.checked(np.asarray(arrays[f"{prefix}score_model"], np.uint8).tobytes(),
                           arrays[f"{prefix}score_model_probe"], arrays[f"{prefix}score_model_expect"])


def _first_run(call, x):
    """`call(x)`, or None with a warning where no TFLite runtime here can run the model."""
    try:
        return call(x)
    except (ImportError, RuntimeError, ValueError) as e:
        log.warning("the uncertainty score's int8 model cannot run here (%s); using NumPy", e)
        return None


class Int8Score:
    """A score of two parts per frame whose work a ScoreModel can do (NeighbourMix, NeighbourLite and
    RelativePrototypes): `with_model` builds it, and `parts`, `score` and `score_one` run it where there is one, else
    NumPy. Each gives `model_inputs()` (build_model's arguments), `_exact_parts` and `_score_one_exact` (NumPy),
    `_combine` (the score of its two parts) and `_standardised`. List it before other bases: its methods must win."""

    score_model: ScoreModel | None
    kind = "uncertainty"  # its name in warnings: edge-calibrate fits every score and keeps one

    def parts(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N,) plain and far parts of (N, D) features."""
        return self.score_model.parts(feats) if self.score_model is not None else self._exact_parts(feats)

    def score(self, feats: np.ndarray) -> np.ndarray:
        return self._combine(*self.parts(feats))

    def score_one(self, v: np.ndarray) -> float:
        """One (D,) float32 feature vector, the per-frame path: one invoke of the int8 model, else NumPy's calls."""
        if self.score_model is not None:
            return self._combine(*self.score_model(v))
        return self._score_one_exact(v)

    def with_model(self, val_feats: np.ndarray):
        """This score with its per-frame work in an int8 ScoreModel, re-fitted to the model's parts of `val_feats`
        (the neighbour scores standardise both parts again on them, as frames will compute them); itself where no
        model can be built or run here. Leave-one-class-out it flags what NumPy's form flags (docs/cold-start.md,
        stops 46 and 47)."""
        val = np.atleast_2d(np.asarray(val_feats, np.float32))
        if not len(val):
            return self
        model = ScoreModel.fit(build_model(**self.model_inputs()), val, self._exact_parts(val), f"{self.kind} score")
        return self if model is None else self._standardised(model.parts(val), model)


def per_frame(model: ScoreModel | None) -> str:
    """What a frame runs, for the score's metadata and edge-bench."""
    return "int8 tflite" if model is not None else "numpy float32"


def model_arrays(model: ScoreModel | None, prefix: str) -> dict[str, np.ndarray]:
    return model.arrays(prefix) if model is not None else {}
