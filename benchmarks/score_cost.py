"""What the uncertainty score costs per frame, and what it achieves, for edge-bench's JSON and report.md.

Cost: two per-frame calls timed interleaved with the other latencies (latency.time_interleaved), on the same
model-sized image: "probs" = prepare -> invoke -> de-quantise -> temperature (what a frame cost before the
score), "scored" = the same + reading the features output + the score (runtime.flag_frame, Classifier's rule).
Their ratio is the per-frame cost of the score; a shared machine moves both alike, so the ratio is steadier than either.
Quality: what edge-calibrate recorded for the variant (flagged share of validation and of foreign images at the
bundle's threshold, ECE after temperature), read from the bundle and its calibration report.
"""
from __future__ import annotations

import json
from typing import Callable

import numpy as np

from trashcam.edge.bundle import Bundle
from trashcam.edge.runtime import calibrated_probs, flag_frame, uncertainty_rule

from .latency import ratio_interval


def score_rule(bundle: Bundle, variant: str, engine) -> tuple:
    """The variant's "uncertain" rule as `flag_frame` reads it, loaded once for the timing and the report; no score
    where the engine cannot run one (keras)."""
    return uncertainty_rule(bundle, variant, engine) if hasattr(engine, "features") else (None, 0.0)


def timed_calls(rule: tuple, engine, image_u8: np.ndarray, temperature: float) -> dict[str, Callable[[], object]]:
    """{"probs": ..., "scored": ...} for time_interleaved; empty when `rule` (score_rule) has no fitted score."""
    ood, min_confidence = rule
    if ood is None:
        return {}

    def probs():
        return calibrated_probs(engine, image_u8, temperature)

    def scored():
        return flag_frame(ood, min_confidence, engine, probs())[1]

    return {"probs": probs, "scored": scored}


def cost_summary(ms: dict[str, list[float]], summarize) -> dict | None:
    if "scored" not in ms:
        return None
    p, s = np.asarray(ms["probs"]), np.asarray(ms["scored"])
    mp, m_s = float(np.median(p)), float(np.median(s))
    return {"probs_ms": summarize(p), "scored_ms": summarize(s),
            "ratio_p50": round(m_s / mp, 4), "ratio_p50_ci95": ratio_interval(p, s),
            "extra_us_p50": round((m_s - mp) * 1e3, 1),
            "ratio_mean": round(float(s.mean() / p.mean()), 4)}


def _cost_text(c: dict) -> str:
    """x1.052 (95 % CI 1.031-1.074, +170 us): the ratio, its interval and the extra time a frame."""
    lo, hi = c["ratio_p50_ci95"]
    return f"x{c['ratio_p50']:.3f} (95 % CI {lo:.3f}-{hi:.3f}, {c['extra_us_p50']:+.0f} us)"


def quality(bundle: Bundle, variant: str, ood=None) -> dict | None:
    """The variant's fitted score and what edge-calibrate measured with it; `ood`, the score as loaded here, says
    what a frame runs."""
    meta = bundle.calibration.get("ood_by_variant", {}).get(variant)
    if not meta:
        return None
    # what this machine runs (the neighbour and relative scores: "int8 tflite", edge/score_model.py, or NumPy where
    # the stored model fails its probe here), not what edge-calibrate stored
    stats = getattr(ood, "stats", None)
    out = {"kind": meta.get("kind"), "threshold": meta.get("threshold"), "flag_rate": meta.get("flag_rate"),
           "per_frame": stats.meta().get("per_frame") if stats is not None else None}
    rel = bundle.calibration.get("report")
    try:
        rep = json.loads(bundle.file(rel).read_text())["variants"][variant] if rel else {}
    except (OSError, ValueError, KeyError):
        rep = {}
    block = rep.get("uncertainty", {})
    unc = block.get("candidates", {}).get(meta.get("kind"), {})
    out.update({"val_flagged": unc.get("val_flagged"), "foreign_flagged": unc.get("foreign_flagged"),
                "new_flagged_expected": block.get("new_flagged_expected"),
                "ece_after": rep.get("after", {}).get("ece"), "ece_before": rep.get("before", {}).get("ece")})
    return out


def test_metrics(bundle: Bundle, variant: str, engine, images) -> dict | None:
    """On the benchmark's labelled (test) images, through the variant's own calibration: ECE after temperature
    and the share the bundle's "uncertain" rule flags (its score, else max-probability under the threshold)."""
    from trashcam.calibration.metrics import ece
    from trashcam.edge.runtime import bundle_temperature

    if not hasattr(engine, "features") or not len(images):
        return None
    t = bundle_temperature(bundle, variant)
    ood, min_confidence = uncertainty_rule(bundle, variant, engine)
    probs, flagged = [], []
    for im in images.x:
        p = calibrated_probs(engine, im, t)
        probs.append(p)
        flagged.append(flag_frame(ood, min_confidence, engine, p)[1])
    probs = np.stack(probs)
    fit_split = bundle.calibrated_on
    return {"ece_after": round(ece(probs, images.y), 6), "flagged": round(float(np.mean(flagged)), 6),
            "rule": ood.kind if ood is not None else "max-probability", "temperature": t, "images": len(images),
            # a refit bundle is calibrated on its test split (calibration/pipeline.py fit_split): then these are
            # the fit's own numbers, not a check of it
            "in_sample": fit_split == "test", "fit_split": fit_split}


def console_lines(result: dict) -> list[str]:
    """One line per (variant, threads) whose score was timed: what it costs a frame and what it flags."""
    out = []
    for e in result.get("variants", []):
        u = e.get("uncertainty") or {}
        c = u.get("cost")
        if not c:
            continue
        shares = [f"{u[k] * 100:.1f} % of {what}" for k, what in
                  (("val_flagged", "the images it was fitted on"),
                   ("new_flagged_expected", "new known-class images (expected)"), ("foreign_flagged", "foreign images"))
                  if u.get(k) is not None]
        flags = ", flags " + " and ".join(shares) if shares else ""
        how = " (int8 model)" if u.get("per_frame") == "int8 tflite" else ""
        out.append(f"uncertainty score of {e['name']} @ {e['threads']} thr: {u.get('kind')}{how}, per frame "
                   f"{_cost_text(c)} p50 ({c['scored_ms']['p50']:.2f} ms scored / {c['probs_ms']['p50']:.2f} ms "
                   f"probabilities only){flags}")
    return out


def markdown_rows(result: dict) -> list[str]:
    """Lines for report.md: one row per (variant, threads) that has a score."""
    rows = [e for e in result.get("variants", []) if e.get("uncertainty") or e.get("uncertainty_test")]
    if not rows:
        return []

    def pct(v, tag=""):  # a tag (which split, in-sample) only beside a number
        return "-" if v is None else f"{v * 100:.1f} %{tag}"

    md = ["", "## Uncertainty score", "",
          "flagged = share called uncertain at the bundle's threshold; on the split it was fitted on (validation, "
          "or test for a refit bundle) and foreign (`edge-calibrate --ood-data`, split.json's foreign list) as "
          "edge-calibrate measured them, test here.", "",
          "| variant | threads | score | flagged: fitted on | flagged: test | flagged: foreign | ECE after T: "
          "fitted on | test | per-frame cost p50 (95 % CI, extra); scored / probs p50 |",
          "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for e in rows:
        u, c = e.get("uncertainty") or {}, (e.get("uncertainty") or {}).get("cost") or {}
        ut = e.get("uncertainty_test") or {}
        ins = " (in-sample: calibrated on test)" if ut.get("in_sample") else ""
        fit = f" ({ut.get('fit_split', 'val')})"
        md.append(f"| {e['name']} | {e['threads']} | {u.get('kind') or ut.get('rule')} | "
                  f"{pct(u.get('val_flagged'), fit)} | {pct(ut.get('flagged'), ins)} | "
                  f"{pct(u.get('foreign_flagged'))} | {pct(u.get('ece_after'), fit)} | "
                  f"{pct(ut.get('ece_after'), ins)} | "
                  + (f"{_cost_text(c)}; {c['scored_ms']['p50']:.2f} / {c['probs_ms']['p50']:.2f} ms |"
                     if c else "- |"))
    return md
