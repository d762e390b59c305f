"""A lever against the recipe it changes, run by run on the same test images (`edge-spread --baseline DIR`).

Two edge-spread outputs made with the same data, folds and split seed test the same images in the runs that share
an id (seed, fold, numerics). Compared pair by pair, the split's sampling noise cancels: a fold that is hard for
the baseline is hard for the candidate too. Two views of the same pairs:

- per pair, the INT8 accuracy difference; its mean with the t-interval over the pairs (fold-to-fold view);
- over every paired test prediction, the images only the candidate gets right (`fixed`) and only the baseline
  gets right (`broken`), with the exact two-sided McNemar p-value (the images both get right or both get wrong
  say nothing about which is better).

A p-value is no licence to read test numbers as validation: a setting is still chosen on validation, and this
reports how much a chosen setting moved the test accuracy and how sure that is.
"""
from __future__ import annotations

import math
import os
from typing import Any

from .spread_stats import describe, wrong_images

# What must match for two outputs' runs of one id to have tested the same images.
SAME_SPLIT = ("data", "folds", "split_seed")


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar test: P(a split at least this uneven) for fixed + broken fair coin flips."""
    n, k = fixed + broken, min(fixed, broken)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def _split_settings(cfg: dict) -> dict[str, Any]:
    # one folder given as ../shared/... in one output and /work/shared/... in the other is the same data
    data = cfg.get("data")
    return {k: cfg.get(k) for k in SAME_SPLIT} | ({"data": os.path.realpath(data)} if data else {})


def compare(baseline: list[dict], candidate: list[dict], baseline_cfg: dict | None = None,
            candidate_cfg: dict | None = None) -> dict[str, Any]:
    """Pair finished runs by id; refuse outputs whose runs of one id cannot have tested the same images."""
    if baseline_cfg and candidate_cfg:
        b, c = _split_settings(baseline_cfg), _split_settings(candidate_cfg)
        differ = [k for k in SAME_SPLIT if b[k] != c[k]]
        if differ:
            raise ValueError("the two outputs were not made on the same splits: they differ in "
                             + ", ".join(f"{k} ({b[k]!r} vs {c[k]!r})" for k in differ))
    base = {r["id"]: r for r in baseline if r.get("status") == "ok"}
    pairs, skipped = [], []
    for r in sorted((r for r in candidate if r.get("status") == "ok"), key=lambda r: r["id"]):
        b = base.get(r["id"])
        if b is None:
            continue
        if b["test_images"] != r["test_images"]:
            skipped.append(f"{r['id']}: {b['test_images']} vs {r['test_images']} test images")
            continue
        wb, wc = wrong_images(b), wrong_images(r)
        both = wb is not None and wc is not None  # older records lack the list: accuracy only
        pairs.append({"id": r["id"], "images": r["test_images"], "baseline": b["int8"]["accuracy"],
                      "candidate": r["int8"]["accuracy"], "diff": r["int8"]["accuracy"] - b["int8"]["accuracy"],
                      "fixed": len(wb - wc) if both else None, "broken": len(wc - wb) if both else None})
    if not pairs:
        raise ValueError("no run id finished in both outputs" + (f" with equal test sets ({'; '.join(skipped)})"
                                                                 if skipped else ""))
    images = sum(p["images"] for p in pairs)
    listed = [p for p in pairs if p["fixed"] is not None]
    fixed, broken = sum(p["fixed"] for p in listed), sum(p["broken"] for p in listed)
    right_b = round(sum(p["baseline"] * p["images"] for p in pairs))
    right_c = round(sum(p["candidate"] * p["images"] for p in pairs))
    return {"pairs": pairs, "skipped": skipped, "diff": describe(p["diff"] for p in pairs),
            "pairs_better": sum(p["diff"] > 0 for p in pairs), "pairs_worse": sum(p["diff"] < 0 for p in pairs),
            "pooled": {"images": images, "baseline": right_b / images, "candidate": right_c / images,
                       "fixed": fixed, "broken": broken, "listed_pairs": len(listed),
                       "mcnemar_p": mcnemar_exact(fixed, broken) if listed else None}}


def _count(v: int | None) -> str:
    return "-" if v is None else str(v)


def to_markdown(result: dict, baseline: str = "baseline") -> str:
    d, p = result["diff"], result["pooled"]
    ci = (f", 95 % CI {100 * d['ci95'][0]:+.2f} .. {100 * d['ci95'][1]:+.2f}" if d.get("ci95") else "")
    lines = [f"# Paired against {baseline}", "", "| run | test images | baseline INT8 | this INT8 | difference | "
             "fixed | broken |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {q['id']} | {q['images']} | {100 * q['baseline']:.2f} % | {100 * q['candidate']:.2f} % | "
              f"{100 * q['diff']:+.2f} pp | {_count(q['fixed'])} | {_count(q['broken'])} |" for q in result["pairs"]]
    lines += ["", f"Mean difference over {d['n']} pairs: {100 * d['mean']:+.2f} pp{ci}; better in "
                  f"{result['pairs_better']}, worse in {result['pairs_worse']}.",
              f"Pooled over {p['images']} paired test predictions: {100 * p['baseline']:.2f} % -> "
              f"{100 * p['candidate']:.2f} %"
              + (f"; {p['fixed']} images fixed, {p['broken']} broken (exact McNemar p = {p['mcnemar_p']:.3f}"
                 + (f", over the {p['listed_pairs']} pairs whose runs listed their mistakes"
                    if p["listed_pairs"] < len(result["pairs"]) else "") + ")."
                 if p["mcnemar_p"] is not None else "; no run listed its mistakes, so no fixed/broken count.")]
    if result["skipped"]:
        lines += ["", "Not paired (different test sets): " + "; ".join(result["skipped"])]
    return "\n".join(lines) + "\n"
