"""The "neighbour-mix" uncertainty score: the prototypes' distance (edge/prototypes.py) averaged with the distance to
the nearest train feature in units of that feature's own radius (the mean distance to its nearest neighbours of its
class), each part standardised on validation images; and "neighbour-lite", the same in the train features' top
principal directions. Per frame by the int8 model of edge/score_model.py where calibration could build one, else by
NumPy; edge/ood.py wraps them in OodScore with the other scores.

It is radius-mix with every train feature edge-calibrate fits on as a radius centre instead of the k-means centres:
the density its second part measures is local to each train image (a local outlier factor, roughly), with no k-means
draw.
Leave-one-class-out and its per-frame cost: docs/cold-start.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .projection import Projection
from .prototypes import Prototypes, StandardisedPair, _members, floored_radii
from .score_model import Int8Score, ScoreModel, model_arrays, per_frame
from .vectors import length, row_dots, unit_rows

# Neighbours a train feature's radius is the mean distance to: a k-means centre served ~16 train features (1000
# features, 4-5 classes, 16 centres a class), so a feature's radius is measured over as many.
NEIGHBOURS = 16


@dataclass
class NeighbourMix(Int8Score, StandardisedPair, Prototypes):
    """The prototypes' cosine distance, averaged with the nearest of `rows` (unit train features) in units of each
    row's radius, both z-scored by `norm` (mean and sd on validation of the plain part, then the radius part)."""

    kind = "neighbour-mix"

    rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (N, D) unit rows; float16 stored
    radii: np.ndarray = field(default_factory=lambda: np.ones(0, np.float32))  # (N,)
    norm: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.0, 0.0, 1.0]))
    score_model: ScoreModel | None = None  # the per-frame work with int8 weights (edge/score_model.py), else NumPy

    def __post_init__(self) -> None:
        super().__post_init__()
        self.rows = np.ascontiguousarray(np.asarray(self.rows, np.float32))
        self.radii = np.asarray(self.radii, np.float32).reshape(-1)
        if len(self.radii) != len(self.rows) or not np.all(self.radii > 0):
            raise ValueError(f"{len(self.radii)} radii for {len(self.rows)} train features, or one not positive")
        self._inv_r = (1.0 / self.radii).astype(np.float32)
        self._take_norm()

    @classmethod
    def fit_rows(cls, protos: Prototypes, train_feats: np.ndarray, train_y: np.ndarray, val_feats: np.ndarray,
                 k: int = NEIGHBOURS, floor: float = 0.25) -> "NeighbourMix":
        """Each train feature's radius: its mean cosine distance to its `k` nearest others of its class (fewer in a
        small class; a class of one gets the median), at least `floor` x the median radius (duplicates have radius
        0). Then both parts standardised on `val_feats`. Rows are rounded to float16 first, as they are stored."""
        x = unit_rows(np.asarray(train_feats, np.float64)).astype(np.float16).astype(np.float64)
        y = np.asarray(train_y)
        radii = np.full(len(x), np.nan)
        for c in np.unique(y):
            i = np.flatnonzero(y == c)
            if len(i) < 2:
                continue
            d = np.maximum(1.0 - x[i] @ x[i].T, 0.0)
            np.fill_diagonal(d, np.inf)
            radii[i] = np.sort(d, axis=1)[:, :min(k, len(i) - 1)].mean(axis=1)
        radii = floored_radii(radii, floor)
        plain, far = cls(protos.centroids, protos.members, x, radii).parts(val_feats)
        return cls(protos.centroids, protos.members, x, radii, cls.norm_of(plain, far))

    def model_inputs(self) -> dict:
        return {"basis": None, "centres": self.centroids, "rows": self.rows, "members": self.members,
                "inv_r": self._inv_r}

    def _standardised(self, parts, model: ScoreModel) -> "NeighbourMix":
        return replace(self, norm=self.norm_of(*parts), score_model=model)

    def _exact_parts(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the prototypes' distance, the nearest row's distance in radii) of (N, D) features."""
        f = unit_rows(np.atleast_2d(np.asarray(feats, np.float64)))
        far = ((1.0 - f @ self.rows.T.astype(np.float64)) * self._inv_r).min(axis=1)
        return 1.0 - self.nearest(f @ self.centroids.T.astype(np.float64)), far

    def _score_one_exact(self, v: np.ndarray) -> float:
        """The centres' and the rows' dots, then a few calls."""
        inv = 1.0 / length(v)
        return self._of_cosines(self._nearest_one(v) * inv, row_dots(self.rows, v) * np.float32(inv))

    def _of_cosines(self, nearest: float, rows_cos: np.ndarray) -> float:
        """The score of a frame from its nearest centres' cosine (averaged over the fits) and its rows' cosines."""
        return self._combine(1.0 - nearest, float(((1.0 - rows_cos) * self._inv_r).min()))

    def meta(self) -> dict:
        return {**super().meta(), "neighbours": len(self.rows), "radius_median": float(np.median(self.radii)),
                "per_frame": per_frame(self.score_model)}

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {**super().arrays(prefix), f"{prefix}rows": self.rows.astype(np.float16), f"{prefix}radii": self.radii,
                f"{prefix}norm": self.norm, **model_arrays(self.score_model, prefix)}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "", shrinkage: float = 0.0, model: bool = True) -> "NeighbourMix":
        return cls(arrays[f"{prefix}centroids"], _members(arrays, prefix), arrays[f"{prefix}rows"],
                   arrays[f"{prefix}radii"], arrays[f"{prefix}norm"],
                   ScoreModel.from_arrays(arrays, prefix) if model else None)


# Principal directions neighbour-lite keeps. Leave-one-class-out (rule I, docs/cold-start.md; cached INT8 features,
# k-means draws 0-4): 192 of the 1280 flagged 53.6 / 46.0 / 49.9 % of the held-out class on three runs (exact
# neighbour-mix 54.8 / 48.7 / 51.1, radius-mix 50.3 / 42.3 / 46.8); 128 flagged 50.8 / 44.4 % on the first two. A
# frame reads the 192 x 1280 basis and (centres + rows) x 193 floats: 2.2 MB for 4 classes against radius-mix's 2.6 MB
# and neighbour-mix's 7.7 MB, and its time after an invoke goes with those bytes (~100 us a MB on an AMX Xeon), not
# with the arithmetic.
LITE_DIMS = 192


@dataclass
class NeighbourLite(Int8Score):
    """neighbour-mix computed in `projection`'s p + 1 dimensions (edge/projection.py): the frame mapped once, then
    the centres' and the rows' dots there; by `score_model` (int8 weights, edge/score_model.py) where edge-calibrate
    could build one, else by NumPy."""

    kind = "neighbour-lite"

    projection: Projection
    mix: NeighbourMix
    score_model: ScoreModel | None = None

    def __post_init__(self) -> None:
        p, m = self.projection.dims, self.mix
        if m.centroids.shape[1] != p + 1 or m.centroids[:, p].any() or m.rows[:, p].any():
            raise ValueError(f"neighbour-lite's centres and rows are {p} basis coordinates and a zero one")
        # a frame's residual coordinate meets only zeros: its cosines are the dots of P u alone, centres and rows
        # read as one matrix
        self._both = np.ascontiguousarray(np.concatenate([m.centroids[:, :p], m.rows[:, :p]]))

    @classmethod
    def fit(cls, train_feats: np.ndarray, train_y: np.ndarray, val_feats: np.ndarray, dims: int = LITE_DIMS,
            members: int = 1, seed: int = 0) -> "NeighbourLite":
        """The basis on the train features, then neighbour-mix's fit (k-means centres of `members` fits seeded as
        Prototypes.fit seeds them, the rows' radii, both parts standardised on `val_feats`) in its coordinates."""
        proj = Projection.fit(train_feats, dims)
        t = proj.train(train_feats)
        protos = Prototypes.fit(t, train_y, seed=seed, members=members)
        return cls(proj, NeighbourMix.fit_rows(protos, t, train_y, proj.frames(val_feats)))

    def model_inputs(self) -> dict:
        p, m = self.projection.dims, self.mix
        return {"basis": self.projection.basis, "centres": m.centroids[:, :p], "rows": m.rows[:, :p],
                "members": m.members, "inv_r": m._inv_r}

    def _standardised(self, parts, model: ScoreModel) -> "NeighbourLite":
        return replace(self, mix=replace(self.mix, norm=self.mix.norm_of(*parts)), score_model=model)

    def _exact_parts(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.mix._exact_parts(self.projection.frames(feats))

    def _combine(self, plain, far):
        return self.mix._combine(plain, far)

    def _score_one_exact(self, v: np.ndarray) -> float:
        """The basis' dots, then the centres' and rows'."""
        m, k = self.mix, len(self.mix.centroids)
        g = row_dots(self.projection.basis, v) * np.float32(1.0 / length(v))
        d = row_dots(self._both, g)
        return m._of_cosines(m._nearest_of(d[:k]), d[k:])

    def meta(self) -> dict:
        return {**self.mix.meta(), "dims": self.projection.dims, "per_frame": per_frame(self.score_model)}

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {**self.mix.arrays(prefix), f"{prefix}basis": self.projection.basis,
                **model_arrays(self.score_model, prefix)}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "", shrinkage: float = 0.0) -> "NeighbourLite":
        return cls(Projection(arrays[f"{prefix}basis"]), NeighbourMix.from_arrays(arrays, prefix, model=False),
                   ScoreModel.from_arrays(arrays, prefix))
