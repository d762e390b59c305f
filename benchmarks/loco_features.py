"""The INT8 outputs of one leave-one-class-out fold bundle, as the device computes them, for the post-hoc score
experiments (field_foreign, synthetic_foreign, feature_power, prototype_fits): the train images edge-calibrate fits
its statistics on, the calibration split its threshold comes from, and every image of the held-out class. Cached
beside the bundle (`<fold>/features_int8.npz`, keyed by the model file's sha256, the calibration and the data
folder), so each experiment re-reads them in a second.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from .open_set_tuned import VARIANT, step_done

CACHE = "features_int8.npz"


def outputs(clf, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(calibrated probabilities, pooled features) of each preprocessed image, as the device computes them."""
    probs, feats = [], []
    for im in x:
        probs.append(clf.probs(im))
        feats.append(clf.engine.features().reshape(-1))
    return np.stack(probs), np.stack(feats)


def fold_features(bundle_dir: Path, data: Path, held_out: str, threads: int = 2) -> dict[str, np.ndarray]:
    """train_f, train_y (edge-calibrate's subsample), cal_p, cal_f, cal_y, foreign_p, foreign_f (sorted file order,
    unreadable files skipped)."""
    from trashcam.edge.bundle import Bundle

    bundle = Bundle.load(bundle_dir)
    # the probabilities are calibrated (temperature), so a re-calibration is a different cache too; so is other data
    key = hashlib.sha256((bundle.metadata["files"][bundle.variants[VARIANT]["file"]]["sha256"]
                          + json.dumps(bundle.calibration, sort_keys=True)
                          + str(Path(data).resolve() / held_out)).encode()).hexdigest()
    cache = bundle_dir.parent / CACHE
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return {k: z[k] for k in z.files if k != "key"}
    out = _compute(bundle, data, held_out, threads)
    tmp = cache.with_name(CACHE + ".partial.npz")
    np.savez(tmp, key=np.array(key), **out)
    tmp.replace(cache)
    return out


def _compute(bundle, data: Path, held_out: str, threads: int) -> dict[str, np.ndarray]:
    from trashcam.calibration.ood import _subsample
    from trashcam.edge.imageset import decode, split_images
    from trashcam.edge.runtime import Classifier

    clf = Classifier(bundle, VARIANT, threads)
    train = split_images(bundle, "train")
    keep = _subsample(train.y, 1000)  # what edge-calibrate fits its statistics on (ood_fit_images)
    _, train_f = outputs(clf, train.x[keep])
    cal = split_images(bundle, bundle.calibrated_on or "val")
    cal_p, cal_f = outputs(clf, cal.x)
    paths = sorted(p for p in (data / held_out).iterdir() if p.is_file())
    fx = decode(paths, np.full(len(paths), -1), bundle.preprocessing, str(data / held_out), "decode foreign")
    foreign_p, foreign_f = outputs(clf, fx.x)
    return {"train_f": train_f, "train_y": train.y[keep], "cal_p": cal_p, "cal_f": cal_f, "cal_y": cal.y,
            "foreign_p": foreign_p, "foreign_f": foreign_f}


def seed_rows(name: str, values, seeds, rate: float, scores) -> list[dict]:
    """One row per (value, seed): `scores(value, seed)` -> (calibration scores, foreign scores), thresholded at `rate`
    of the calibration split (in-distribution flagged cross-fitted, halves drawn by the same seed)."""
    from trashcam.edge.ood import auroc

    from .crossfit import flagged_crossfit
    rows = []
    for value in values:
        for seed in seeds:
            s_in, s_out = scores(value, seed)
            in_flag, thr = flagged_crossfit(s_in, rate, seed)
            rows.append({name: value, "seed": seed, "in_dist_flagged": in_flag,
                         "foreign_flagged": float(np.mean(s_out > thr)), "auroc": auroc(s_in, s_out)})
    return rows


def seed_summary(folds: dict[str, list[dict]], name: str, value) -> dict:
    """seed_rows' rows of one setting (`name` == `value`), every fold: the mean foreign flagged (the mean of the
    5-fold means by seed), those by seed, each fold's mean over seeds, the worst fold, in-distribution and AUROC."""
    mine = {k: [r for r in rs if r[name] == value] for k, rs in folds.items()}
    per_fold = {k: float(np.mean([r["foreign_flagged"] for r in rs])) for k, rs in mine.items()}
    seeds = sorted({r["seed"] for rs in mine.values() for r in rs})
    by_seed = [float(np.mean([r["foreign_flagged"] for rs in mine.values() for r in rs if r["seed"] == s]))
               for s in seeds]
    sel = [r for rs in mine.values() for r in rs]
    return {name: value, "foreign_flagged_mean": float(np.mean(by_seed)), "by_seed": by_seed, "per_fold": per_fold,
            "worst_fold": min(per_fold.values()),
            "in_dist_flagged_mean": float(np.mean([r["in_dist_flagged"] for r in sel])),
            "auroc_mean": float(np.mean([r["auroc"] for r in sel]))}


def pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def loco_parser(doc: str, folds: bool = True) -> argparse.ArgumentParser:
    """The options every LOCO score experiment takes: the fold bundles (unless it trains its own), their data, the
    flag rate and threads."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if folds:
        p.add_argument("--loco", required=True, type=Path, help="an open_set_tuned --out folder: <class>/bundle")
    p.add_argument("--data", required=True, type=Path, help="the DIR/<class>/*.jpg it was trained on")
    p.add_argument("--flag-rate", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=2)
    return p


def fold_dirs(loco: Path) -> list[Path]:
    """The calibrated folds under an open_set_tuned --out folder (<class>/bundle), by class name."""
    dirs = [d for d in sorted(loco.iterdir()) if step_done(d / "bundle", "calibrate")]
    if not dirs:
        raise SystemExit(f"no fold bundles under {loco}")
    return dirs


def write_results(loco: Path, name: str, record: dict, md: str) -> None:
    """LOCO/<name>.json and .md, and the table on stdout."""
    (loco / f"{name}.json").write_text(json.dumps(record, indent=1))
    (loco / f"{name}.md").write_text(md)
    print(md)


def table_head(title: str, lead: list[str], held: list[str], tail: list[str]) -> list[str]:
    """A markdown title and table header: the lead columns, one per held-out class, then the tail columns."""
    cols = [*lead, *held, *tail]
    return [f"# {title}", "", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]


def table_row(lead: list, per_fold: list[float], tail: list) -> str:
    """A row under table_head's header: the lead cells, each held-out class's share flagged, then the tail cells."""
    return "| " + " | ".join([*map(str, lead), *map(pct, per_fold), *map(str, tail)]) + " |"
