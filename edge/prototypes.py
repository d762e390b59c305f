"""The "prototypes", "radius-mix" and "relative" uncertainty scores: cosine distance to a few k-means centres of each
class's train features; that distance averaged with the same distance in units of each centre's radius; and the
distance against the centres of a site's reviewed foreign images. NumPy, and for "relative" the int8 model of
edge/score_model.py where calibration could build one; edge/ood.py wraps them in OodScore with the other scores.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .score_model import Int8Score, ScoreModel, model_arrays, per_frame
from .vectors import length, row_dots, unit_rows


# k-means centres kept per class by the "prototypes" score. Leave-one-class-out with the fine-tuned default recipe
# (benchmarks/open_set_tuned.py, INT8, edge-calibrate's 1000 train images): 16 centres flagged 40.5 % of the
# held-out classes at 5 % of validation (AUROC 0.859), 32 flagged 39.1 % (0.868); offline on every train image, 8 /
# 16 / 32 flagged 40.2 / 41.5 / 43.7 % and the nearest train feature 43.4 %. What decides is the per-frame cost:
# right after an INT8 invoke (Lite0 288, 2 threads) the score of 5 x 16 centres (410 KB) took 46-66 us, of 5 x 32
# (820 KB) 66-90 us, the same as Mahalanobis + max-probability with its 69 x 1280 matrix.
PROTOTYPES_PER_CLASS = 16
# k-means fits edge-calibrate averages (Prototypes.members). Leave-one-class-out on three seeds' fold models
# (benchmarks/prototype_fits.py, seeds 0-9): the k-means seed alone moves a fold by 3.2-4.5 pp (sd) with one fit,
# 1.8-2.3 pp with the mean of 8, which flags 2.1 / 4.4 / 2.6 pp more foreign images at the same 5 %. It reads 8 x the
# centres each frame (3.3 MB for 5 classes): x1.016 at 1 thread and x1.027-1.032 at 2 against x1.004-1.011 with one
# fit, INT8 Lite0 288 (edge-bench p50, ~9.5 ms a frame at 2 threads). A model 3x faster pays 3x the share (the quick
# recipe's 160 px frames: x1.055 INT8 with 8 fits), so the count falls with the input's pixels (prototype_fits).
PROTOTYPE_FITS = 8
PROTOTYPE_FITS_PIXELS = 288 * 288


def prototype_fits(pixels: int) -> int:
    """k-means fits to average for a model taking `pixels` input pixels: `PROTOTYPE_FITS` at 288 x 288, fewer as a
    frame's arithmetic (which scales with the pixels) shrinks and the score's cost does not; 160 x 160 gets 2."""
    return max(1, min(PROTOTYPE_FITS, round(PROTOTYPE_FITS * pixels / PROTOTYPE_FITS_PIXELS)))


def spherical_kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 30, init: np.ndarray | None = None
                     ) -> np.ndarray:
    """k unit-length centres of the unit rows `x` (k <= len(x)), each row assigned to the centre of highest cosine;
    k-means++ seeding (on 1 - cosine) unless `init` gives the starting centres, an emptied centre re-seeded at the
    worst-served row."""
    k = min(int(k), len(x))
    c = _kmeans_pp(x, k, np.random.default_rng(seed)) if init is None else np.asarray(init, x.dtype)[:k]
    for _ in range(iters):
        sim = x @ c.T
        near = sim.argmax(1)
        new = np.zeros_like(c)
        np.add.at(new, near, x)
        empty = ~np.isin(np.arange(k), near)
        if empty.any():
            new[empty] = x[np.argsort(sim.max(1))[:int(empty.sum())]]
        new = unit_rows(new)
        if np.allclose(new, c):
            break
        c = new
    return c


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    cent = [x[rng.integers(len(x))]]
    far = 1.0 - x @ cent[0]
    for _ in range(1, k):
        p = np.maximum(far, 0.0)
        i = int(rng.choice(len(x), p=p / p.sum())) if p.sum() > 0 else int(rng.integers(len(x)))
        cent.append(x[i])
        far = np.minimum(far, 1.0 - x @ x[i])
    return np.stack(cent)


@dataclass
class Prototypes:
    """Cosine distance to the nearest class prototype: `PROTOTYPES_PER_CLASS` spherical k-means centres of each
    class's train features. A compressed form of the nearest-neighbour score (Sun et al. 2022, "Out-of-distribution
    detection with deep nearest neighbors"), which would need every train feature on the device."""

    centroids: np.ndarray  # (K, D) float32, unit rows
    # k-means fits averaged: `centroids` is `members` equal blocks, one fit each, and the score is the mean over blocks
    # of each block's nearest cosine (benchmarks/prototype_fits.py: steadier than one fit, and higher on average)
    members: int = 1

    def __post_init__(self) -> None:
        self.centroids = np.ascontiguousarray(np.asarray(self.centroids, np.float32))
        if self.members < 1 or len(self.centroids) % self.members:
            raise ValueError(f"{len(self.centroids)} centres do not split into {self.members} fits")

    @classmethod
    def fit(cls, feats: np.ndarray, labels: np.ndarray, per_class: int = PROTOTYPES_PER_CLASS,
            seed: int = 0, members: int = 1) -> "Prototypes":
        """Fit m of `members` is seeded `members * seed + m`: one fit keeps `seed` itself."""
        x, labels = unit_rows(np.asarray(feats, np.float64)), np.asarray(labels)
        return cls(np.concatenate([spherical_kmeans(x[labels == c], per_class, members * seed + m)
                                   for m in range(members) for c in np.unique(labels)]), members)

    def nearest(self, sims: np.ndarray) -> np.ndarray:
        """(N, K) cosines to the centres -> (N,) the nearest one's, averaged over the fits."""
        return sims.reshape(len(sims), self.members, -1).max(axis=2).mean(axis=1)

    def score(self, feats: np.ndarray) -> np.ndarray:
        f = unit_rows(np.atleast_2d(np.asarray(feats, np.float64)))
        return 1.0 - self.nearest(f @ self.centroids.T.astype(np.float64))

    def _nearest_one(self, v: np.ndarray) -> float:
        return self._nearest_of(row_dots(self.centroids, v))

    def _nearest_of(self, d: np.ndarray) -> float:
        """(K,) cosines to the centres -> the nearest one's, averaged over the fits (`nearest` of one frame)."""
        return float(d.max()) if self.members == 1 else float(d.reshape(self.members, -1).max(axis=1).mean())

    def score_one(self, v: np.ndarray) -> float:
        """One (D,) float32 feature vector, the per-frame path (see Mahalanobis.score_one): three numpy calls for one
        fit, two more for several."""
        return 1.0 - self._nearest_one(v) / length(v)

    def meta(self) -> dict:
        return {"prototypes": len(self.centroids), **({"members": self.members} if self.members > 1 else {})}

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {f"{prefix}centroids": self.centroids,
                **({f"{prefix}members": np.array(self.members)} if self.members > 1 else {})}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "", shrinkage: float = 0.0) -> "Prototypes":
        return cls(arrays[f"{prefix}centroids"], _members(arrays, prefix))


def _members(arrays, prefix: str) -> int:
    """Bundles calibrated before the fits were averaged have one fit and no `members` array."""
    return int(arrays[f"{prefix}members"]) if f"{prefix}members" in arrays else 1


def foreign_centres(n: int) -> int:
    """Centres kept for `n` reviewed foreign images: one per 4 images, at most a class's worth."""
    return max(1, min(PROTOTYPES_PER_CLASS, math.ceil(n / 4)))


@dataclass
class RelativePrototypes(Int8Score, Prototypes):
    """The prototypes' distance minus the distance to the nearest centre of a site's reviewed foreign images
    (`_foreign/`): a frame that looks like a foreign object the site has already seen scores high even where it lies
    near a class, which the class centres alone cannot tell (benchmarks/field_foreign.py measured it). Per frame by
    `score_model` where edge-calibrate could build one (the neighbour scores' int8 model with the foreign centres as
    its rows, radius 1: its two parts are the two distances), else by NumPy, which reads 8 fits' centres of 1280
    floats (2.6-3.3 MB): x1.087 of an INT8 frame at 2 threads on an AMX Xeon (docs/cold-start.md, stop 47)."""

    kind = "relative"

    foreign: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (F, D) float32, unit rows
    score_model: ScoreModel | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.foreign = np.ascontiguousarray(np.asarray(self.foreign, np.float32))

    @classmethod
    def fit_foreign(cls, protos: Prototypes, foreign_feats: np.ndarray, seed: int = 0) -> "RelativePrototypes":
        x = unit_rows(np.asarray(foreign_feats, np.float64))
        return cls(protos.centroids, protos.members, spherical_kmeans(x, foreign_centres(len(x)), seed))

    def model_inputs(self) -> dict:
        return {"basis": None, "centres": self.centroids, "rows": self.foreign, "members": self.members,
                "inv_r": np.ones(len(self.foreign), np.float32)}

    def _standardised(self, parts, model: ScoreModel) -> "RelativePrototypes":
        return replace(self, score_model=model)  # a difference of two cosines: nothing to standardise

    def _exact_parts(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the prototypes' distance, the nearest foreign centre's distance) of (N, D) features."""
        f = unit_rows(np.atleast_2d(np.asarray(feats, np.float64)))
        return (1.0 - self.nearest(f @ self.centroids.T.astype(np.float64)),
                1.0 - (f @ self.foreign.T.astype(np.float64)).max(axis=1))

    def _combine(self, plain, foreign):
        return plain - foreign  # (nearest foreign cosine - nearest class cosine)

    def _score_one_exact(self, v: np.ndarray) -> float:
        near = float(row_dots(self.foreign, v).max()) - self._nearest_one(v)
        return near / length(v)

    def meta(self) -> dict:
        return {**super().meta(), "foreign_prototypes": len(self.foreign), "per_frame": per_frame(self.score_model)}

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {**super().arrays(prefix), f"{prefix}foreign_centroids": self.foreign,
                **model_arrays(self.score_model, prefix)}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "", shrinkage: float = 0.0) -> "RelativePrototypes":
        return cls(arrays[f"{prefix}centroids"], _members(arrays, prefix), arrays[f"{prefix}foreign_centroids"],
                   ScoreModel.from_arrays(arrays, prefix))


class StandardisedPair:
    """For scores of two distances per frame (`parts`), each standardised by `_norm` (their mean and sd on validation
    images: mean, sd, mean, sd) and averaged, as `combined` standardises its two parts."""

    norm: np.ndarray
    _norm: list

    def _take_norm(self) -> None:
        """Checks `norm` and keeps it as floats for the per-frame path."""
        self.norm = np.asarray(self.norm, np.float64).reshape(4)
        self._norm = self.norm.tolist()
        if self._norm[1] <= 0 or self._norm[3] <= 0:
            raise ValueError(f"standard deviations {self._norm[1]}, {self._norm[3]} must be positive")

    def _combine(self, plain, far):
        pm, ps, rm, rs = self._norm
        return ((plain - pm) / ps + (far - rm) / rs) / 2

    def score(self, feats: np.ndarray) -> np.ndarray:
        return self._combine(*self.parts(feats))

    @staticmethod
    def norm_of(plain: np.ndarray, far: np.ndarray) -> list[float]:
        return [plain.mean(), plain.std() + 1e-12, far.mean(), far.std() + 1e-12]


def floored_radii(r: np.ndarray, floor: float) -> np.ndarray:
    """Radii with the unmeasured (NaN) ones set to the median, and every one at least `floor` x the median (a radius
    measured on one row, or on duplicates, is 0)."""
    med = float(np.nanmedian(r)) if np.isfinite(r).any() else 1.0
    return np.maximum(np.where(np.isnan(r), med, r), max(floor * med, 1e-12))


@dataclass
class RadiusPrototypes(StandardisedPair, Prototypes):
    """The prototypes' distance averaged with the distance in units of each centre's radius (the mean distance of the
    train features nearest it among its fit's centres), each standardised on validation images. By the second part
    a frame a little off a tight centre is far; the first keeps a frame inside a loose centre's wide radius from
    looking near (the radius part alone lost 6-12 pp on the glass fold). Leave-one-class-out (benchmarks/
    prototype_fits.py, "radius-mix"): +5.9 / +6.2 / +2.0 pp foreign flagged at the same 5 % of validation on three
    runs' fold models, +7.2 pp on a fourth trained to confirm it."""

    radii: np.ndarray = field(default_factory=lambda: np.ones(0, np.float32))  # (K,) float32, in `centroids`' order
    # mean and sd on validation images of the plain distance, then of the radius distance
    norm: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.0, 0.0, 1.0]))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.radii = np.asarray(self.radii, np.float32).reshape(-1)
        if len(self.radii) != len(self.centroids) or not np.all(self.radii > 0):
            raise ValueError(f"{len(self.radii)} radii for {len(self.centroids)} centres, or one not positive")
        self._inv_r = (1.0 / self.radii).reshape(self.members, -1)
        self._take_norm()

    @classmethod
    def fit_radii(cls, protos: Prototypes, train_feats: np.ndarray, val_feats: np.ndarray,
                  floor: float = 0.25) -> "RadiusPrototypes":
        """Each centre's radius on `train_feats` (a centre serving no row gets its fit's median radius, and every
        radius is at least `floor` x that median: a centre of one row has radius 0), then both parts standardised
        on `val_feats`."""
        x = unit_rows(np.asarray(train_feats, np.float64))
        m = protos.members
        dist = np.maximum(1.0 - x @ protos.centroids.T.astype(np.float64), 0.0).reshape(len(x), m, -1)
        near = dist.argmin(axis=2)  # (N, M)
        k = dist.shape[2]
        radii = np.empty((m, k))
        for j in range(m):
            n = np.bincount(near[:, j], minlength=k)
            total = np.bincount(near[:, j], weights=dist[np.arange(len(x)), j, near[:, j]], minlength=k)
            radii[j] = floored_radii(np.where(n > 0, total / np.maximum(n, 1), np.nan), floor)
        plain, far = cls(protos.centroids, m, radii.reshape(-1)).parts(val_feats)
        return cls(protos.centroids, m, radii.reshape(-1), cls.norm_of(plain, far))

    def parts(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the prototypes' distance, the nearest distance in radii, averaged over the fits) of (N, D) features."""
        f = unit_rows(np.atleast_2d(np.asarray(feats, np.float64)))
        sims = f @ self.centroids.T.astype(np.float64)
        far = ((1.0 - sims).reshape(len(f), self.members, -1) * self._inv_r).min(axis=2).mean(axis=1)
        return 1.0 - self.nearest(sims), far

    def score_one(self, v: np.ndarray) -> float:
        """One (D,) float32 feature vector, the per-frame path: the prototypes' row dots, then a few calls on the
        K cosines."""
        cos = (row_dots(self.centroids, v) * (1.0 / length(v))).reshape(self.members, -1)
        return self._combine(1.0 - float(cos.max(axis=1).mean()), float(((1.0 - cos) * self._inv_r).min(axis=1).mean()))

    def meta(self) -> dict:
        return {**super().meta(), "radius_median": float(np.median(self.radii))}

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {**super().arrays(prefix), f"{prefix}radii": self.radii, f"{prefix}norm": self.norm}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "", shrinkage: float = 0.0) -> "RadiusPrototypes":
        return cls(arrays[f"{prefix}centroids"], _members(arrays, prefix), arrays[f"{prefix}radii"],
                   arrays[f"{prefix}norm"])
