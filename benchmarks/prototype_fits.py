"""How much of the prototypes score's cold-start number is the k-means draw, and does another fit of the same
centres flag more foreign objects (issue 15, no foreign images)? Leave-one-class-out, on the fold bundles of
benchmarks/open_set_tuned.py (class k never trained, INT8 outputs as the device computes them,
benchmarks/loco_features.py).

Until 2026-12-05 edge-calibrate fitted 16 centres a class with one k-means++ start (seed 0); since then it averages
8 such fits (`ensemble` below, chosen here), and scores them by `radius-mix` (chosen here later the same day). Fits
compared, each for every seed:

- kmeans:   one fit, seeded by the seed;
- restarts: `--restarts` k-means++ starts a class, the lowest objective (sum of 1 - best cosine) kept;
- kcenter:  greedy farthest-point centres (the seed draws the first), then k-means from them;
- ensemble: the mean of `--members` k-means scores (seeds M*s .. M*s+M-1; edge/prototypes.py Prototypes(members=M)), M
  times the centres on the device.
- radius:   the ensemble's centres, each distance divided by its centre's radius (the mean distance of the train rows
  nearest it in its fit): a frame a little off a tight centre counts as far as one well off a loose one. Measured on
  the three LOCO runs: +7.1 / +8.1 / -1.5 pp, the glass fold 6-12 pp lower on each (docs/cold-start.md).
- radius-mix: the mean of the ensemble's and radius' scores, each standardised on the calibration split (as
  `combined` standardises its two parts; edge/prototypes.py RadiusPrototypes, what edge-calibrate fits): +5.9 / +6.2
  / +2.0 pp on the three runs, the worst fold 2.6 pp lower on seed 42 only; +7.2 pp on a fourth run trained to
  confirm it, its worst fold 0.2 pp lower (docs/cold-start.md).
- neighbour-mix: radius-mix's radius part with every train feature as a centre, each its own radius (the mean
  distance to its 16 nearest of its class; edge/neighbours.py).
- neighbour-lite: neighbour-mix in the train features' top principal directions (edge/projection.py), its own
  k-means centres there.

Each is thresholded at `--flag-rate` of the calibration split (in-distribution flagged cross-fitted on it) and
measured on every image of class k. Reported per fit: the mean over folds and seeds, the worst fold's mean, the
spread a seed brings (per fold, the standard deviation over seeds, averaged over folds; and the range of the
5-fold mean over seeds). Measured on four LOCO runs in docs/cold-start.md.

    python -m trashcam.benchmarks.prototype_fits --loco runs/loco --data ../shared/data/trashnet5
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .loco_features import (fold_dirs, fold_features, loco_parser, pct, seed_rows, seed_summary, table_head, table_row,
                            write_results)

Scorer = Callable[[np.ndarray], np.ndarray]


def _by_class(x: np.ndarray, y: np.ndarray, centres: Callable[[np.ndarray], np.ndarray]) -> Scorer:
    """The prototypes score on the centres `centres` finds in each class's unit rows."""
    from trashcam.edge.prototypes import Prototypes
    from trashcam.edge.vectors import unit_rows

    x = unit_rows(np.asarray(x, np.float64))
    return Prototypes(np.concatenate([centres(x[y == c]) for c in np.unique(y)])).score


def objective(x: np.ndarray, c: np.ndarray) -> float:
    """What spherical k-means lowers: the sum over rows of 1 - the best cosine."""
    return float(np.sum(1.0 - (x @ c.T).max(axis=1)))


def kcenter_start(x: np.ndarray, k: int, first: int) -> np.ndarray:
    """Greedy farthest-point centres (Gonzalez): each next centre is the row farthest from those chosen."""
    idx, far = [first], 1.0 - x @ x[first]
    for _ in range(1, min(k, len(x))):
        idx.append(int(far.argmax()))
        far = np.minimum(far, 1.0 - x @ x[idx[-1]])
    return x[idx]


def fit(kind: str, x: np.ndarray, y: np.ndarray, seed: int, restarts: int = 5, members: int = 8) -> Scorer:
    """A score (features -> higher is more foreign) fitted the way `kind` names."""
    from trashcam.edge.prototypes import PROTOTYPES_PER_CLASS as K, Prototypes, spherical_kmeans

    if kind in ("kmeans", "ensemble"):  # edge-calibrate's own fit: one, or `members` averaged
        return Prototypes.fit(x, y, seed=seed, members=members if kind == "ensemble" else 1).score
    if kind == "restarts":
        starts = np.random.default_rng(seed).integers(2 ** 31, size=restarts)
        return _by_class(x, y, lambda xc: min((spherical_kmeans(xc, K, int(s)) for s in starts),
                                              key=lambda c: objective(xc, c)))
    if kind == "kcenter":
        first = np.random.default_rng(seed)
        return _by_class(x, y, lambda xc: spherical_kmeans(xc, K, init=kcenter_start(xc, K,
                                                                                     int(first.integers(len(xc))))))
    raise ValueError(f"unknown fit {kind!r}")


FITS = ("kmeans", "restarts", "kcenter", "ensemble")  # radius: on request (--fits)


def fold(F: dict, kinds: tuple[str, ...], seeds: tuple[int, ...], rate: float, **kw) -> list[dict]:
    def scores(kind, seed):
        if kind in ("radius", "radius-mix", "neighbour-mix", "neighbour-lite"):  # standardised on calibration
            from trashcam.edge.neighbours import NeighbourLite, NeighbourMix
            from trashcam.edge.prototypes import Prototypes, RadiusPrototypes

            if kind == "neighbour-lite":  # its own centres, in its projection
                lite = NeighbourLite.fit(F["train_f"], F["train_y"], F["cal_f"], members=kw.get("members", 8),
                                         seed=seed).with_model(F["cal_f"])  # as edge-calibrate fits it
                return lite.score(F["cal_f"]), lite.score(F["foreign_f"])
            protos = Prototypes.fit(F["train_f"], F["train_y"], seed=seed, members=kw.get("members", 8))
            if kind == "neighbour-mix":
                near = NeighbourMix.fit_rows(protos, F["train_f"], F["train_y"], F["cal_f"])
                score = near.with_model(F["cal_f"]).score
            else:
                mix = RadiusPrototypes.fit_radii(protos, F["train_f"], F["cal_f"])
                score = mix.score if kind == "radius-mix" else lambda f: mix.parts(f)[1]
        else:
            score = fit(kind, F["train_f"], F["train_y"], seed, **kw)
        return score(F["cal_f"]), score(F["foreign_f"])
    return seed_rows("fit", kinds, seeds, rate, scores)


def summarise(folds: dict[str, list[dict]]) -> list[dict]:
    """seed_summary per fit, and the spread a seed brings: per fold the sd over seeds, averaged over folds, and the
    range of the 5-fold mean over seeds."""
    out = []
    for kind in dict.fromkeys(r["fit"] for rs in folds.values() for r in rs):
        s = seed_summary(folds, "fit", kind)
        grid = np.array([[r["foreign_flagged"] for r in rs if r["fit"] == kind] for rs in folds.values()])
        out.append({**s, "fold_sd_over_seeds": float(grid.std(axis=1, ddof=1).mean()) if grid.shape[1] > 1 else 0.0,
                    "mean_range_over_seeds": max(s["by_seed"]) - min(s["by_seed"])})
    return out


def markdown(summary: list[dict]) -> str:
    held = list(summary[0]["per_fold"])
    md = table_head("Fits of the prototypes' centres (leave-one-class-out, INT8, mean over seeds)",
                    ["fit", "foreign flagged, mean", "worst fold", "fold sd over seeds", "range of the mean"], held,
                    ["in-distribution flagged (cross-fitted)", "AUROC"])
    for s in summary:
        md.append(table_row([s["fit"], pct(s["foreign_flagged_mean"]), pct(s["worst_fold"]),
                             f"{100 * s['fold_sd_over_seeds']:.1f} pp", f"{100 * s['mean_range_over_seeds']:.1f} pp"],
                            [s["per_fold"][k] for k in held],
                            [pct(s["in_dist_flagged_mean"]), f"{s['auroc_mean']:.3f}"]))
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    p = loco_parser(__doc__)
    p.add_argument("--fits", default=",".join(FITS), help=f"comma-separated, of {', '.join(FITS)}, radius, radius-mix, "
                                                                 "neighbour-mix, neighbour-lite")
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1")
    p.add_argument("--restarts", type=int, default=5)
    p.add_argument("--members", type=int, default=8)
    a = p.parse_args(argv)
    kinds = tuple(a.fits.split(","))
    folds = {d.name: fold(fold_features(d / "bundle", a.data.resolve(), d.name, a.threads), kinds,
                          tuple(range(a.seeds)), a.flag_rate, restarts=a.restarts, members=a.members)
             for d in fold_dirs(a.loco)}
    summary = summarise(folds)
    write_results(a.loco, "prototype_fits", {"folds": folds, "summary": summary, "restarts": a.restarts,
                                             "members": a.members}, markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
