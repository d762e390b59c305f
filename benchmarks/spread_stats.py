"""Statistics of a spread of training runs (benchmarks/spread.py): mean, 95 % interval, min/max, per-class F1.

Pure NumPy on the per-run records, so a summary can be recomputed from the run JSONs anywhere. The 95 % interval
is of the mean (t-distribution, n - 1 degrees of freedom): it says how well the runs pin down the recipe's mean,
while min/max say what one more run may give. Both are reported; neither replaces the other.
"""
from __future__ import annotations

import math
from itertools import combinations
from pathlib import PurePath
from typing import Any, Iterable

import numpy as np

from trashcam.train.evaluate import wilson_interval

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (no SciPy needed).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
# Confusions issue 12 names (true -> predicted, both directions); reported whenever both labels exist.
NAMED_PAIRS = (("glass", "plastic"), ("plastic", "glass"), ("metal", "glass"), ("glass", "metal"))
# What the issue asks of the shipped model (INT8, single pass); shown as met / not met in the summary.
TARGETS = {"int8_accuracy_mean": 0.95, "int8_macro_f1_mean": 0.95, "int8_drop_pp_mean_max": 0.3,
           "int8_accuracy_range_pp_max": 1.0}
# Expected max - min of k draws from a normal distribution, in standard deviations (k = 2..10).
RANGE_SD = (1.128, 1.693, 2.059, 2.326, 2.534, 2.704, 2.847, 2.970, 3.078)


def t975(df: int) -> float:
    if df < 1:
        return float("nan")
    # beyond the table: 1.96 + 2.5/df is within 0.002 of the exact quantile for df > 30
    return T975[df - 1] if df <= len(T975) else 1.96 + 2.5 / df


def describe(values: Iterable[float]) -> dict[str, Any]:
    """n, mean, std (n - 1), min, max, range and the t-interval of the mean; None where n is too small."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], np.float64)
    n = len(v)
    if n == 0:
        return {"n": 0}
    out: dict[str, Any] = {"n": n, "mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
                           "range": float(v.max() - v.min()), "std": None, "ci95": None, "ci95_half_width": None}
    if n > 1:
        std = float(v.std(ddof=1))
        half = t975(n - 1) * std / math.sqrt(n)
        out.update(std=std, ci95=[out["mean"] - half, out["mean"] + half], ci95_half_width=half)
    return out


def _f1_by_class(rec: dict, key: str) -> dict[str, float]:
    return {c: m["f1"] for c, m in rec[key]["per_class"].items()}


def per_class_f1(records: list[dict], key: str) -> dict[str, dict]:
    labels = records[0]["labels"]
    return {c: describe(_f1_by_class(r, key)[c] for r in records) for c in labels}


def confusion_summary(records: list[dict], key: str = "int8", top: int = 6) -> dict[str, Any]:
    """Summed confusion matrix over runs, the most frequent true -> predicted mistakes and the named pairs.

    `share` is the fraction of the true class's test images (over all runs) that went to the predicted class.
    """
    labels = records[0]["labels"]
    cm = np.sum([np.asarray(r[key]["confusion_matrix"], np.int64) for r in records], axis=0)
    support = cm.sum(1)

    def pair(i: int, j: int) -> dict:
        return {"true": labels[i], "predicted": labels[j], "count": int(cm[i, j]),
                "per_run": float(cm[i, j]) / len(records),
                "share": float(cm[i, j] / support[i]) if support[i] else None}

    off = [(int(cm[i, j]), i, j) for i in range(len(labels)) for j in range(len(labels)) if i != j and cm[i, j]]
    named = [pair(labels.index(a), labels.index(b)) for a, b in NAMED_PAIRS if a in labels and b in labels]
    return {"labels": labels, "runs": len(records), "confusion_matrix": cm.tolist(),
            "errors": int(cm.sum() - np.trace(cm)), "images": int(cm.sum()),
            "top": [pair(i, j) for _, i, j in sorted(off, key=lambda t: (-t[0], t[1], t[2]))[:top]],
            "named": named}


def pooled_folds(records: list[dict]) -> list[dict]:
    """Per repetition (seed x numerics) whose K folds are all present: accuracy over all its test images.

    Folds test disjoint images, so their pooled accuracy is the cross-validated estimate of one repetition."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("fold"):
            groups.setdefault((r["seed"], r["onednn"], r["threads"]), []).append(r)
    out = []
    for (seed, onednn, threads), rs in sorted(groups.items()):
        n_folds = int(rs[0]["fold"].split("/")[1])
        if len({r["fold"] for r in rs}) != n_folds:
            continue
        images = sum(r["test_images"] for r in rs)
        right = round(sum(r["int8"]["accuracy"] * r["test_images"] for r in rs))
        out.append({"seed": seed, "onednn": onednn, "threads": threads, "folds": n_folds, "images": images,
                    "int8_accuracy": right / images,
                    # every image tested once: the binomial interval of the pooled count (the t-interval over K
                    # folds in the table is the wider, fold-to-fold view)
                    "int8_wilson95": list(wilson_interval(right, images)),
                    "float_accuracy": sum(r["float"]["accuracy"] * r["test_images"] for r in rs) / images})
    return out


def grouped(records: list[dict], key) -> dict[str, dict]:
    """INT8 accuracy described per group (e.g. per numerics setting or per seed)."""
    groups: dict[str, list[float]] = {}
    for r in records:
        groups.setdefault(key(r), []).append(r["int8"]["accuracy"])
    return {k: describe(v) for k, v in sorted(groups.items())}


def wrong_images(record: dict) -> set[str] | None:
    """The run's INT8 mistakes as class/file: the same image whether the data folder was relative or absolute.
    None for a record written before runs listed their mistakes (its accuracy still counts, its churn cannot)."""
    listed = record.get("int8", {}).get("misclassified")
    return None if listed is None else {"/".join(PurePath(path).parts[-2:]) for path, *_ in listed}


def churn(records: list[dict]) -> dict[str, Any] | None:
    """How much runs that tested the same images (one split seed, one fold) disagree, and the max - min of their
    accuracy that this disagreement alone implies.

    Two runs differ on D images (right in one, wrong in the other). Were those coin flips, each run's accuracy
    would scatter around the recipe's with sd sqrt(D / 2) / N, and k runs would span RANGE_SD[k] times that: the
    spread to expect from the runs' churn, read off hundreds of images rather than off k accuracies. Pairs of one
    seed under other numerics show how much of the churn float rounding alone causes."""
    groups: dict[tuple, list[tuple[dict, set[str]]]] = {}
    for r in records:  # each run's mistakes read once, not once per pair it is in
        wrong = wrong_images(r)
        if wrong is None:
            continue
        num = r.get("numerics") or {}
        split = num.get("split_seed", r["seed"])
        groups.setdefault((split, r.get("fold"), r["test_images"]), []).append((r, wrong))
    pairs = []
    for (_, _, images), rs in groups.items():
        for (a, wa), (b, wb) in combinations(rs, 2):
            pairs.append({"images": images, "discordant": len(wa ^ wb),
                          "kind": "numerics" if a["seed"] == b["seed"] else "seed"})
    if not pairs:
        return None
    runs = max(len(rs) for rs in groups.values())
    d = describe(p["discordant"] / p["images"] for p in pairs)
    sd = math.sqrt(d["mean"] / 2 / (sum(p["images"] for p in pairs) / len(pairs)))
    return {"pairs": len(pairs), "discordant_share": d,
            "by_kind": {k: describe(p["discordant"] / p["images"] for p in pairs if p["kind"] == k)
                        for k in ("seed", "numerics") if any(p["kind"] == k for p in pairs)},
            "run_sd": sd, "runs": runs,
            "implied_range": sd * RANGE_SD[min(runs, len(RANGE_SD) + 1) - 2] if runs > 1 else None}


def summarize(records: list[dict]) -> dict[str, Any]:
    """The summary of finished runs (status "ok"); failed runs are counted, not averaged."""
    ok = [r for r in records if r.get("status") == "ok"]
    out: dict[str, Any] = {"runs": len(records), "runs_ok": len(ok),
                           "runs_failed": sorted(r["id"] for r in records if r.get("status") != "ok")}
    if not ok:
        return out
    metric = {
        "int8_accuracy": lambda r: r["int8"]["accuracy"],
        "int8_macro_f1": lambda r: r["int8"]["macro_f1"],
        "float_accuracy": lambda r: r["float"]["accuracy"],
        "float_macro_f1": lambda r: r["float"]["macro_f1"],
        "float_tta_accuracy": lambda r: (r.get("float_tta") or {}).get("accuracy"),
        "int8_drop_pp": lambda r: r["int8_drop_pp"],
        "train_wall_s": lambda r: r["wall_s"].get("train"),
        "train_decode_s": lambda r: (r.get("train_seconds") or {}).get("decode"),
        "convert_wall_s": lambda r: r["wall_s"].get("convert"),
        "stage2_epochs_run": lambda r: next((s["epochs_run"] for s in r.get("stages", []) if s["name"] == "stage2"),
                                            None),
    }
    out["metrics"] = {name: describe(f(r) for r in ok) for name, f in metric.items()}
    out["per_class_f1"] = {"int8": per_class_f1(ok, "int8"), "float": per_class_f1(ok, "float")}
    out["confusions"] = {"int8": confusion_summary(ok, "int8"), "float": confusion_summary(ok, "float")}
    out["by_numerics"] = grouped(ok, lambda r: f"onednn={r['onednn']} threads={r['threads']}")
    out["by_seed"] = grouped(ok, lambda r: f"seed={r['seed']}")
    out["churn"] = churn(ok)
    pooled = pooled_folds(ok)
    if pooled:
        out["kfold_pooled"] = {"repetitions": pooled, "int8_accuracy": describe(p["int8_accuracy"] for p in pooled),
                               "float_accuracy": describe(p["float_accuracy"] for p in pooled)}
    m = out["metrics"]
    acc = m["int8_accuracy"]
    if pooled and all(r.get("fold") for r in ok):
        # folds test different images, so their range is mostly the test sets' sampling noise: the spread of the
        # recipe is that of whole repetitions, pooled, and needs two of them
        acc = out["kfold_pooled"]["int8_accuracy"]
        out["targets_over"] = "k-fold repetitions, pooled"
    out["targets"] = {
        "int8_accuracy_mean >= 95.0 %": acc["mean"] >= TARGETS["int8_accuracy_mean"],
        "int8_macro_f1_mean >= 0.95": m["int8_macro_f1"]["mean"] >= TARGETS["int8_macro_f1_mean"],
        "int8_drop_pp_mean <= 0.3": m["int8_drop_pp"]["mean"] <= TARGETS["int8_drop_pp_mean_max"],
        "int8_accuracy max - min <= 1.0 pp": (acc["range"] * 100 <= TARGETS["int8_accuracy_range_pp_max"]
                                              if acc["n"] > 1 else None),
    }
    return out


def expected_spread(summary: dict, margin_pp: float = 0.5) -> dict[str, Any]:
    """What the slow reproduction test asserts: the measured INT8 mean and a tolerance that covers every
    measured run plus `margin_pp` (a run on yet another machine may land a little outside what was seen)."""
    d = summary["metrics"]["int8_accuracy"]
    tol = max(d["mean"] - d["min"], d["max"] - d["mean"]) + margin_pp / 100
    return {"int8_accuracy_mean": round(d["mean"], 4), "tolerance": round(tol, 4), "runs": d["n"],
            "min": round(d["min"], 4), "max": round(d["max"], 4), "measured": True}


def _pct(d: dict, key: str = "mean") -> str:
    v = d.get(key)
    return "-" if v is None else f"{100 * v:.2f}"


def to_markdown(summary: dict, title: str = "Spread of training runs") -> str:
    lines = [f"# {title}", "", f"Runs: {summary['runs_ok']} finished of {summary['runs']}"
             + (f"; failed: {', '.join(summary['runs_failed'])}" if summary["runs_failed"] else "")
             + (f" (pooled from {', '.join(summary['merged_from'])})" if summary.get("merged_from") else ""), ""]
    if not summary.get("metrics"):
        return "\n".join(lines) + "\n"
    lines += ["| metric | n | mean | 95 % CI of mean | std | min | max | max - min |", "|---" * 8 + "|"]
    for name, d in summary["metrics"].items():
        if not d.get("n"):
            continue
        if name.endswith(("accuracy", "macro_f1")):
            ci = f"{_pct({'v': d['ci95'][0]}, 'v')} .. {_pct({'v': d['ci95'][1]}, 'v')}" if d["ci95"] else "-"
            lines.append(f"| {name} (%) | {d['n']} | {_pct(d)} | {ci} | {_pct(d, 'std')} | {_pct(d, 'min')} | "
                         f"{_pct(d, 'max')} | {_pct(d, 'range')} |")
        else:
            fmt = (lambda v: "-" if v is None else f"{v:.2f}")
            ci = f"{fmt(d['ci95'][0])} .. {fmt(d['ci95'][1])}" if d["ci95"] else "-"
            lines.append(f"| {name} | {d['n']} | {fmt(d['mean'])} | {ci} | {fmt(d['std'])} | {fmt(d['min'])} | "
                         f"{fmt(d['max'])} | {fmt(d['range'])} |")
    if "kfold_pooled" in summary:
        k = summary["kfold_pooled"]
        lines += ["", f"k-fold, pooled over each repetition's folds ({len(k['repetitions'])} repetitions): INT8 "
                      f"{_pct(k['int8_accuracy'])} % (min {_pct(k['int8_accuracy'], 'min')}, max "
                      f"{_pct(k['int8_accuracy'], 'max')}), float {_pct(k['float_accuracy'])} %"]
        lines += [f"- seed {p['seed']}, oneDNN {p['onednn']}, {p['threads']} threads: INT8 "
                  f"{100 * p['int8_accuracy']:.2f} % of {p['images']} images (Wilson 95 % "
                  f"{100 * p['int8_wilson95'][0]:.2f}-{100 * p['int8_wilson95'][1]:.2f} %)" for p in k["repetitions"]]
    for title_, key in (("numerics setting", "by_numerics"), ("seed", "by_seed")):
        lines += ["", f"INT8 accuracy per {title_}: " + "; ".join(
            f"{g} {_pct(d)} % ({_pct(d, 'min')}..{_pct(d, 'max')}, n={d['n']})" for g, d in summary[key].items())]
    if summary.get("churn"):
        c = summary["churn"]
        names = {"seed": "other seeds", "numerics": "one seed, other numerics"}
        kinds = "; ".join(f"{names[k]}: {_pct(d)} % ({d['n']})" for k, d in c["by_kind"].items())
        lines += ["", f"Churn: two runs on the same test images differ on {_pct(c['discordant_share'])} % of them "
                      f"(mean of {c['pairs']} pairs; {kinds}). Were those coin flips, one run's accuracy would "
                      f"carry {100 * c['run_sd']:.2f} pp of noise (sd)"
                  + (f" and {c['runs']} runs would span {100 * c['implied_range']:.2f} pp (expected max - min)"
                     if c["implied_range"] is not None else "") + "."]
    lines += ["", "| class | INT8 F1 mean | min | max | float F1 mean |", "|---|---|---|---|---|"]
    for c, d in summary["per_class_f1"]["int8"].items():
        lines.append(f"| {c} | {d['mean']:.3f} | {d['min']:.3f} | {d['max']:.3f} | "
                     f"{summary['per_class_f1']['float'][c]['mean']:.3f} |")
    conf = summary["confusions"]["int8"]
    lines += ["", f"INT8 mistakes over all runs: {conf['errors']} of {conf['images']} test predictions. Most frequent:"]
    lines += [f"- {p['true']} -> {p['predicted']}: {p['count']} ({p['per_run']:.1f} per run, "
              f"{100 * (p['share'] or 0):.1f} % of {p['true']})" for p in conf["top"]]
    if conf["named"]:
        lines += ["", "Named pairs (issue 12): " + "; ".join(
            f"{p['true']} -> {p['predicted']} {p['per_run']:.1f}/run" for p in conf["named"])]
    verdict = {True: "met", False: "NOT met", None: "not measured (needs two)"}
    over = f"; accuracy over {summary['targets_over']}" if "targets_over" in summary else ""
    lines += ["", f"Targets (INT8, single pass{over}): "
              + "; ".join(f"{k}: {verdict[v]}" for k, v in summary["targets"].items())]
    return "\n".join(lines) + "\n"
