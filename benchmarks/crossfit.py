"""Calibration measured by cross-fitting on a bundle's test split: fit on one half, score the other, swap.

A refit bundle (`edge-train --stage2-data train+val`) is calibrated on its test split, so ECE and the share flagged
measured there afterwards are in-sample. This measures them honestly on the same images: for each of `--halvings`
random stratified halvings, the temperature and the threshold (the bundle's own uncertainty score, its statistics
fitted on train as edge-calibrate fits them, `--flag-rate` of the fitting half) are fitted on one half and applied
to the other, then the halves swap. ECE is over all test images (each scored by the half it was not fitted on).
Running it on default bundles too gives the comparison under the same protocol.

    python -m trashcam.benchmarks.crossfit runs/cv_tv/runs/*/bundle --out runs/crossfit.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

VARIANT = "tflite-int8"


def halves(y: np.ndarray, seed: int) -> np.ndarray:
    """A boolean mask holding half of each class, drawn by `seed`."""
    rng, mask = np.random.default_rng(seed), np.zeros(len(y), bool)
    for c in np.unique(y):
        i = rng.permutation(np.flatnonzero(y == c))
        mask[i[:len(i) // 2]] = True
    return mask


def flagged_crossfit(score_in: np.ndarray, rate: float, seed: int = 0) -> tuple[float, float]:
    """For a score that needs no temperature: (share of in-distribution images flagged, threshold from all of them),
    the share thresholded on one random half at `rate` and counted on the other, both ways, averaged."""
    from trashcam.edge.ood import threshold_for_rate
    idx = np.random.default_rng(seed).permutation(len(score_in))
    a, b = idx[:len(idx) // 2], idx[len(idx) // 2:]
    share = np.mean([np.mean(score_in[t] > threshold_for_rate(score_in[f], rate)) for f, t in ((a, b), (b, a))])
    return float(share), threshold_for_rate(score_in, rate)


def crossfit(probs: np.ndarray, feats, y: np.ndarray, score, flag_rate: float = 0.05, halvings: int = 5) -> dict:
    """`score`: the bundle's OodScore (None: max-probability). -> mean T, ECE and share flagged, cross-fitted."""
    from trashcam.calibration.metrics import ece
    from trashcam.edge.ood import OodScore, threshold_for_rate
    from trashcam.edge.temperature import apply_temperature, fit_temperature

    score = score or OodScore("msp", 0.0)
    ts, eces, flagged = [], [], []
    for seed in range(halvings):
        a, cal = halves(y, seed), np.zeros_like(probs)
        for fit, held in ((a, ~a), (~a, a)):
            t = fit_temperature(probs[fit], y[fit])
            p = apply_temperature(probs, t)
            s = score.score(p, feats)
            cal[held] = p[held]
            ts.append(t)
            flagged.append(float(np.mean(s[held] > threshold_for_rate(s[fit], flag_rate))))
        eces.append(ece(cal, y))
    return {"temperature": float(np.mean(ts)), "ece": float(np.mean(eces)), "flagged": float(np.mean(flagged)),
            "accuracy": float(np.mean(probs.argmax(1) == y)), "images": int(len(y)), "halvings": halvings}


def measure(bundle_dir: Path, variant: str, threads: int, flag_rate: float, halvings: int) -> dict:
    from trashcam.edge.bundle import Bundle
    from trashcam.edge.imageset import split_images
    from trashcam.edge.interpreters import open_engine

    bundle = Bundle.load(bundle_dir)
    return {"bundle": str(bundle_dir), **bundle_crossfit(bundle, variant, open_engine(bundle, variant, threads),
                                                         split_images(bundle, "test"), flag_rate, halvings)}


def bundle_crossfit(bundle, variant: str, engine, test, flag_rate: float = 0.05, halvings: int = 5) -> dict:
    """`crossfit` of an open `engine` on decoded `test` images, with the bundle's fitted score for `variant`."""
    from trashcam.calibration.ood import predict_outputs
    from trashcam.edge.ood import load_for_variant

    probs, feats, maxes = predict_outputs(engine, test.x)
    score = load_for_variant(bundle, variant)
    feats = score.features_of(feats, maxes) if score is not None else feats
    return {"variant": variant, "calibrated_on": bundle.calibrated_on,
            **crossfit(probs, feats, test.y, score, flag_rate, halvings)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trashcam.benchmarks.crossfit", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundles", nargs="+", type=Path, help="calibrated bundles (edge-calibrate fitted their score)")
    p.add_argument("--variant", default=VARIANT)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--flag-rate", type=float, default=0.05)
    p.add_argument("--halvings", type=int, default=5)
    p.add_argument("--out", type=Path, help="write every bundle's result and the means as JSON")
    a = p.parse_args(argv)
    rows = []
    for b in a.bundles:
        rows.append(measure(b, a.variant, a.threads, a.flag_rate, a.halvings))
        r = rows[-1]
        print(f"{b}: T {r['temperature']:.3f}  ECE {r['ece'] * 100:.2f} %  flagged {r['flagged'] * 100:.2f} %  "
              f"accuracy {r['accuracy'] * 100:.2f} %", flush=True)
    means = {k: float(np.mean([r[k] for r in rows])) for k in ("temperature", "ece", "flagged", "accuracy")}
    print("mean: " + "  ".join(f"{k} {v:.4f}" for k, v in means.items()))
    if a.out:
        a.out.write_text(json.dumps({"bundles": rows, "mean": means}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
