"""The seed recipe augments as the notebook's Keras ImageDataGenerator did; the default recipe keeps its own style."""
from __future__ import annotations

import numpy as np
import pytest

from trashcam.edge.resize import resize_linear_numpy
from trashcam.train import augment
from trashcam.train.config import DEFAULT, SEED, resolve


def _smooth(size=20, seed=0) -> np.ndarray:
    """A smooth image: bilinear sampling is then close to exact everywhere, and a shift of a pixel shows."""
    coarse = np.random.default_rng(seed).integers(20, 230, (4, 4, 3), dtype=np.uint8)
    return resize_linear_numpy(coarse, (size, size))


def test_recipes_pick_their_style():
    assert SEED.augment_style == "keras" and DEFAULT.augment_style == "trashcam"
    with pytest.raises(ValueError, match="augment_style"):
        resolve("default", augment_style="albumentations")


def test_keras_style_draws_one_channel_shift_for_all_channels():
    keras = augment.sample_params(np.random.default_rng(0), 50, 16, 16, SEED)["channel_shift"]
    assert (keras == keras[:, :1]).all() and np.abs(keras).max() <= SEED.channel_shift
    own = augment.sample_params(np.random.default_rng(0), 50, 16, 16, DEFAULT)["channel_shift"]
    assert not (own == own[:, :1]).all()  # the default recipe: a colour cast per channel


def test_keras_style_draws_x_and_y_zoom_apart():
    zx, zy = augment.sample_params(np.random.default_rng(0), 50, 16, 16, SEED)["zoom"].T
    assert not np.allclose(zx, zy) and zx.min() >= 0.75 and zy.max() <= 1.25
    z = augment.sample_params(np.random.default_rng(0), 50, 16, 16, DEFAULT)["zoom"]
    assert np.array_equal(z[:, 0], z[:, 1])


def test_keras_style_reads_shear_in_degrees():
    shear = augment.sample_params(np.random.default_rng(0), 50, 16, 16, SEED)["shear"]
    assert np.abs(shear).max() <= 0.12  # degrees
    m = augment._keras_affine(100, 100, shear=0.12)
    # 0.12 degrees moves a pixel 100 rows away by 0.2 px; the default style's factor 0.12 by 12 px
    assert np.abs(m[:2, :2] - np.eye(2)).max() == pytest.approx(np.sin(np.deg2rad(0.12)))
    assert augment._affine(100, 100, shear=0.12)[0, 1] == pytest.approx(0.12)


def test_keras_intensity_clips_to_the_image_range_and_truncates_like_pil():
    x = np.array([[[[10.7, 100.2, 200.9]]]], np.float32)
    out = augment.keras_intensity(x, np.array([[60.0] * 3], np.float32), np.array([1.1], np.float32))
    # +60 clipped to the image's max 200.9, truncated to uint8, times 1.1 truncated, clipped to 255
    assert out.ravel().tolist() == [np.floor(np.float32(1.1) * 70), np.floor(np.float32(1.1) * 160), 220.0]


KERAS_PARAMS = [
    {"shear": 20.0},
    {"zx": 0.8, "zy": 1.2},
    {"theta": 15.0, "tx": 2.0, "ty": -3.0},
    {"flip_horizontal": True, "theta": -10.0, "zx": 1.1, "zy": 0.9, "shear": 5.0},
    {"theta": 7.0, "zx": 0.9, "zy": 1.05, "channel_shift_intensity": 9.0, "brightness": 1.17},
    {"channel_shift_intensity": -8.0, "brightness": 0.8, "flip_horizontal": True},
]


@pytest.mark.parametrize("params", KERAS_PARAMS)
def test_keras_style_matches_keras_image_data_generator(params):
    legacy = pytest.importorskip("keras.src.legacy.preprocessing.image", reason="Keras' ImageDataGenerator")
    pytest.importorskip("scipy")
    x = _smooth()  # square: Keras centres both axes with the height, so only square images match everywhere
    want = legacy.ImageDataGenerator(fill_mode="nearest").apply_transform(x.astype(np.float32), dict(params))
    m = augment._keras_affine(20, 20, params.get("theta", 0.0), params.get("tx", 0.0), params.get("ty", 0.0),
                              params.get("shear", 0.0), params.get("zx", 1.0), params.get("zy", 1.0),
                              params.get("flip_horizontal", False))
    got = augment.warp(x[None], augment._flat(m)[None]).numpy()
    if "brightness" in params:
        got = augment.keras_intensity(got, np.full((1, 3), params.get("channel_shift_intensity", 0.0), np.float32),
                                      np.array([params["brightness"]], np.float32))
    inner = (slice(3, -3), slice(3, -3))  # the fill at the border is interpolated a little differently
    tol = 1.0 if "brightness" in params else 0.02  # truncation to uint8 may land either side of an integer
    assert np.abs(got[0][inner] - want[inner]).max() <= tol
    assert np.abs(got[0] - want).mean() < 0.5


def test_augment_batch_in_keras_style_is_uint8_valued_and_in_range():
    x = np.stack([_smooth(seed=i) for i in range(4)])
    out = augment.augment_batch(x, np.random.default_rng(0), SEED)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255
    assert np.array_equal(out, np.floor(out))  # PIL's brightness step hands back integers


@pytest.mark.parametrize("cfg", [DEFAULT, SEED], ids=["trashcam", "keras"])
def test_augment_batch_in_sub_batches_equals_the_whole_batch_at_once(cfg):
    """Sub-batching is for speed only: the same draws and the same float32 arithmetic as one warp of all images."""
    x = np.random.default_rng(1).integers(0, 256, (augment.SUB_BATCH * 2 + 5, 12, 12, 3), dtype=np.uint8)
    got = augment.augment_batch(x, np.random.default_rng(7), cfg)
    p = augment.sample_params(np.random.default_rng(7), len(x), 12, 12, cfg)
    whole = augment.warp(x, p["transforms"]).numpy()
    if cfg.augment_style == "keras":
        want = augment.keras_intensity(whole, p["channel_shift"], p["brightness"])
    else:
        want = np.clip(whole * p["brightness"][:, None, None, None] + p["channel_shift"][:, None, None, :], 0, 255)
    assert got.dtype == np.float32 and np.array_equal(got, want.astype(np.float32))


def test_random_crops_are_windows_of_each_sample_at_random_places():
    rng = np.random.default_rng(0)
    x = np.arange(64 * 18 * 18 * 2, dtype=np.float32).reshape(64, 18, 18, 2)
    c = augment.random_crops(x, 13, rng)
    assert c.shape == (64, 13, 13, 2)
    places = set()
    for i in range(len(x)):  # the top-left cell locates the window; the whole window must match it
        y0, x0 = np.argwhere(x[i, :, :, 0] == c[i, 0, 0, 0])[0]
        np.testing.assert_array_equal(c[i], x[i, y0:y0 + 13, x0:x0 + 13])
        places.add((y0, x0))
    assert len(places) > 20 and max(p[0] for p in places) == 5 and min(p[1] for p in places) == 0
    assert augment.random_crops(x, 18, rng) is x  # a window of the whole side is the sample itself
