"""The deployable graph: the classifier plus its pooled features as a second output, and each channel's spatial
maximum of the same feature map as a third.

The on-device "uncertain" score (edge/ood.py) is a distance in the pooled-feature space the head sees, so the
converted variants output [probabilities, features, features_max]: output 0 keeps what every consumer already
reads, output 1 named "features" is quantised like the rest in INT8 and de-quantised by the edge runtime. The
feature tensor is the output of the recipe's `head_pool` layer (global average pooling of the backbone), else of the
last GlobalAveragePooling2D layer, so small test models qualify too. Output 2, "features_max", pools the map that layer
averages by its maximum instead: leave-one-class-out, a score on both (edge/ood.py's "neighbour-max") flagged more of a
held-out class than one on the mean alone (docs/cold-start.md, stops 49-50). The probabilities do not change.
"""
from __future__ import annotations

PROBS_NAME = "probabilities"
FEATURES_NAME = "features"
MAX_NAME = "features_max"


def _pool_layer(model):
    import keras

    try:
        return model.get_layer("head_pool")
    except ValueError:
        pass
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    return pools[-1] if pools else None


def feature_tensor(model):
    """The pooled-feature tensor of a classifier, or None when it has none we recognise."""
    layer = _pool_layer(model)
    return None if layer is None else layer.output


def with_features(model):
    """[probabilities, features, features_max] model sharing `model`'s weights; `model` itself when it has no
    pooled features or already has several outputs."""
    import keras

    if len(model.outputs) > 1:
        return model
    layer = _pool_layer(model)
    if layer is None:
        return model
    probs = keras.layers.Identity(name=PROBS_NAME)(model.outputs[0])
    feats = keras.layers.Identity(name=FEATURES_NAME)(layer.output)
    maxes = keras.layers.GlobalMaxPooling2D(name=MAX_NAME)(layer.input)
    return keras.Model(model.inputs, [probs, feats, maxes], name=f"{model.name}_with_features")
