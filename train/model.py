"""The classifier: registered backbone + the recipe's head, and the views of it that each training stage needs.

The model is one flat functional graph (backbone layers first, head after), so "unfreeze from layer 60" counts
backbone layers exactly as the seed notebook did, and sub-models (trunk / top / head) share weights with it:
training a sub-model trains the full model that gets saved.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import TrainConfig


@dataclass
class ClassifierParts:
    model: Any  # full model: uint8-range float input -> softmax
    backbone_layers: list  # layers of the backbone, in the order "layer index" counts them
    head_layers: list  # [dropout, dense, predictions]
    feature_dim: int


def resolve_weights(weights: str) -> str | None:
    return None if str(weights).lower() in ("none", "", "null", "random") else weights


def build_classifier(cfg: TrainConfig, n_classes: int) -> ClassifierParts:
    import keras

    from .backbones import get

    spec = get(cfg.backbone)
    backbone = spec.build(input_shape=(cfg.image_size, cfg.image_size, 3), weights=resolve_weights(cfg.weights))
    reg = keras.regularizers.L2(cfg.l2) if cfg.l2 else None
    head = [
        keras.layers.Dropout(cfg.dropout, name="head_dropout"),
        keras.layers.Dense(cfg.dense_units, activation=cfg.dense_activation, kernel_regularizer=reg, name="head_dense"),
        # float32 even under mixed precision: softmax in fp16 loses the small probabilities calibration needs
        keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="predictions"),
    ]
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(backbone.output)
    for layer in head:
        x = layer(x)
    model = keras.Model(backbone.input, x, name=f"trashcam_{cfg.backbone}")
    return ClassifierParts(model, list(backbone.layers), head, int(backbone.output.shape[-1]))


def stage2_index(parts: ClassifierParts, stage2_from: str) -> int:
    """`"60"` -> backbone layer 60; `"block6a"` -> the first backbone layer whose name starts with it."""
    names = [layer.name for layer in parts.backbone_layers]
    if str(stage2_from).isdigit():
        i = int(stage2_from)
        if not 0 <= i < len(names):
            raise ValueError(f"stage2_from={i} is outside the backbone's {len(names)} layers")
        return i
    for i, n in enumerate(names):
        if n.startswith(str(stage2_from)):
            return i
    raise ValueError(f"no backbone layer starts with {stage2_from!r}; e.g. {names[len(names) // 2]!r}")


def is_batchnorm(layer) -> bool:
    import keras
    return isinstance(layer, keras.layers.BatchNormalization)


def set_stage(parts: ClassifierParts, stage: int, cfg: TrainConfig) -> dict[str, int]:
    """Stage 1: backbone frozen. Stage 2: backbone layers from `stage2_from` on train, BatchNorm stays frozen
    (a frozen BN layer also runs in inference mode in Keras 3, so its statistics stay ImageNet's)."""
    start = stage2_index(parts, cfg.stage2_from) if stage == 2 else len(parts.backbone_layers)
    for i, layer in enumerate(parts.backbone_layers):
        layer.trainable = i >= start and not (cfg.freeze_bn and is_batchnorm(layer))
    for layer in parts.head_layers:
        layer.trainable = True
    m = parts.model
    return {"trainable_weights": sum(int(w.numpy().size) for w in m.trainable_weights),
            "frozen_weights": sum(int(w.numpy().size) for w in m.non_trainable_weights), "from_index": start}


def trunk_and_top(parts: ClassifierParts, start: int):
    """Split at a block boundary: trunk = input -> activation entering layer `start`; top = the rest;
    features = the rest up to the pooled features (what the head sees).

    Only valid where one tensor crosses the cut (the first layer of an EfficientNet "Xa" block): checked by
    rebuilding the top model, which fails if a later layer needs anything else from the trunk.
    """
    import keras

    layer = parts.backbone_layers[start]
    cut = layer.input
    if isinstance(cut, (list, tuple)):
        raise ValueError(f"cannot cache at {layer.name}: several tensors cross the cut; use a block start "
                         "such as 'block6a'")
    try:
        top = keras.Model(cut, parts.model.output, name="top")
    except Exception as e:  # noqa: BLE001 - keras raises ValueError/KeyError variants here
        raise ValueError(f"cannot cache at {layer.name}: later layers need other trunk tensors ({e}); "
                         "use a block start such as 'block6a'") from e
    trunk = keras.Model(parts.model.input, cut, name="trunk")
    features = keras.Model(cut, parts.model.get_layer("head_pool").output, name="top_features")
    return trunk, top, features


def any_size(model):
    """`model` with its input's height and width left open, sharing every layer (so every weight) with it: stage 2
    trains on crops of the cached activations and validates on whole ones."""
    import keras
    return keras.models.clone_model(model, input_tensors=keras.Input((None, None, model.input.shape[-1])),
                                    clone_function=lambda layer: layer)


def head_model(parts: ClassifierParts):
    """Pooled features -> probabilities, sharing the head's weights with the full model."""
    import keras

    inp = keras.Input((parts.feature_dim,), name="features")
    x = inp
    for layer in parts.head_layers:
        x = layer(x)
    return keras.Model(inp, x, name="head")


def compile_for(model, lr, jit: bool | str = "auto") -> None:
    import keras
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=keras.losses.CategoricalCrossentropy(),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")], jit_compile=jit)
