"""The recipe's augmentation, MixUp and label smoothing, on uint8 batches from the decode-once cache.

Random parameters are drawn with NumPy (a seeded Generator: reproducible, testable); the warp itself is one
TensorFlow projective-transform op per batch. Two styles (`TrainConfig.augment_style`) read the same config fields:

- "keras", the seed recipe's: Keras' ImageDataGenerator as the notebook ran it, step for step: rotation and shear
  in degrees (shear=0.12 is 0.12 degrees, next to nothing), x and y zoom drawn apart (zoom > 1 shows more of the
  image), one channel-shift offset for all three channels, clipped to the image's own min..max, then brightness
  through PIL (so the image is truncated to uint8 before and after it).
- "trashcam", the default recipe's (tuned with it, so kept): shear as a factor (0.12 = 6.8 degrees, a real
  shear), one zoom for both axes (objects keep their proportions; zoom > 1 magnifies), an offset per channel
  (colour casts as between cameras' white balance), brightness times the image plus the shift, no uint8 steps.

Both: rotation in degrees, shifts as fractions of the image, nearest fill at the borders, bilinear sampling.
"""
from __future__ import annotations

import numpy as np

from .config import TrainConfig


def _affine(h: int, w: int, angle: float = 0.0, tx: float = 0.0, ty: float = 0.0, zoom: float = 1.0,
            shear: float = 0.0, flip_h: bool = False, flip_v: bool = False) -> np.ndarray:
    """3x3 matrix mapping OUTPUT pixel coords to INPUT coords (what the projective-transform op wants)."""
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    to_c = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], np.float64)
    from_c = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]], np.float64)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    sh = np.array([[1, shear, 0], [0, 1, 0], [0, 0, 1]])
    zm = np.array([[1 / zoom, 0, 0], [0, 1 / zoom, 0], [0, 0, 1]])  # zoom > 1 magnifies
    fl = np.diag([-1.0 if flip_h else 1.0, -1.0 if flip_v else 1.0, 1.0])
    tr = np.array([[1, 0, tx * w], [0, 1, ty * h], [0, 0, 1]])
    return from_c @ tr @ rot @ sh @ zm @ fl @ to_c


def _keras_affine(h: int, w: int, theta: float = 0.0, tx: float = 0.0, ty: float = 0.0, shear: float = 0.0,
                  zx: float = 1.0, zy: float = 1.0, flip_h: bool = False, flip_v: bool = False) -> np.ndarray:
    """Keras' apply_affine_transform (channels_last) and its flips as one OUTPUT -> INPUT matrix: theta and shear
    in degrees, tx and ty in pixels. Keras builds this matrix, centres it with (h, w) on its two axes and hands it
    to scipy with rows and columns swapped, so in the (x, y) order of the projective-transform op it is the matrix
    as built (for non-square images the centring is Keras' own, kept)."""
    t, s = np.deg2rad(theta), np.deg2rad(shear)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], np.float64)
    sh = np.array([[1, -np.sin(s), 0], [0, np.cos(s), 0], [0, 0, 1]])
    zm = np.diag([zx, zy, 1.0])
    ox, oy = h / 2 - 0.5, w / 2 - 0.5
    m = np.array([[1, 0, ox], [0, 1, oy], [0, 0, 1]]) @ rot @ shift @ sh @ zm @ \
        np.array([[1, 0, -ox], [0, 1, -oy], [0, 0, 1]])
    # Keras flips the warped image; flipping the output coordinates first is the same map
    fl = np.array([[-1.0 if flip_h else 1.0, 0, (w - 1) if flip_h else 0],
                   [0, -1.0 if flip_v else 1.0, (h - 1) if flip_v else 0], [0, 0, 1]])
    return m @ fl


def _flat(m: np.ndarray) -> np.ndarray:
    m = m / m[2, 2]
    return np.array([m[0, 0], m[0, 1], m[0, 2], m[1, 0], m[1, 1], m[1, 2], m[2, 0], m[2, 1]], np.float32)


AUGMENT_STYLES = ("trashcam", "keras")


def sample_params(rng: np.random.Generator, n: int, h: int, w: int, cfg: TrainConfig) -> dict[str, np.ndarray]:
    """Per-image random augmentation parameters: transforms (n, 8), brightness (n,), channel shift (n, 3),
    zoom (n, 2) as (x, y) and shear (n,) as drawn (degrees in the "keras" style, a factor otherwise)."""
    if cfg.augment_style == "keras":
        return _sample_keras(rng, n, h, w, cfg)
    if cfg.augment_style != "trashcam":
        raise ValueError(f"augment_style must be one of {', '.join(AUGMENT_STYLES)}; got {cfg.augment_style!r}")
    rot = np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg, n))
    tx, ty = rng.uniform(-cfg.shift, cfg.shift, (2, n))
    zoom = rng.uniform(1 - cfg.zoom, 1 + cfg.zoom, n)
    shear = rng.uniform(-cfg.shear, cfg.shear, n)
    flip = rng.random(n) < 0.5 if cfg.hflip else np.zeros(n, bool)
    mats = np.stack([_flat(_affine(h, w, rot[i], tx[i], ty[i], zoom[i], shear[i], bool(flip[i]))) for i in range(n)])
    return {
        "transforms": mats,
        "brightness": rng.uniform(*cfg.brightness, n).astype(np.float32),
        "channel_shift": rng.uniform(-cfg.channel_shift, cfg.channel_shift, (n, 3)).astype(np.float32),
        "zoom": np.stack([zoom, zoom], 1), "shear": shear,
    }


def _sample_keras(rng: np.random.Generator, n: int, h: int, w: int, cfg: TrainConfig) -> dict[str, np.ndarray]:
    """ImageDataGenerator.get_random_transform's draws (a NumPy Generator instead of the global state)."""
    theta = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg, n)
    tx = rng.uniform(-cfg.shift, cfg.shift, n) * h  # Keras: height_shift_range times the rows, on its first axis
    ty = rng.uniform(-cfg.shift, cfg.shift, n) * w
    shear = rng.uniform(-cfg.shear, cfg.shear, n)
    zx, zy = rng.uniform(1 - cfg.zoom, 1 + cfg.zoom, (2, n))
    flip = rng.random(n) < 0.5 if cfg.hflip else np.zeros(n, bool)
    shift = rng.uniform(-cfg.channel_shift, cfg.channel_shift, n)
    mats = np.stack([_flat(_keras_affine(h, w, theta[i], tx[i], ty[i], shear[i], zx[i], zy[i], bool(flip[i])))
                     for i in range(n)])
    return {
        "transforms": mats,
        "brightness": rng.uniform(*cfg.brightness, n).astype(np.float32),
        "channel_shift": np.repeat(shift[:, None], 3, 1).astype(np.float32),
        "zoom": np.stack([zx, zy], 1), "shear": shear,
    }


def keras_intensity(x: np.ndarray, channel_shift: np.ndarray, brightness: np.ndarray) -> np.ndarray:
    """Keras' channel shift then brightness on warped float images (N, H, W, 3): the shift clipped to each image's
    min..max over all channels, the uint8 cast of array_to_img (truncation), PIL's Brightness (a float32 product,
    truncated, clipped to 0..255)."""
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
    x = np.floor(np.clip(x + channel_shift[:, None, None, :], lo, hi))
    return np.clip(np.floor(brightness.astype(np.float32)[:, None, None, None] * x.astype(np.float32)), 0, 255)


def warp(x: np.ndarray, transforms: np.ndarray):
    """Apply per-image projective transforms to an (N, H, W, 3) batch; returns a float32 tf.Tensor."""
    import tensorflow as tf

    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=tf.constant(transforms, tf.float32), output_shape=tf.shape(x)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")


# Images warped and shifted at a time: every step is per image, so the result is the same for any size; 256 at
# once made each step allocate and fault in another 255 MB float32 array (288 px), 4-5x slower than 32 at a time.
SUB_BATCH = 32


def augment_batch(x_u8: np.ndarray, rng: np.random.Generator, cfg: TrainConfig) -> np.ndarray:
    """uint8 (N, H, W, 3) -> augmented float32 in 0..255 (what the model takes). The random draws are made for
    the whole batch, so they do not depend on SUB_BATCH."""
    n, h, w = x_u8.shape[:3]
    if not cfg.augment or n == 0:
        return x_u8.astype(np.float32)
    p = sample_params(rng, n, h, w, cfg)
    out = np.empty(x_u8.shape, np.float32)
    for i in range(0, n, SUB_BATCH):
        part = slice(i, i + SUB_BATCH)
        xb = warp(x_u8[part], p["transforms"][part]).numpy()
        if cfg.augment_style == "keras":
            out[part] = keras_intensity(xb, p["channel_shift"][part], p["brightness"][part])
            continue
        xb *= p["brightness"][part, None, None, None]
        xb += p["channel_shift"][part, None, None, :]
        out[part] = np.clip(xb, 0.0, 255.0, out=xb)
    return out


# Test-time augmentation passes: deterministic, named, recorded in the config.
TTA_PASSES = {
    "identity": {},
    "hflip": {"flip_h": True},
    "vflip": {"flip_v": True},
    "zoom_in": {"zoom": 1.12},
    "zoom_in_hflip": {"zoom": 1.12, "flip_h": True},
    "rot90": {"angle": np.pi / 2},
}


def tta_views(x_u8: np.ndarray, passes: tuple[str, ...]) -> list[np.ndarray]:
    """One float32 batch per pass, same order as `passes`."""
    unknown = [p for p in passes if p not in TTA_PASSES]
    if unknown:
        raise ValueError(f"unknown TTA pass(es) {unknown}; known: {', '.join(TTA_PASSES)}")
    n, h, w = x_u8.shape[:3]
    views = []
    for name in passes:
        if not TTA_PASSES[name]:
            views.append(x_u8.astype(np.float32))
            continue
        m = np.repeat(_flat(_affine(h, w, **TTA_PASSES[name]))[None], n, axis=0)
        views.append(warp(x_u8, m).numpy())
    return views


def random_crops(x: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """A `side` x `side` window of each (N, H, W, C) sample at a uniform random place: stage 2's crop of the cached
    activations, where the arithmetic of every later layer shrinks with the area while objects keep the scale
    they have at test time (the model still sees whole images there)."""
    n, h, w = x.shape[:3]
    if side >= min(h, w):
        return x
    rows = rng.integers(0, h - side + 1, n)[:, None] + np.arange(side)
    cols = rng.integers(0, w - side + 1, n)[:, None] + np.arange(side)
    return x[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def one_hot_smooth(y: np.ndarray, n_classes: int, smoothing: float) -> np.ndarray:
    """One-hot targets with label smoothing: 1 - eps + eps/K on the true class, eps/K elsewhere."""
    t = np.full((len(y), n_classes), smoothing / n_classes, np.float32)
    t[np.arange(len(y)), y] += 1.0 - smoothing
    return t


def mixup(x: np.ndarray, t: np.ndarray, w: np.ndarray, alpha: float, rng: np.random.Generator):
    """MixUp with one lambda per sample, the same lambda for inputs, targets and sample weights.

    Returns (x_mixed, t_mixed, w_mixed, lam, perm) so tests can check the pairing.
    """
    n = len(x)
    if alpha <= 0 or n < 2:
        return x, t, w, np.ones(n, np.float32), np.arange(n)
    lam = rng.beta(alpha, alpha, n).astype(np.float32)
    perm = rng.permutation(n)
    lx = lam.reshape((n,) + (1,) * (x.ndim - 1))
    xm = lx * x + (1 - lx) * x[perm]
    tm = lam[:, None] * t + (1 - lam[:, None]) * t[perm]
    wm = lam * w + (1 - lam) * w[perm]
    return xm.astype(x.dtype), tm, wm, lam, perm
