"""The stage-2 per-layer profile of benchmarks/train_speed.py: every layer timed, shares that add up."""
from __future__ import annotations

import pytest

keras = pytest.importorskip("keras")


def test_stage2_by_layer_times_every_layer_kind_and_the_shares_sum_to_one():
    from trashcam.benchmarks.train_speed import layer_kind, stage2_by_layer

    inp = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 1, use_bias=False)(inp)
    x = keras.layers.BatchNormalization(trainable=False)(x)
    y = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False)(x)
    x = keras.layers.Add()([keras.layers.MaxPooling2D()(x), y])  # a layer with two inputs
    out = keras.layers.Dense(5, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    prof = stage2_by_layer(keras.Model(inp, out), batch_size=4, warmup=0, repeats=1)

    kinds = prof["by_kind"]
    assert {"Conv2D[1x1 s1]", "DepthwiseConv2D[3x3 s2]", "BatchNormalization", "Add", "Dense"} <= set(kinds)
    assert sum(v["share"] for v in kinds.values()) == pytest.approx(1.0, abs=0.01)
    assert prof["ms_per_image"] == pytest.approx(prof["ms_per_batch"] / 4, rel=0.05)
    assert layer_kind(keras.layers.Dense(3)) == "Dense"
