"""The deployable graph: the classifier plus its pooled features as a second output.

The on-device "uncertain" score (edge/ood.py) is a distance in the pooled-feature space the head sees, so the
converted variants output [probabilities, features]: output 0 keeps what every consumer already reads, output 1
named "features" is quantised like the rest in INT8 and de-quantised by the edge runtime. The feature tensor is
the output of the recipe's `head_pool` layer (global average pooling of the backbone), else of the last
GlobalAveragePooling2D layer, so small test models qualify too.
"""
from __future__ import annotations

PROBS_NAME = "probabilities"
FEATURES_NAME = "features"


def feature_tensor(model):
    """The pooled-feature tensor of a classifier, or None when it has none we recognise."""
    import keras

    try:
        return model.get_layer("head_pool").output
    except ValueError:
        pass
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)]
    return pools[-1].output if pools else None


def with_features(model):
    """[probabilities, features] model sharing `model`'s weights; `model` itself when it has no pooled
    features or already has two outputs."""
    import keras

    if len(model.outputs) > 1:
        return model
    feats = feature_tensor(model)
    if feats is None:
        return model
    probs = keras.layers.Identity(name=PROBS_NAME)(model.outputs[0])
    feats = keras.layers.Identity(name=FEATURES_NAME)(feats)
    return keras.Model(model.inputs, [probs, feats], name=f"{model.name}_with_features")
