"""The "uncertain" score: how foreign an image looks to the model, higher = more foreign. NumPy only.

A bundle variant that outputs its pooled features (a second model output) carries a fitted score in
metadata.json (`calibration.variants[v].ood`) plus an .npz of its arrays; `Classifier` computes it per frame.
A bundle without them falls back to max-probability (1 - max p), so every bundle has a score.

Scores (all "higher = more foreign"):
- msp:         1 - max softmax probability (after temperature)
- mahalanobis: min over classes of the squared Mahalanobis distance of the pooled features to the class mean,
               one shared covariance with Ledoit-Wolf shrinkage (Lee et al. 2018, without input perturbation),
               its top directions exact and the rest isotropic (see DEFAULT_RANK)
- combined:    z-scored mahalanobis + z-scored msp, each standardised on in-distribution validation images
- prototypes:  1 - cosine similarity of the pooled features to the nearest of a few k-means centres per class
- relative:    prototypes minus the same distance to centres of a site's reviewed foreign images (needs them)
The leave-one-class-out experiments (benchmarks/open_set.py, open_set_tuned.py) also measure energy and kNN, which
need logits or a feature bank the deployed models do not carry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def msp_score(probs: np.ndarray) -> np.ndarray:
    return 1.0 - np.asarray(probs, np.float64).max(axis=-1)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """-T * logsumexp(logits / T), higher = more foreign (Liu et al. 2020)."""
    z = np.asarray(logits, np.float64) / temperature
    m = z.max(axis=-1, keepdims=True)
    return -temperature * (m[..., 0] + np.log(np.exp(z - m).sum(axis=-1)))


def knn_cosine_score(feats: np.ndarray, bank: np.ndarray, k: int = 1) -> np.ndarray:
    """Cosine distance to the k-th nearest feature of the (training) bank."""
    sim = unit_rows(np.asarray(feats, np.float64)) @ unit_rows(np.asarray(bank, np.float64)).T
    kth = -np.partition(-sim, k - 1, axis=1)[:, k - 1]
    return 1.0 - kth


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Shrunk covariance of centred rows `x` -> (covariance, shrinkage), as sklearn.covariance.ledoit_wolf."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    emp = x.T @ x / n
    mu = np.trace(emp) / d
    x2 = x ** 2
    beta_ = float(np.sum(x2.T @ x2))
    delta_ = float(np.sum(emp ** 2))
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2 * mu * np.trace(emp) + d * mu ** 2) / d
    shrink = 0.0 if delta <= 0 else min(max(beta, 0.0), delta) / delta
    cov = (1 - shrink) * emp
    cov[np.diag_indices(d)] += shrink * mu
    return cov, float(shrink)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (its direction)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _einsum_row_dots(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.einsum("kd,d->k", w, v)


# w @ v on one thread, by numpy's own loops: the vecdot ufunc (numpy >= 2) is the faster of the two after an invoke
_row_dots = getattr(np, "vecdot", None) or _einsum_row_dots


# Principal directions kept exactly by default; the rest share one variance (probabilistic PCA). A frame then reads
# a (r + C) x D float32 matrix: 350 KB at rank 64 for Lite0's 1280 features. Its size is the per-frame cost: the
# statistics are cache-cold after an invoke, and in edge-bench's interleaved timing (2 threads, INT8, Lite0 288)
# a 64-row product added 0-4 % to the frame, 133 rows 7-10 %, 260 rows 11-16 %, the old full 1280 x 1280 precision
# (6.5 MB) 20-39 %, although each takes 0.03-0.4 ms alone. Leave-one-class-out (benchmarks/open_set.py, frozen
# features) flagged 30.4 % of foreign images at rank 64, 31.9 % at 128, 33.6 % at full rank.
DEFAULT_RANK = 64


@dataclass
class Mahalanobis:
    """Class means + one shared covariance (Ledoit-Wolf shrunk), its top `rank` eigen-directions kept and the
    remaining ones given their mean variance `sigma2` (probabilistic PCA; rank >= D is the exact precision).

    With B = U_r * sqrt(1/sigma2 - 1/lambda) (D x r), the distance to class c is
        d(x, c) = |x - mu_c|^2 / sigma2 - |B'(x - mu_c)|^2,
    expanded so a frame costs one (r + C) x D product and a few dots."""

    means: np.ndarray  # (C, D) float32
    basis: np.ndarray  # (D, r) float32: B above
    sigma2: float
    shrinkage: float = 0.0

    def __post_init__(self) -> None:
        self.means = np.asarray(self.means, np.float32)
        self.basis = np.asarray(self.basis, np.float32)
        # d(x, c) = x'x / sigma2 - a'a - 2 x'g_c + k_c with a = B'x and g_c = mu_c / sigma2 - B B'mu_c: one
        # (r + C) x D product per frame, rows contiguous, and the rest on r + C numbers.
        m64, b64 = self.means.astype(np.float64), self.basis.astype(np.float64)
        bm = m64 @ b64  # (C, r): B' mu_c
        g = m64 / self.sigma2 - bm @ b64.T
        self._w = np.ascontiguousarray(np.concatenate([b64.T, g]).astype(np.float32))  # (r + C, D)
        self._k = np.einsum("cd,cd->c", m64, m64) / self.sigma2 - np.einsum("cr,cr->c", bm, bm)
        self._k_list = self._k.tolist()

    @property
    def rank(self) -> int:
        return self.basis.shape[1]

    def meta(self) -> dict:
        return {"shrinkage": self.shrinkage, "rank": self.rank}  # informational: the arrays carry the rank

    @classmethod
    def fit(cls, feats: np.ndarray, labels: np.ndarray, rank: int | None = DEFAULT_RANK) -> "Mahalanobis":
        """`rank` None or >= D: the exact shrunk precision."""
        feats = np.asarray(feats, np.float64)
        labels = np.asarray(labels)
        classes = np.unique(labels)
        means = np.stack([feats[labels == c].mean(0) for c in classes])
        cov, shrink = ledoit_wolf(feats - means[np.searchsorted(classes, labels)])
        lam, u = np.linalg.eigh(cov)  # ascending
        lam = np.maximum(lam, 1e-12)
        d = len(lam)
        r = d if rank is None or rank >= d else max(int(rank), 1)
        sigma2 = float(lam[0]) if r == d else float(lam[:d - r].mean())
        top, lam_top = u[:, d - r:], lam[d - r:]
        basis = top * np.sqrt(np.maximum(1.0 / sigma2 - 1.0 / lam_top, 0.0))
        return cls(means, basis, sigma2, shrink)

    def score(self, feats: np.ndarray) -> np.ndarray:
        f = np.atleast_2d(np.asarray(feats, np.float32))
        r = self.rank
        if len(f) == 1:
            return np.array([self.score_one(f[0])])
        y = (f @ self._w.T).astype(np.float64)
        xx = np.einsum("nd,nd->n", f, f).astype(np.float64)
        a = y[:, :r]
        return xx / self.sigma2 - np.einsum("nr,nr->n", a, a) + (self._k[None] - 2.0 * y[:, r:]).min(axis=1)

    def score_one(self, v: np.ndarray) -> float:
        """The distance of one (D,) float32 feature vector: the per-frame path. Right after an invoke the CPU's
        caches hold the model, not numpy's or the interpreter's code: a 69-step Python loop then takes 16 us
        instead of 2 (measured, INT8 Lite0 288 at 2 threads), so this makes five numpy calls and loops over C
        numbers only. Row dot products (numpy's vecdot, einsum before numpy 2), not BLAS: a BLAS gemv spreads
        over threads, which on a busy 2-core machine made a 1280-wide product cost milliseconds next to the
        interpreter's threads (measured)."""
        y = _row_dots(self._w, v)
        a = y[:self.rank]
        near = min(k - 2.0 * t for k, t in zip(self._k_list, y[self.rank:].tolist()))
        return float(v @ v) / self.sigma2 - float(a @ a) + near  # 1-D dots: BLAS sdot, one thread

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {f"{prefix}means": self.means, f"{prefix}basis": self.basis,
                f"{prefix}sigma2": np.array(self.sigma2, np.float64)}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "", shrinkage: float = 0.0) -> "Mahalanobis":
        if f"{prefix}basis" not in arrays and f"{prefix}precision" in arrays:
            return cls._from_precision(arrays, prefix, shrinkage)
        return cls(arrays[f"{prefix}means"], arrays[f"{prefix}basis"], float(arrays[f"{prefix}sigma2"]), shrinkage)

    @classmethod
    def _from_precision(cls, arrays, prefix: str, shrinkage: float) -> "Mahalanobis":
        """Bundles calibrated before the low-rank form stored the full precision P and P mu_c: the same
        distances, exactly, at rank D (their threshold still holds)."""
        prec = np.asarray(arrays[f"{prefix}precision"], np.float64)
        means = np.linalg.solve(prec, np.asarray(arrays[f"{prefix}p_means"], np.float64)).T
        p, u = np.linalg.eigh((prec + prec.T) / 2)  # p = 1 / lambda
        top = float(p.max())
        return cls(means, u * np.sqrt(np.maximum(top - p, 0.0)), 1.0 / top, shrinkage)


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
        d = _row_dots(self.centroids, v)
        return float(d.max()) if self.members == 1 else float(d.reshape(self.members, -1).max(axis=1).mean())

    def score_one(self, v: np.ndarray) -> float:
        """One (D,) float32 feature vector, the per-frame path (see Mahalanobis.score_one): three numpy calls for one
        fit, two more for several."""
        return 1.0 - self._nearest_one(v) / max(float(v @ v), 1e-24) ** 0.5

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
class RelativePrototypes(Prototypes):
    """The prototypes' distance minus the distance to the nearest centre of a site's reviewed foreign images
    (`_foreign/`): a frame that looks like a foreign object the site has already seen scores high even where it lies
    near a class, which the class centres alone cannot tell (benchmarks/field_foreign.py measured it)."""

    foreign: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (F, D) float32, unit rows

    def __post_init__(self) -> None:
        super().__post_init__()
        self.foreign = np.ascontiguousarray(np.asarray(self.foreign, np.float32))

    @classmethod
    def fit_foreign(cls, protos: Prototypes, foreign_feats: np.ndarray, seed: int = 0) -> "RelativePrototypes":
        x = unit_rows(np.asarray(foreign_feats, np.float64))
        return cls(protos.centroids, protos.members, spherical_kmeans(x, foreign_centres(len(x)), seed))

    def score(self, feats: np.ndarray) -> np.ndarray:
        f = unit_rows(np.atleast_2d(np.asarray(feats, np.float64)))
        near_class = self.nearest(f @ self.centroids.T.astype(np.float64))
        return (f @ self.foreign.T.astype(np.float64)).max(axis=1) - near_class

    def score_one(self, v: np.ndarray) -> float:
        """(nearest foreign cosine - nearest class cosine): the difference of the two distances, per frame."""
        near = float(_row_dots(self.foreign, v).max()) - self._nearest_one(v)
        return near / max(float(v @ v), 1e-24) ** 0.5

    def meta(self) -> dict:
        return {**super().meta(), "foreign_prototypes": len(self.foreign)}

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {**super().arrays(prefix), f"{prefix}foreign_centroids": self.foreign}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "", shrinkage: float = 0.0) -> "RelativePrototypes":
        return cls(arrays[f"{prefix}centroids"], _members(arrays, prefix), arrays[f"{prefix}foreign_centroids"])


# Each kind of score -> the feature statistics it reads (None: the probabilities alone).
FEATURE_STATS: dict[str, type | None] = {"msp": None, "mahalanobis": Mahalanobis, "combined": Mahalanobis,
                                         "prototypes": Prototypes, "relative": RelativePrototypes}
KINDS = tuple(FEATURE_STATS)


@dataclass
class OodScore:
    """A fitted score and its threshold: `score(probs, feats) > threshold` means "uncertain"."""

    kind: str = "msp"
    threshold: float = float("inf")
    stats: Mahalanobis | Prototypes | RelativePrototypes | None = None
    # combined: (mean, std) of each part on in-distribution validation images
    norm: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def needs_features(self) -> bool:
        return FEATURE_STATS[self.kind] is not None

    def frame_score(self, probs: np.ndarray, feats: np.ndarray | None) -> float:
        """`score` of one frame ((C,) probabilities, (1, D) or (D,) features) as a float, with as few numpy calls
        as the per-frame budget allows (edge-bench: "scored" against "probs")."""
        if feats is None or self.stats is None:
            return float(self.score(probs, feats)[0])
        v = feats.reshape(-1) if isinstance(feats, np.ndarray) and feats.dtype == np.float32 else \
            np.asarray(feats, np.float32).reshape(-1)
        d = self.stats.score_one(v)
        return self._combined(d, 1.0 - float(probs.max())) if self.kind == "combined" else d

    def _combined(self, maha, msp):
        """z-scored Mahalanobis + z-scored max-probability score (arrays or floats)."""
        (mm, ms), (pm, ps) = self.norm["mahalanobis"], self.norm["msp"]
        return (maha - mm) / ms + (msp - pm) / ps

    def score(self, probs: np.ndarray, feats: np.ndarray | None = None) -> np.ndarray:
        probs = np.atleast_2d(probs)
        if self.kind == "msp":
            return msp_score(probs)
        if feats is None or self.stats is None:
            raise ValueError(f"the {self.kind} score needs the model's feature output")
        d = self.stats.score(feats)
        return self._combined(d, msp_score(probs)) if self.kind == "combined" else d

    def to_meta(self) -> dict:
        d = {"kind": self.kind, "threshold": float(self.threshold)}
        if self.stats is not None:
            d.update(self.stats.meta())
        if self.norm:
            d["norm"] = {k: [float(a), float(b)] for k, (a, b) in self.norm.items()}
        return d

    @classmethod
    def from_meta(cls, meta: dict, arrays=None) -> "OodScore":
        kind = meta.get("kind", "msp")
        if kind not in KINDS:
            raise ValueError(f"unknown uncertainty score {kind!r}; known: {', '.join(KINDS)}")
        stats = None
        if FEATURE_STATS[kind] is not None:
            if arrays is None:
                raise ValueError(f"the {kind} score needs its arrays file")
            stats = FEATURE_STATS[kind].from_arrays(arrays, shrinkage=float(meta.get("shrinkage", 0.0)))
        norm = {k: (float(v[0]), float(v[1])) for k, v in meta.get("norm", {}).items()}
        return cls(kind, float(meta.get("threshold", float("inf"))), stats, norm)


def threshold_for_rate(in_dist_scores: np.ndarray, flag_rate: float) -> float:
    """The threshold flagging (score > t) at most `flag_rate` of in-distribution images, halfway between the last
    accepted and the first flagged score so float round-off on a device cannot move an image across it."""
    s = np.sort(np.asarray(in_dist_scores, np.float64))
    if len(s) == 0:
        raise ValueError("cannot choose a threshold on zero images")
    keep = int(np.ceil((1.0 - flag_rate) * len(s) - 1e-9))
    keep = min(max(keep, 1), len(s))
    if keep == len(s):
        return float(s[-1] + max(abs(s[-1]) * 1e-6, 1e-9))
    return float((s[keep - 1] + s[keep]) / 2)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """P(foreign score > in-distribution score), ties half: the Mann-Whitney form, no sklearn needed."""
    a, b = np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    allv = np.concatenate([a, b])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sv = allv[order]
    # average ranks over ties
    i = 0
    while i < len(sv):
        j = i
        while j + 1 < len(sv) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    rb = ranks[len(a):].sum()
    return float((rb - len(b) * (len(b) + 1) / 2) / (len(a) * len(b)))


def load_for_variant(bundle, variant: str) -> OodScore | None:
    """The fitted score of `variant` from `bundle.calibration["ood_by_variant"]`, its arrays file checked against
    its sha256 and confined to the bundle directory; None when the bundle has none (old bundles: max-prob)."""
    from .bundle import BundleError

    meta = bundle.calibration.get("ood_by_variant", {}).get(variant)
    if not meta:
        return None
    arrays = None
    rel = meta.get("file")
    if rel:
        root = bundle.path.resolve()
        path = (root / rel).resolve()
        if root not in path.parents:
            raise BundleError(f"uncertainty-score file {rel!r} of {variant} points outside the bundle {root}")
        bundle.verify([rel])
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    return OodScore.from_meta(meta, arrays)
