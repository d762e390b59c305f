"""Can images made from the train set stand in for foreign objects before a site has reviewed any (issue 15's cold
start)? Leave-one-class-out, on the fold bundles of benchmarks/open_set_tuned.py (class k never trained, INT8).

The relative score (edge/prototypes.py RelativePrototypes) flags a frame nearer a foreign centre than a class
centre. Here its foreign centres come from synthetic images built from the bundle's own train images, never from
class k:
- `mixup`: a half-and-half pixel blend of two train images of different classes;
- `mosaic`: four quadrants cut in place from four train images of at least two classes;
- `jigsaw`: one train image cut into a 4 x 4 grid whose tiles are shuffled (texture kept, shape lost);
- `midpoints`: no images, the unit sum of two train features of different classes ("between classes").
Each is thresholded at `--flag-rate` of the calibration split (in-distribution flagged cross-fitted on it) and
measured on every image of class k, against the prototypes score that ships with no foreign images.

    python -m trashcam.benchmarks.synthetic_foreign --loco runs/loco --data ../shared/data/trashnet5
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .crossfit import flagged_crossfit
from .loco_features import (fold_dirs, fold_features, loco_parser, outputs, pct, table_head, table_row,
                            write_results)
from .open_set_tuned import VARIANT

KINDS = ("mixup", "mosaic", "jigsaw", "midpoints")


def other_class_pairs(y: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` index pairs (i, j) with y[i] != y[j]."""
    i = rng.integers(len(y), size=n)
    j = np.array([rng.choice(np.flatnonzero(y != y[a])) for a in i])
    return i, j


def mixup(x: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    i, j = other_class_pairs(y, n, rng)
    return ((x[i].astype(np.float32) + x[j]) / 2).round().astype(x.dtype)


def mosaic(x: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    i, j = other_class_pairs(y, n, rng)
    k, m = rng.integers(len(y), size=(2, n))
    out = x[i].copy()
    h, w = x.shape[1] // 2, x.shape[2] // 2
    out[:, :h, w:], out[:, h:, :w], out[:, h:, w:] = x[j, :h, w:], x[k, h:, :w], x[m, h:, w:]
    return out


def jigsaw(x: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator, grid: int = 4) -> np.ndarray:
    src = x[rng.integers(len(y), size=n)]
    h, w = x.shape[1] // grid, x.shape[2] // grid
    src = src[:, :h * grid, :w * grid]
    tiles = src.reshape(n, grid, h, grid, w, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, grid * grid, h, w, 3)
    tiles = np.stack([t[rng.permutation(grid * grid)] for t in tiles])
    out = x[:n].copy()
    out[:, :h * grid, :w * grid] = (tiles.reshape(n, grid, grid, h, w, 3).transpose(0, 1, 3, 2, 4, 5)
                                    .reshape(n, h * grid, w * grid, 3))
    return out


IMAGE_KINDS = {"mixup": mixup, "mosaic": mosaic, "jigsaw": jigsaw}


def fold(bundle_dir: Path, data: Path, held_out: str, n: int, seeds: tuple[int, ...], rate: float,
         threads: int) -> dict:
    from trashcam.calibration.ood import _subsample
    from trashcam.edge.bundle import Bundle
    from trashcam.edge.imageset import split_images
    from trashcam.edge.ood import auroc
    from trashcam.edge.prototypes import Prototypes, RelativePrototypes
    from trashcam.edge.runtime import Classifier
    from trashcam.edge.vectors import unit_rows

    F = fold_features(bundle_dir, data, held_out, threads)
    bundle = Bundle.load(bundle_dir)
    clf = Classifier(bundle, VARIANT, threads)
    train = split_images(bundle, "train")
    keep = _subsample(train.y, 1000)  # the images fold_features' train_f came from
    tx, ty = train.x[keep], train.y[keep]
    cal_f, foreign_f = F["cal_f"], F["foreign_f"]
    protos = Prototypes.fit(F["train_f"], ty)
    rows = []

    def row(kind: str, seed: int, score) -> None:
        s_in, s_out = score(cal_f), score(foreign_f)
        in_flag, thr = flagged_crossfit(s_in, rate)
        rows.append({"kind": kind, "seed": seed, "in_dist_flagged": in_flag,
                     "foreign_flagged": float(np.mean(s_out > thr)), "auroc": auroc(s_in, s_out)})

    row("prototypes", 0, protos.score)
    for seed in seeds:
        for kind in KINDS:
            rng = np.random.default_rng(seed)
            if kind == "midpoints":
                i, j = other_class_pairs(ty, n, rng)
                u = unit_rows(np.asarray(F["train_f"], np.float64))
                neg = u[i] + u[j]
            else:
                _, neg = outputs(clf, IMAGE_KINDS[kind](tx, ty, n, rng))
            rel = RelativePrototypes.fit_foreign(protos, neg, seed)
            row(kind, seed, rel.score)
            print(f"{held_out} seed {seed} {kind}: {rows[-1]}", flush=True)
    return {"held_out": held_out, "foreign_images": len(foreign_f), "calibration_images": len(cal_f), "rows": rows}


def summarise(folds: list[dict]) -> list[dict]:
    out = []
    for kind in ("prototypes", *KINDS):
        seeds = sorted({r["seed"] for f in folds for r in f["rows"] if r["kind"] == kind})
        per_seed = []
        for s in seeds:
            rs = [r for f in folds for r in f["rows"] if (r["kind"], r["seed"]) == (kind, s)]
            per_seed.append({"seed": s, "foreign_flagged_mean": float(np.mean([r["foreign_flagged"] for r in rs])),
                             "worst": float(np.min([r["foreign_flagged"] for r in rs])),
                             "per_fold": [r["foreign_flagged"] for r in rs],
                             "in_dist_flagged_mean": float(np.mean([r["in_dist_flagged"] for r in rs])),
                             "auroc_mean": float(np.mean([r["auroc"] for r in rs]))})
        out.append({"kind": kind, "seeds": per_seed,
                    "foreign_flagged_mean": float(np.mean([p["foreign_flagged_mean"] for p in per_seed])),
                    "in_dist_flagged_mean": float(np.mean([p["in_dist_flagged_mean"] for p in per_seed]))})
    return out


def markdown(folds: list[dict], summary: list[dict]) -> str:
    held = [f["held_out"] for f in folds]
    md = table_head("Synthetic foreign images for the relative score, no real ones (leave-one-class-out, INT8)",
                    ["negatives", "seed", "foreign flagged, mean", "worst"], held,
                    ["in-distribution flagged (cross-fitted)", "AUROC"])
    for s in summary:
        for p in s["seeds"]:
            md.append(table_row([s["kind"], p["seed"], pct(p["foreign_flagged_mean"]), pct(p["worst"])],
                                p["per_fold"], [pct(p["in_dist_flagged_mean"]), f"{p['auroc_mean']:.3f}"]))
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    p = loco_parser(__doc__)
    p.add_argument("--images", type=int, default=400, help="synthetic images of each kind per fold and seed")
    p.add_argument("--seeds", default="0,1,2")
    a = p.parse_args(argv)
    seeds = tuple(int(s) for s in a.seeds.split(","))
    folds = [fold(d / "bundle", a.data.resolve(), d.name, a.images, seeds, a.flag_rate, a.threads)
             for d in fold_dirs(a.loco)]
    summary = summarise(folds)
    write_results(a.loco, "synthetic_foreign", {"folds": folds, "summary": summary}, markdown(folds, summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
