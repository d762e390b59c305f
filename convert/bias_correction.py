"""Bias correction of INT8 weight rounding (Nagel et al. 2019, "Data-Free Quantization", section 4.2).

Rounding a layer's weights to the int8 grid changes its mean output: E[W_q x] - E[W x] = E[(W_q - W) x] is not
zero when the inputs have a non-zero mean (always, after ReLU6). Summed over a network the shifts become a
systematic class bias: on the default Lite0 bundle the uncorrected INT8 model moved probability from "paper" to
"cardboard" on average, and most of its lost test images were that drift, not noise.

This module emulates the TFLite converter's weight quantisation (symmetric int8, one scale per output channel,
levels -127..127) on a *copy* of the Keras model, measures E[(W_q - W) x] per output channel on calibration
images (float activations, exact padding: the error kernel is convolved with the real inputs) and subtracts it
from the layer's bias, or adds it to the moving mean of the BatchNormalization that follows (the converter folds
that BN into the convolution). The weights themselves are left alone, so the converter rounds them exactly as
the correction assumed. Per-output-channel rounding is unchanged by the BN fold, which scales whole channels.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _weighted_types():
    import keras
    return keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense


def weight_layers(model) -> list:
    """Conv2D / DepthwiseConv2D / Dense layers of `model` in graph order (the order TFLite runs their ops)."""
    return [layer for layer in model.layers if isinstance(layer, _weighted_types())]


def quantize_like_tflite(kernel: np.ndarray, depthwise: bool) -> np.ndarray:
    """The de-quantised int8 kernel TFLite makes: per output channel, scale = max|w| / 127, round half away
    from zero. Keras kernels keep output channels last (a depthwise kernel: channel x multiplier)."""
    axes = (0, 1) if depthwise else tuple(range(kernel.ndim - 1))
    k = kernel.astype(np.float64)
    scale = np.abs(k).max(axis=axes, keepdims=True) / 127.0
    scale = np.where(scale > 0, scale, 1.0)  # an all-zero channel stays zero
    q = np.sign(k) * np.floor(np.abs(k) / scale + 0.5)
    return (q * scale).astype(kernel.dtype)


def _error_layer(layer, kernel_error: np.ndarray):
    """A twin of `layer` (same strides, padding, dilation) with kernel W_q - W, no bias, no activation."""
    cfg = layer.get_config()
    cfg.update(activation="linear", use_bias=False, name=f"{layer.name}_rounding_error", dtype="float32")
    twin = layer.__class__.from_config(cfg)
    twin.build(tuple(layer.input.shape))
    twin.set_weights([kernel_error])
    return twin


def _clone(model):
    import keras
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def bias_correct(model, images: np.ndarray, skip: set[str] = frozenset(), batch_size: int = 8
                 ) -> tuple[Any, dict[str, Any]]:
    """A copy of `model` whose biases cancel the mean effect of int8 weight rounding; `model` is not modified.

    `images`: calibration images as the model takes them (uint8-range NHWC). `skip`: names of layers that stay
    in float (their weights are not rounded, so they need no correction).
    """
    import keras

    copy = _clone(model)
    bn_after = {}  # id(conv output tensor) -> the BatchNormalization applied to it
    for layer in copy.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            try:
                bn_after[id(layer.input)] = layer
            except (AttributeError, ValueError):  # a layer called more than once has no single input
                pass
    targets, twins = [], []
    for layer in weight_layers(copy):
        if layer.name in skip:
            continue
        try:
            layer.input  # noqa: B018 - a shared layer has no single input and cannot be probed
        except (AttributeError, ValueError):
            continue
        kernel = layer.get_weights()[0]
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        targets.append(layer)
        twins.append(_error_layer(layer, quantize_like_tflite(kernel, depthwise) - kernel))
    if not targets:
        return copy, {"layers_corrected": 0, "layers_uncorrectable": [], "images": 0, "max_abs_shift": 0.0}
    probe = keras.Model(copy.inputs, [t.input for t in targets])
    sums = [np.zeros(int(t.output.shape[-1])) for t in targets]
    counts = [0] * len(targets)
    for i in range(0, len(images), batch_size):
        inputs = probe([images[i:i + batch_size].astype(np.float32)], training=False)
        inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        for j, (twin, x) in enumerate(zip(twins, inputs)):
            d = np.asarray(twin(x), np.float64)
            d = d.reshape(-1, d.shape[-1])
            sums[j] += d.sum(axis=0)
            counts[j] += d.shape[0]
    uncorrectable, max_shift = [], 0.0
    for layer, s, n in zip(targets, sums, counts):
        shift = s / max(n, 1)
        bn = bn_after.get(id(layer.output))
        if getattr(layer, "use_bias", False):
            w = layer.get_weights()
            w[1] = (w[1] - shift).astype(w[1].dtype)
            layer.set_weights(w)
        elif bn is not None:
            w = bn.get_weights()  # gamma, beta, moving_mean, moving_variance (gamma/beta only if enabled)
            w[-2] = (w[-2] + shift).astype(w[-2].dtype)
            bn.set_weights(w)
        else:
            uncorrectable.append(layer.name)
            continue
        max_shift = max(max_shift, float(np.abs(shift).max()))
    info = {"layers_corrected": len(targets) - len(uncorrectable), "layers_uncorrectable": uncorrectable,
            "images": int(len(images)), "max_abs_shift": round(max_shift, 6)}
    return copy, info
