"""`calibrate_bundle`: fit temperatures and the "uncertain" threshold on unseen images (validation, or test for a
refit bundle); store them in the bundle.

Every variant gets its own temperature (an INT8 model's outputs are coarser than float's and may need a
different one); edge.runtime.Classifier reads `temperature_by_variant` first, then `temperature`. The threshold
is chosen on the base variant (keras when present) after its temperature.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from trashcam.edge.bundle import Bundle, BundleError, atomic_write_json, bundle_lock, now_iso
from trashcam.edge.images import is_image_file
from trashcam.edge.interpreters import ENGINES, open_engine, variant_format
from trashcam.edge.ood import conformal_keep, new_flagged_expected
from trashcam.edge.temperature import apply_temperature

from .config import CalibrationConfig
from .metrics import summary
from .temperature import at_bound, fit_temperature
from .threshold import choose_threshold, flagged_fraction

REPORT = "calibration_report.json"
PLOT_DIR = "calibration"


def _variants(bundle: Bundle, config: CalibrationConfig) -> list[str]:
    if config.variants:
        for v in config.variants:
            bundle.variant_path(v)  # clear error naming what exists
        return list(config.variants)
    names = [v for v, info in bundle.variants.items()
             if info.get("check", {}).get("status") != "FAIL"
             and (variant_format(bundle, v) == "keras" or variant_format(bundle, v) in ENGINES)]
    if not names:
        raise BundleError(f"bundle {bundle.path} has no variant to calibrate")
    return sorted(names, key=lambda v: (v != "keras", v))


def _engine(bundle: Bundle, variant: str, threads: int | None):
    if variant_format(bundle, variant) == "keras":
        from trashcam.train.keras_engine import KerasEngine, load_keras_model
        return KerasEngine(load_keras_model(bundle, variant), threads)
    return open_engine(bundle, variant, threads)


def _ood_images(root: str | os.PathLike, bundle: Bundle):
    from trashcam.edge.imageset import decode
    files = sorted(p for p in Path(root).rglob("*") if is_image_file(p))
    if not files:
        raise ValueError(f"--ood-data {root} has no images")
    return decode(files, np.full(len(files), -1), bundle.preprocessing, str(Path(root).resolve()), "decode ood")


def _r(x: float) -> float:
    return round(float(x), 6)


def refit(bundle: Bundle) -> bool:
    return bundle.metadata.get("training", {}).get("config", {}).get("stage2_data") == "train+val"


def few_images_warning(n: int, flag_rate: float, what: str) -> str | None:
    """Split conformal (edge/ood.py conformal_keep) can promise no less than 1 / (n + 1): with fewer than
    1 / flag_rate - 1 images the threshold sits above all of them and still flags more new known-class images."""
    if conformal_keep(n, flag_rate) <= n:
        return None
    return (f"WARNING: {n} {what} images: the uncertain threshold sits above all their scores, yet a new known-class "
            f"image falls above it with probability 1 / (n + 1) = {new_flagged_expected(n, flag_rate):.1%}, more than "
            f"--flag-rate {flag_rate:.1%}; {math.ceil(1 / flag_rate - 1 - 1e-9)} images or more keep the rate")


def fit_split(bundle: Bundle, config: CalibrationConfig) -> str:
    """The saved split to fit on. A refit bundle (stage 2 trained on validation too) has seen its validation
    images: fitted there, the INT8 temperature collapsed (0.05-0.46 against 0.49-0.63) and the threshold flagged
    6.3 % of unseen images instead of 5 %. Its test split is the only one it never trained on, and neither a
    temperature nor a threshold changes which class wins, so its test accuracy stays an unseen-image number;
    what is measured on test about the calibration itself (ECE, share flagged) is then in-sample."""
    if config.data:
        return "data"
    split = config.split if config.split != "auto" else ("test" if refit(bundle) else "val")
    if refit(bundle) and split == "val":
        print("WARNING: this bundle's stage 2 trained on its validation images (--stage2-data train+val): the "
              "temperature and the uncertain threshold are fitted on images the model has seen; the default "
              "(--split auto) fits them on the test split, --data DIR on held-out images", file=sys.stderr)
    elif split == "test":
        print("edge-calibrate: fitting on the test split: top-1 test accuracy is unchanged by calibration, but "
              "ECE and the share flagged measured on test afterwards are in-sample", file=sys.stderr)
    return split


def calibrate_bundle(bundle_dir: str | os.PathLike, config: CalibrationConfig = CalibrationConfig()) -> dict[str, Any]:
    with bundle_lock(bundle_dir, holder="edge-calibrate"):
        return _calibrate_locked(bundle_dir, config)


def _calibrate_locked(bundle_dir: str | os.PathLike, config: CalibrationConfig) -> dict[str, Any]:
    from trashcam.edge.imageset import SPLIT_FILE, folder_images, split_images

    # Verify what this run reads (labels, the split, the variants it calibrates), not every file: one broken
    # variant that is not being calibrated must not block the others.
    bundle = Bundle.load(bundle_dir, verify=False)
    names = _variants(bundle, config)
    bundle.verify([f for f in ("labels.txt", SPLIT_FILE) if f in bundle.metadata["files"]]
                  + [bundle.variants[n]["file"] for n in names])
    split = fit_split(bundle, config)
    images = folder_images(config.data, bundle) if config.data else split_images(bundle, split, config.data_root)
    if len(images) == 0:
        raise ValueError(f"no readable images in {images.source}")
    what = {"val": "validation", "test": "test", "data": "--data"}[split]
    y = images.y
    if (few := few_images_warning(len(images), config.flag_rate, what)) is not None:
        print(few, file=sys.stderr)
    base = "keras" if "keras" in names else names[0]
    ood = _ood_images(config.ood_data, bundle) if config.ood_data else None
    from .ood import Maxima, foreign_images, predict_outputs, save_ood, score_variant, train_images
    ood = foreign_images(bundle, ood, config)
    fit_set = train_images(bundle, config)
    results: dict[str, dict[str, Any]] = {}
    ood_meta: dict[str, dict[str, Any]] = {}
    plots: list[str] = []
    for name in names:
        print(f"[edge-calibrate] {name} ...", file=sys.stderr, flush=True)
        engine = _engine(bundle, name, config.threads)
        probs, feats, maxes = predict_outputs(engine, images.x)
        maxima = Maxima(val=maxes)
        t = fit_temperature(probs, y)
        after = apply_temperature(probs, t)
        chosen = choose_threshold(after, y, config.target_precision, config.target_coverage)
        res = {"temperature": _r(t), "temperature_at_search_bound": at_bound(t),
               "before": {k: _r(v) for k, v in summary(probs, y, config.bins).items()},
               "after": {k: _r(v) for k, v in summary(after, y, config.bins).items()},
               "threshold": chosen}
        if ood is not None:
            ood_probs, ood_feats, maxima.foreign = predict_outputs(engine, ood.x)
            ood_probs = apply_temperature(ood_probs, t)
            res["ood"] = {"source": ood.source, "n_images": len(ood),
                          "flagged_uncertain": _r(flagged_fraction(ood_probs, chosen["threshold"]))}
        score, res["uncertainty"] = score_variant(engine, after, feats, fit_set, config,
                                                  (ood_probs, ood_feats) if ood is not None else None, what,
                                                  maxima)
        ood_meta[name] = save_ood(bundle, name, score, {"flag_rate": config.flag_rate,
                                                        "fitted_on": res["uncertainty"]["fitted_on"]})
        if config.plots:
            from .plots import coverage_plot, reliability_diagram
            rel = f"{PLOT_DIR}/reliability_{name}.png"
            reliability_diagram([("before", probs), (f"after (T={t:.3f})", after)], y, bundle.file(rel),
                                title=f"{name} on {len(y)} {what} images", n_bins=config.bins)
            cov = f"{PLOT_DIR}/coverage_{name}.png"
            coverage_plot(after, y, chosen, bundle.file(cov), title=f"{name}: uncertain-threshold trade-off")
            plots += [rel, cov]
            res["plots"] = [rel, cov]
        results[name] = res
        if at_bound(t):
            print(f"WARNING: {name}: temperature {t:.3g} is at the search bound; the {what} set is probably "
                  "too small or the model makes no errors on it", file=sys.stderr)
        if not chosen["met"]:
            print(f"WARNING: {name}: no threshold reaches precision {config.target_precision} on {what}; "
                  "every prediction would be flagged uncertain", file=sys.stderr)
    b = results[base]
    report = {"created": now_iso(), "bundle": str(bundle.path.resolve()), "config": config.to_dict(),
              "fitted_on": images.summary(), "base_variant": base, "variants": results}
    cal = dict(bundle.calibration)
    # Per-variant values merge with earlier runs (calibrating only INT8 keeps float's); the bundle-wide values
    # come from keras, or from this run's first variant when no keras-based calibration exists.
    for key, field in (("temperature_by_variant", "temperature"), ("threshold_by_variant", None)):
        merged = dict(cal.get(key, {}))
        merged.update({n: (r[field] if field else r["threshold"]["threshold"]) for n, r in results.items()})
        cal[key] = merged
    if base == "keras" or "temperature" not in cal or cal.get("base_variant") == base:
        cal.update({
            "temperature": b["temperature"],
            "threshold": b["threshold"]["threshold"],
            "threshold_rule": {k: v for k, v in b["threshold"].items() if k != "threshold"},
            "base_variant": base, "fitted_on": f"{images.source} ({len(images)} images)", "split": split,
            "ece_before": b["before"]["ece"], "ece_after": b["after"]["ece"],
            "nll_before": b["before"]["nll"], "nll_after": b["after"]["nll"],
        })
    cal["ood_by_variant"] = {**cal.get("ood_by_variant", {}), **ood_meta}
    cal.update({"bins": config.bins, "updated": report["created"], "report": REPORT})
    bundle.metadata["calibration"] = cal
    atomic_write_json(bundle.file(REPORT), report)
    for rel in [REPORT, *plots]:
        bundle.add_file(rel, role="calibration")
    bundle.save()
    return report
