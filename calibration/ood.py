"""Fit a variant's "uncertain" score (edge/ood.py) and its threshold; store them in the bundle.

Per variant, with the variant's own outputs (an INT8 model's features are its de-quantised int8 features):
- the score's statistics (class prototypes; class means + shared shrunk covariance) from the pooled features of up
  to `ood_fit_images` TRAIN images (fitting them on validation would make validation distances small and the
  threshold too low);
- the threshold flagging `flag_rate` of the VALIDATION images (after the variant's temperature);
- with foreign images (`--ood-data`, or the `foreign` list of the bundle's split that `edge-train --add-data`
  fills from DIR/_foreign/), the share each kind flags, and for `ood_score="auto"` the relative score: centres of
  those images become a second table, and a frame near them is flagged even where it lies near a class.
Arrays go to `ood/<variant>.npz` (listed with its sha256), the rest to calibration["ood_by_variant"][variant].
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from trashcam.edge.bundle import Bundle, atomic_write_bytes
from trashcam.edge.ood import (KINDS as OOD_KINDS, Mahalanobis, OodScore, both, msp_score, new_flagged_expected,
                               threshold_for_rate)
from trashcam.edge.neighbours import NeighbourLite, NeighbourMix
from trashcam.edge.prototypes import PROTOTYPE_FITS, Prototypes, RadiusPrototypes, RelativePrototypes, prototype_fits

# What leave-one-class-out chose when no foreign images say otherwise, and the model outputs its feature map's
# maxima (train/features.py): neighbour-lite on the unit pooled features beside the unit maxima. Post hoc (stop 49) it
# flagged more of a held-out class than neighbour-lite on all eight runs of seeds 5-12; rule N (stop 51) adopted it on
# four fresh runs (+1.3 pp, seeds 13-16). Every fresh run since, both scores side by side, is one table in
# docs/cold-start.md ("Every fresh run"): the gain stays small and unsure. Its frame costs x1.02 of the INT8 frame at 1
# thread and x1.04 at 2 (stops 51-53; neighbour-lite x1.015 / x1.023). Rules for later stops (docs/cold-start.md, stop
# 52): neighbour-lite comes back if its mean at 2 threads, re-timed on two bundles, exceeds x1.050, or if eight fresh
# runs put the mean gain below 0.
DEFAULT_KIND = "neighbour-max"
# The default where the model has no maxima output (the keras variant; bundles converted before stop 51), and the
# default before: the fine-tuned default recipe trained without each class in turn, INT8, edge-calibrate's 1000 train
# images and 8 k-means fits (k-means draws 0-4, threshold at 5 % of validation; docs/cold-start.md). neighbour-lite
# flagged 53.6 / 46.0 % of the held-out class on two LOCO runs against radius-mix's 50.3 / 42.3 %, and 49.9 % against
# 46.8 % on a third trained after that rule was written (worst fold 24.6 against 18.6 %), at 5.1 % of in-distribution
# images, reading fewer bytes a frame than radius-mix: x1.047 against x1.050 of an INT8 Lite0-288 frame at 1 thread,
# x1.077 against x1.081 at 2, on an AMX Xeon. As edge-calibrate fits it (draw 0, split-conformal threshold): 50.2 / 44.0
# / 48.2 % against radius-mix's 47.6 / 40.8 / 45.1 %. As an int8 model (edge/score_model.py, 2026-12-06) it costs x1.017
# / x1.027 at 1 / 2 threads against NumPy's x1.066 / x1.109 on that Xeon (one process, interleaved), flagging what
# NumPy's form flags (within 0.6 pp a run). neighbour-mix (exact; 53.4 / 45.9 / 49.0 %) reads 3.5x the bytes:
# selectable. radius-mix was the default from 2026-12-05 evening (42.8-49.0 % deployed over eight runs, old threshold
# rank), the plain prototypes before it (40.5 % against Mahalanobis + max-probability's 34.9 %, 2026-12-02).
WITHOUT_MAXIMA = "neighbour-lite"
PREFERRED = (DEFAULT_KIND, WITHOUT_MAXIMA)  # auto's order, with or without foreign images
# What `auto` uses where it reads fewer bytes a frame than each PREFERRED kind: the score's time after an invoke goes
# with the bytes it reads (docs/cold-start.md), and rule I asked neighbour-lite to cost no more than radius-mix. At
# 288 x 288 it reads less (2.2 against 2.6-3.3 MB); for smaller inputs radius-mix's fewer k-means fits can read less
# (2 fits at 160 px and 1000 train images: 0.8 against 1.9 MB). The quick recipe on the 110-image sample: 0.68
# against 0.82 MB, and x1.080-1.086 / x1.102-1.122 of its 1.5 ms INT8 frame at 1 / 2 threads against radius-mix's
# x1.079-1.086 / x1.096-1.107 (edge-bench, ABBA): the extra numpy calls weigh on a frame that short.
# As an int8 model (edge/score_model.py) neighbour-lite reads a quarter of those bytes and is
# the leaner one at every input size; radius-mix remains for calibration without LiteRT's schema.
LEANER = "radius-mix"

# What `auto` uses once there are reviewed foreign images (--ood-data, --add-data's _foreign/). Leave-one-class-out
# (benchmarks/field_foreign.py, the default's 5 INT8 fold models, 2026-12-05): with 10 / 30 / ~200 reviewed images
# of the held-out class, it flagged 78.0 / 84.8 / 91.7 % of that class's other images (never fitted on) at 4.7-5.1 %
# of in-distribution images; the kind among the others that flagged most of the reviewed ones: 44.5 %.
RELATIVE_WITH_FOREIGN = "relative"
KINDS = ("auto", *OOD_KINDS)
OOD_DIR = "ood"


@dataclass
class Maxima:
    """The per-channel maxima (the converted models' third output, train/features.py) of fit_ood's validation, train
    and foreign images, each (N, D) or None: what the scores that read them fit on (edge/ood.py, READS_MAXIMA)."""

    val: np.ndarray | None = None
    train: np.ndarray | None = None
    foreign: np.ndarray | None = None


def frame_bytes(score: OodScore) -> int:
    """Bytes a frame's score reads: its int8 model where it has one (edge/score_model.py), else its arrays as the
    device holds them, float32 (rows are stored float16)."""
    if score.stats is None:
        return 0
    model = getattr(score.stats, "score_model", None)
    return model.nbytes if model is not None else 4 * sum(np.size(a) for a in score.stats.arrays().values())


def keras_features(model, x: np.ndarray, batch: int = 32) -> np.ndarray | None:
    import keras

    from trashcam.train.features import feature_tensor
    t = feature_tensor(model)
    if t is None:
        return None
    fm = keras.Model(model.input, t)
    return np.concatenate([np.asarray(fm(x[i:i + batch].astype(np.float32), training=False))
                           for i in range(0, len(x), batch)]) if len(x) else np.zeros((0, int(t.shape[-1])))


def predict_outputs(engine, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(probabilities, pooled features or None, the feature map's per-channel maxima or None) of `engine` for a
    uint8 batch, one invoke per image."""
    if getattr(engine, "format", "") == "keras":
        return engine.predict(x), keras_features(engine.model, x), None
    if not getattr(engine, "has_features", False):
        return engine.predict(x), None, None
    maxima = getattr(engine, "has_features_max", False)
    probs, feats, maxes = [], [], []
    for im in x:
        probs.append(engine.postprocess(engine.invoke_raw(engine.prepare(im))))
        feats.append(engine.features())
        if maxima:
            maxes.append(engine.features_max())
    return np.concatenate(probs), np.concatenate(feats), (np.concatenate(maxes) if maxima else None)


def _subsample(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Up to `n` indices, the same share of every class."""
    if n <= 0 or len(y) <= n:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(y == c))[:max(1, round(n * np.mean(y == c)))] for c in np.unique(y)]
    return np.sort(np.concatenate(keep))


def fit_ood(val_probs: np.ndarray, val_feats: np.ndarray | None, train_feats: np.ndarray | None,
            train_y: np.ndarray | None, flag_rate: float = 0.05, kind: str = "auto",
            foreign: tuple[np.ndarray, np.ndarray | None] | None = None,
            fits: int = PROTOTYPE_FITS, maxima: Maxima | None = None) -> tuple[OodScore, dict[str, Any]]:
    """-> (fitted score, report). `val_probs` after temperature; `foreign` = (probs, feats) of foreign images;
    `maxima`: the same images' per-channel maxima, where the model outputs them (the scores that read them)."""
    if kind not in KINDS:
        raise ValueError(f"uncertainty score must be one of {', '.join(KINDS)}, got {kind!r}")
    candidates: dict[str, OodScore] = {}
    val_scores: dict[str, np.ndarray] = {}  # each kind's validation scores: its threshold, then its report row

    def add(c: OodScore, val_score: np.ndarray) -> None:
        c.threshold = threshold_for_rate(val_score, flag_rate)
        candidates[c.kind], val_scores[c.kind] = c, val_score

    val_msp = msp_score(val_probs)
    add(OodScore("msp"), val_msp)
    if val_feats is not None and train_feats is not None and len(np.unique(train_y)) >= 2:
        maha = Mahalanobis.fit(train_feats, train_y)
        m = maha.score(val_feats)
        add(OodScore("mahalanobis", 0.0, maha), m)
        norm = {"mahalanobis": (float(m.mean()), float(m.std() + 1e-12)),
                "msp": (float(val_msp.mean()), float(val_msp.std() + 1e-12))}
        comb = OodScore("combined", 0.0, maha, norm)
        add(comb, comb.score(val_probs, val_feats))
        protos = Prototypes.fit(train_feats, train_y, members=fits)
        add(OodScore("prototypes", 0.0, protos), protos.score(val_feats))
        mix = RadiusPrototypes.fit_radii(protos, train_feats, val_feats)
        add(OodScore("radius-mix", 0.0, mix), mix.score(val_feats))
        near = NeighbourMix.fit_rows(protos, train_feats, train_y, val_feats).with_model(val_feats)
        add(OodScore("neighbour-mix", 0.0, near), near.score(val_feats))
        lite = NeighbourLite.fit(train_feats, train_y, val_feats, members=fits).with_model(val_feats)
        add(OodScore("neighbour-lite", 0.0, lite), lite.score(val_feats))
    if "neighbour-lite" in candidates and maxima is not None and maxima.val is not None and maxima.train is not None:
        val_both = both(val_feats, maxima.val)
        wide = NeighbourLite.fit(both(train_feats, maxima.train), train_y, val_both, members=fits).with_model(val_both)
        add(OodScore("neighbour-max", 0.0, wide), wide.score(val_both))
    have_foreign = foreign is not None and len(foreign[0])
    if "prototypes" in candidates and have_foreign and foreign[1] is not None:
        rel = RelativePrototypes.fit_foreign(protos, foreign[1]).with_model(val_feats)
        add(OodScore("relative", 0.0, rel), rel.score(val_feats))
    report: dict[str, Any] = {"flag_rate": flag_rate, "candidates": {},
                              "new_flagged_expected": new_flagged_expected(len(val_probs), flag_rate)}
    maxima = maxima or Maxima()
    for name, c in candidates.items():
        row = {"threshold": c.threshold, "val_flagged": float(np.mean(val_scores[name] > c.threshold))}
        if have_foreign:
            row["foreign_flagged"] = float(np.mean(
                c.score(foreign[0], c.features_of(foreign[1], maxima.foreign)) > c.threshold))
        report["candidates"][name] = row
    crossfit = relative_crossfit(protos, val_feats, foreign[1], flag_rate) if "relative" in candidates else None
    if crossfit is not None:  # the relative score was fitted on these images: say what it does on new ones
        row = report["candidates"]["relative"]
        row["foreign_flagged_in_sample"], row["foreign_flagged"] = row["foreign_flagged"], crossfit
    if kind == "auto":
        report["chosen_by"] = "foreign images" if have_foreign else "default"
        if "relative" in candidates:
            kind = RELATIVE_WITH_FOREIGN
        elif have_foreign:  # the field's own foreign objects decide; ties keep the experiment's choice
            order = [*PREFERRED, *(k for k in candidates if k not in PREFERRED)]
            kind = max((k for k in order if k in candidates),
                       key=lambda k: report["candidates"][k]["foreign_flagged"])
        else:
            # the first preferred kind that reads no more bytes a frame than LEANER (rule I's bar), else LEANER
            preferred = [k for k in PREFERRED if k in candidates]
            kind = next((k for k in preferred if frame_bytes(candidates[k]) <= frame_bytes(candidates[LEANER])),
                        LEANER if preferred else "msp")
            if preferred and kind != preferred[0]:
                report["chosen_by"] = (f"default: it reads fewer bytes a frame than {preferred[0]} with {fits} "
                                       "k-means fits")
    elif kind == "relative" and not have_foreign:
        raise ValueError("the relative score needs reviewed foreign images: --ood-data DIR, or the _foreign/ "
                         "images of edge-train --add-data")
    elif kind not in candidates:
        raise ValueError(f"the {kind} score needs the model's feature output; re-run edge-convert")
    report["kind"] = kind
    meta = candidates[kind].stats.meta() if candidates[kind].stats is not None else {}
    if "per_frame" in meta:  # the scores an int8 model can run (edge/score_model.py)
        report["per_frame"] = meta["per_frame"]
    return candidates[kind], report


def relative_crossfit(protos: Prototypes, val_feats: np.ndarray, foreign_feats: np.ndarray, flag_rate: float,
                      seed: int = 0) -> float | None:
    """Share of the foreign images the relative score flags with its foreign centres fitted on the other half of
    them (both ways): what it does on foreign objects it was not fitted on. In sample it flags nearly all.
    None for a single image (no JSON NaN in the report)."""
    idx = np.random.default_rng(seed).permutation(len(foreign_feats))
    halves = (idx[:len(idx) // 2], idx[len(idx) // 2:])
    if min(map(len, halves)) == 0:
        return None
    hits = []
    for fit, new in (halves, halves[::-1]):
        rel = RelativePrototypes.fit_foreign(protos, foreign_feats[fit]).with_model(val_feats)
        hits.append(rel.score(foreign_feats[new]) > threshold_for_rate(rel.score(val_feats), flag_rate))
    return float(np.mean(np.concatenate(hits)))


def save_ood(bundle: Bundle, variant: str, score: OodScore, extra: dict[str, Any]) -> dict[str, Any]:
    """Write the arrays (if any) atomically, list them with their sha256, return the metadata entry."""
    meta = {**score.to_meta(), **extra}
    if score.stats is not None:
        rel = f"{OOD_DIR}/{variant}.npz"
        buf = io.BytesIO()
        np.savez(buf, **score.stats.arrays())
        bundle.file(OOD_DIR).mkdir(exist_ok=True)
        atomic_write_bytes(bundle.file(rel), buf.getvalue())
        bundle.add_file(rel, role="calibration", variant=variant)
        meta["file"] = rel
    return meta


def train_images(bundle: Bundle, config):
    """Up to `config.ood_fit_images` train-split images (every class in proportion), or None without a split."""
    from trashcam.edge.bundle import BundleError
    from trashcam.edge.imageset import decode, split_files
    try:
        paths, labels, source = split_files(bundle, "train", config.data_root)
    except BundleError:
        return None  # a bundle calibrated on --data DIR only: max-probability, no feature statistics
    keep = _subsample(labels, config.ood_fit_images)
    return decode([paths[i] for i in keep], labels[keep], bundle.preprocessing, source, "decode train (score)")


def foreign_images(bundle: Bundle, ood, config):
    """--ood-data images, plus the saved split's `foreign` list (reviewed field images in DIR/_foreign/)."""
    from trashcam.edge.imageset import SPLIT_FILE, decode
    p = bundle.file(SPLIT_FILE)
    if not p.is_file():
        return ood
    import json
    rels = json.loads(p.read_text()).get("files", {}).get("foreign", [])
    if not rels:
        return ood
    from pathlib import Path
    root = Path(config.data_root or json.loads(p.read_text())["root"])
    extra = decode([root / r for r, _ in rels], np.full(len(rels), -1), bundle.preprocessing,
                   "foreign list of split.json", "decode foreign")
    if ood is None:
        return extra
    ood.x = np.concatenate([ood.x, extra.x])
    ood.y = np.concatenate([ood.y, extra.y])
    ood.paths += extra.paths
    ood.source += " + " + extra.source
    return ood


def score_variant(engine, val_probs: np.ndarray, val_feats, fit_set, config, foreign,
                  what: str = "validation", maxima: Maxima | None = None) -> tuple[OodScore, dict]:
    """Fit one variant's score with its own outputs (train features for the statistics). `maxima`: the validation
    and foreign images' maxima where the engine outputs them; the train images' are added here."""
    train_feats = train_y = None
    if val_feats is not None and fit_set is not None and len(fit_set):
        _, train_feats, train_max = predict_outputs(engine, fit_set.x)
        train_y = fit_set.y
        if maxima is not None:
            maxima.train = train_max
    fits = config.prototype_fits
    if fits is None:  # by the input's pixels: the score's cost stays a like share of smaller models' frames
        fits = prototype_fits(fit_set.x.shape[1] * fit_set.x.shape[2]) if train_y is not None else 1
    score, rep = fit_ood(val_probs, val_feats, train_feats, train_y, config.flag_rate, config.ood_score, foreign,
                         fits, maxima)
    rep["fitted_on"] = (f"statistics: {len(train_y)} train images; threshold: {len(val_probs)} {what} images"
                        if train_y is not None else f"threshold: {len(val_probs)} {what} images")
    return score, rep
