"""The recipe's augmentation, MixUp and label smoothing, on uint8 batches from the decode-once cache.

Random parameters are drawn with NumPy (a seeded Generator: reproducible, testable); the warp itself is one
TensorFlow projective-transform op per batch. Geometry follows Keras' ImageDataGenerator semantics that the seed
notebook used: rotation in degrees, shift and zoom as fractions, nearest fill at the borders.
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


def _flat(m: np.ndarray) -> np.ndarray:
    m = m / m[2, 2]
    return np.array([m[0, 0], m[0, 1], m[0, 2], m[1, 0], m[1, 1], m[1, 2], m[2, 0], m[2, 1]], np.float32)


def sample_params(rng: np.random.Generator, n: int, h: int, w: int, cfg: TrainConfig) -> dict[str, np.ndarray]:
    """Per-image random augmentation parameters: transforms (n, 8), brightness (n,), channel shift (n, 3)."""
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
    }


def warp(x: np.ndarray, transforms: np.ndarray):
    """Apply per-image projective transforms to an (N, H, W, 3) batch; returns a float32 tf.Tensor."""
    import tensorflow as tf

    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=tf.constant(transforms, tf.float32), output_shape=tf.shape(x)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")


def augment_batch(x_u8: np.ndarray, rng: np.random.Generator, cfg: TrainConfig) -> np.ndarray:
    """uint8 (N, H, W, 3) -> augmented float32 in 0..255 (what the model takes)."""
    n, h, w = x_u8.shape[:3]
    if not cfg.augment or n == 0:
        return x_u8.astype(np.float32)
    p = sample_params(rng, n, h, w, cfg)
    out = warp(x_u8, p["transforms"]).numpy()
    out = out * p["brightness"][:, None, None, None] + p["channel_shift"][:, None, None, :]
    return np.clip(out, 0.0, 255.0).astype(np.float32)


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
