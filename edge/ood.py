"""The "uncertain" score: how foreign an image looks to the model, higher = more foreign. NumPy, and for the
neighbour and relative scores' per-frame work a tiny int8 TFLite model where edge-calibrate built one
(edge/score_model.py).

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
- radius-mix:  z-scored prototypes + z-scored distance in units of each centre's radius, averaged
- neighbour-mix: z-scored prototypes + z-scored distance in units of each train feature's own radius, averaged
- neighbour-lite: neighbour-mix in the train features' top principal directions plus a residual coordinate
- neighbour-max: neighbour-lite on the unit pooled features beside the unit per-channel maxima of the same feature
               map (the converted models' third output, train/features.py): what a frame's strongest parts look like,
               not only their average
- relative:    prototypes minus the same distance to centres of a site's reviewed foreign images (needs them)
The leave-one-class-out experiments (benchmarks/open_set.py, open_set_tuned.py) also measure energy, which needs the
logits the deployed models do not output, and the plain nearest-neighbour distance.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .neighbours import NeighbourLite, NeighbourMix
from .prototypes import Prototypes, RadiusPrototypes, RelativePrototypes
from .vectors import length, row_dots, unit_rows


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
        y = row_dots(self._w, v)
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


# Each kind of score -> the feature statistics it reads (None: the probabilities alone).
FEATURE_STATS: dict[str, type | None] = {"msp": None, "mahalanobis": Mahalanobis, "combined": Mahalanobis,
                                         "prototypes": Prototypes, "radius-mix": RadiusPrototypes,
                                         "neighbour-mix": NeighbourMix, "neighbour-lite": NeighbourLite,
                                         "neighbour-max": NeighbourLite, "relative": RelativePrototypes}
KINDS = tuple(FEATURE_STATS)
# Kinds that read the pooled features and their maxima side by side (`both`) instead of the features alone.
READS_MAXIMA = ("neighbour-max",)


def both(feats: np.ndarray, maxes: np.ndarray) -> np.ndarray:
    """(N, 2D): each image's unit pooled features beside its unit per-channel maxima, so that neither part's scale
    outweighs the other's."""
    return np.concatenate([unit_rows(np.atleast_2d(feats)), unit_rows(np.atleast_2d(maxes))], axis=-1)


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

    @property
    def reads_maxima(self) -> bool:
        return self.kind in READS_MAXIMA

    def runs_on(self, engine) -> bool:
        """Whether `engine` outputs what this score reads (models converted before an output was added do not)."""
        return (not self.needs_features or getattr(engine, "has_features", False)) and \
            (not self.reads_maxima or getattr(engine, "has_features_max", False))

    def features_of(self, feats: np.ndarray | None, maxes: np.ndarray | None) -> np.ndarray | None:
        """What `score` reads of a model's (N, D) pooled features and (N, D) maxima."""
        if not self.reads_maxima or feats is None:
            return feats
        return None if maxes is None else both(feats, maxes)

    def frame_features(self, engine) -> np.ndarray | None:
        """What `frame_score` reads of the frame `engine` just ran (its outputs de-quantised only when read)."""
        if not self.needs_features:
            return None
        f = engine.features()
        if not self.reads_maxima:
            return f
        # one frame: `both` in four NumPy calls (the per-frame budget, edge-bench "scored" against "probs")
        f, m = f.reshape(-1), engine.features_max().reshape(-1)
        return np.concatenate([f * np.float32(1.0 / length(f)), m * np.float32(1.0 / length(m))])

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


def conformal_keep(n: int, flag_rate: float) -> int:
    """How many of n calibration scores split conformal keeps below the threshold: ceil((1 - rate)(n + 1)). Above n
    (fewer than 1 / rate - 1 images) no threshold keeps the promise: the highest one still flags 1 / (n + 1)."""
    return int(np.ceil((1.0 - flag_rate) * (n + 1) - 1e-9))


def kept(n: int, flag_rate: float) -> int:
    """conformal_keep within the n scores there are (at least one, at most all)."""
    return min(max(conformal_keep(n, flag_rate), 1), n)


def new_flagged_expected(n: int, flag_rate: float) -> float:
    """Probability that a new in-distribution image falls above threshold_for_rate's threshold on n calibration
    scores: (n + 1 - kept) / (n + 1), 4.74 % at n = 252 for a rate of 5 %; 1 / (n + 1) with too few images."""
    return (n + 1 - kept(n, flag_rate)) / (n + 1)


def threshold_for_rate(in_dist_scores: np.ndarray, flag_rate: float) -> float:
    """The threshold (score > t flags) above which a new in-distribution image falls with probability at most
    `flag_rate`: split conformal, the ceil((1 - rate)(n + 1))-th smallest of the n scores kept below it. Keeping
    ceil((1 - rate) n) flagged `rate` of these images but 5.1 % of new ones at n = 252 and 5.5 % at 126 for a rate of
    5 %; this rank gives 4.7 % at both. The threshold sits on the kept score itself, 1e-4 of it above (a frame's
    score and the calibration batch's differ by ~2e-6 of it, so the calibrating machine's images stay where they
    were counted), not halfway to the next score: halfway gave ~4.55 % at 252 and ~4.3 % at 126 (stop 53), less than
    the rate asked for no guarantee gained."""
    s = np.sort(np.asarray(in_dist_scores, np.float64))
    if len(s) == 0:
        raise ValueError("cannot choose a threshold on zero images")
    keep = kept(len(s), flag_rate)
    last = s[keep - 1]
    guard = max(abs(last) * 1e-4, 1e-9)
    return float(last + (guard if keep == len(s) else min(guard, (s[keep] - last) / 2)))


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
