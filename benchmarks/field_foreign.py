"""What reviewing a site's foreign objects buys the "uncertain" score (issue 15's field loop), leave-one-class-out.

On each fold bundle of benchmarks/open_set_tuned.py (class k never trained, INT8, calibrated), class k plays a site's
foreign object. Its images are split once into "new" images, on which flagging is measured and nothing is fitted,
and a pool that a user would review into `_foreign/`: the first n of it are the reviewed images R. Scores, each
thresholded at `--flag-rate` of the bundle's calibration split (cross-fitted: threshold on one half, flagged counted
on the other, both ways):
- `prototypes`: the nearest of 16 class centres, cosine (8 k-means fits), what shipped with no foreign images until
  2026-12-05; `radius-mix` (edge/prototypes.py RadiusPrototypes): what shipped with none until 2026-12-06;
  `neighbour-lite` (edge/neighbours.py NeighbourLite): what ships with none since;
- `auto`: what edge-calibrate does today with foreign images, the kind among msp / mahalanobis / combined /
  prototypes that flags most of R;
- `relative` (edge/prototypes.py RelativePrototypes, auto's choice with foreign images since this measurement): the
  prototypes' distance minus the distance to the nearest of a few centres of R's features, so a frame that looks
  like a reviewed foreign object scores high even where it is near a class.

    python -m trashcam.benchmarks.field_foreign --loco runs/loco --data ../shared/data/trashnet5
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .crossfit import flagged_crossfit
from .loco_features import fold_dirs, fold_features, loco_parser, pct, table_head, table_row, write_results

# the kinds edge-calibrate's auto chose among by the foreign images they flag, before the relative score
PICKED_FROM = ("prototypes", "msp", "mahalanobis", "combined")


def fold(bundle_dir: Path, data: Path, held_out: str, sizes: tuple[int, ...], rate: float, threads: int) -> dict:
    from trashcam.calibration.ood import fit_ood
    from trashcam.edge.bundle import Bundle
    from trashcam.edge.neighbours import NeighbourLite
    from trashcam.edge.prototypes import Prototypes, RadiusPrototypes, RelativePrototypes, prototype_fits

    F = fold_features(bundle_dir, data, held_out, threads)
    train_f, train_y, cal_p, cal_f = F["train_f"], F["train_y"], F["cal_p"], F["cal_f"]
    order = np.random.default_rng(0).permutation(len(F["foreign_f"]))
    new, pool = order[:len(order) // 2], order[len(order) // 2:]
    new_p, new_f, rev_p, rev_f = F["foreign_p"][new], F["foreign_f"][new], F["foreign_p"][pool], F["foreign_f"][pool]

    h, w = Bundle.load(bundle_dir).preprocessing.input_size
    fits = prototype_fits(h * w)  # as edge-calibrate picks them for this model
    protos = Prototypes.fit(train_f, train_y, members=fits)
    rows = []

    def row(name: str, n: int, score_fn, extra: dict | None = None) -> None:
        in_flag, thr = flagged_crossfit(score_fn(cal_p, cal_f), rate)
        rows.append({"score": name, "reviewed": n, "asked": asked, "in_dist_flagged": in_flag,
                     "new_foreign_flagged": float(np.mean(score_fn(new_p, new_f) > thr)), **(extra or {})})

    asked = 0
    row("prototypes", 0, lambda p, f: protos.score(f))
    mix = RadiusPrototypes.fit_radii(protos, train_f, cal_f)
    row("radius-mix", 0, lambda p, f: mix.score(f))
    lite = NeighbourLite.fit(train_f, train_y, cal_f, members=fits).with_model(cal_f)  # as edge-calibrate
    row("neighbour-lite", 0, lambda p, f: lite.score(f))
    for asked in sizes:
        n = min(asked, len(pool))
        # fit_ood fits and reports every candidate whatever kind it returns: read them all from one fit, and fit
        # again only when the pick is not the kind that fit returned
        reviewed = (rev_p[:n], rev_f[:n])
        score, rep = fit_ood(cal_p, cal_f, train_f, train_y, rate, PICKED_FROM[0], reviewed, fits)
        best = max(PICKED_FROM, key=lambda k: rep["candidates"][k]["foreign_flagged"])
        if best != score.kind:
            score, _ = fit_ood(cal_p, cal_f, train_f, train_y, rate, best, reviewed, fits)
        row("auto", n, score.score, {"picked": best})
        rel = RelativePrototypes.fit_foreign(protos, rev_f[:n])
        row("relative", n, lambda p, f: rel.score(f), {"foreign_centres": len(rel.foreign)})
    return {"held_out": held_out, "new_images": len(new), "pool": len(pool), "calibration_images": len(cal_f),
            "rows": rows}


def summarise(folds: list[dict]) -> list[dict]:
    """Per score and asked-for number of reviewed images (a fold's pool caps it: "reviewed" lists what each got)."""
    keys = sorted({(r["score"], r["asked"]) for f in folds for r in f["rows"]}, key=lambda k: (k[1], k[0]))
    out = []
    for name, n in keys:
        rs = [r for f in folds for r in f["rows"] if (r["score"], r["asked"]) == (name, n)]
        flagged = [r["new_foreign_flagged"] for r in rs]
        out.append({"score": name, "asked": n, "reviewed": sorted({r["reviewed"] for r in rs}),
                    "new_foreign_flagged_mean": float(np.mean(flagged)),
                    "worst": float(np.min(flagged)), "per_fold": flagged,
                    "in_dist_flagged_mean": float(np.mean([r["in_dist_flagged"] for r in rs]))})
    return out


def markdown(folds: list[dict], summary: list[dict]) -> str:
    held = [f["held_out"] for f in folds]
    md = table_head("Reviewed foreign images and the uncertain score (leave-one-class-out, INT8)",
                    ["score", "reviewed images", "new foreign flagged, mean", "worst"], held,
                    ["in-distribution flagged (cross-fitted)"])
    for s in summary:
        got = s["reviewed"]
        n = str(got[0]) if len(got) == 1 else f"{min(got)}-{max(got)} (all of the pool)"
        md.append(table_row([s["score"], n, pct(s["new_foreign_flagged_mean"]), pct(s["worst"])], s["per_fold"],
                            [pct(s["in_dist_flagged_mean"])]))
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    p = loco_parser(__doc__)
    p.add_argument("--sizes", default="10,30,1000", help="reviewed images per fold (capped at the pool)")
    a = p.parse_args(argv)
    sizes = tuple(int(s) for s in a.sizes.split(","))
    folds = [fold(d / "bundle", a.data.resolve(), d.name, sizes, a.flag_rate, a.threads) for d in fold_dirs(a.loco)]
    summary = summarise(folds)
    write_results(a.loco, "field_foreign", {"folds": folds, "summary": summary}, markdown(folds, summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
