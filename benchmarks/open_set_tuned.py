"""Leave-one-class-out with the deployed pipeline: what issue 15's target is measured on.

For each class k: `edge-train --exclude-classes k` (the recipe, fine-tuned), `edge-convert --variants tflite-int8`,
`edge-calibrate` with its defaults and no foreign images (so nothing is chosen on class k), then the INT8 model with
the bundle's own score and threshold, exactly as `Classifier` flags frames, on the 4-class model's own test split
and on every image of class k. benchmarks/open_set.py is the cheap frozen-feature version of the same experiment,
for comparing scores; this one measures the thing that ships (~15 min a fold on 2 cores).

    python -m trashcam.benchmarks.open_set_tuned --data ../shared/data/trashnet5 --out runs/loco
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from .spread import _step

VARIANT = "tflite-int8"


def fold_steps(data: Path, held_out: str, bundle: Path, recipe: str, seed: int, cache: Path,
               threads: int, train_args: tuple[str, ...] = ()) -> list[tuple[str, list[str]]]:
    py = sys.executable
    train = [py, "-m", "trashcam.train.cli", "--data", str(data), "--out", str(bundle), "--recipe", recipe,
             "--seed", str(seed), "--exclude-classes", held_out, "--threads", str(threads), "--cache-dir", str(cache),
             "--quiet", *train_args]
    if bundle.with_name(bundle.name + ".partial").is_dir():
        train.append("--resume")
    return [("train", train),
            ("convert", [py, "-m", "trashcam.convert.cli", str(bundle), "--variants", VARIANT]),
            ("calibrate", [py, "-m", "trashcam.calibration.cli", str(bundle), "--variants", VARIANT,
                           "--threads", str(threads), "--no-plots"])]


def step_done(bundle: Path, step: str) -> bool:
    meta = bundle / "metadata.json"
    if not meta.is_file():
        return False
    m = json.loads(meta.read_text())
    return {"train": True, "convert": VARIANT in m.get("variants", {}),
            "calibrate": VARIANT in m.get("calibration", {}).get("ood_by_variant", {})}[step]


def run_steps(steps: list[tuple[str, list[str]]], bundle: Path, log: Path, fold: str,
              force: tuple[str, ...] = ()) -> dict[str, float]:
    """Run each step `bundle` has not done yet (or named in `force`), its output appended to `log`; -> seconds per
    step run. A failed step stops the experiment (a later fold would only repeat the failure)."""
    wall = {}
    for name, argv in steps:
        if name not in force and step_done(bundle, name):
            continue
        rc, wall[name] = _step(name, argv, {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, log, 7200)
        if rc != 0:
            raise SystemExit(f"{fold}: {name} exited {rc}; see {log}")
    return wall


def flag_images(clf, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(calibrated probs, score, flagged) of each preprocessed image, by the deployed rule (a Classifier's)."""
    probs, scores, flagged = [], [], []
    for im in x:
        p = clf.probs(im)
        s, u = clf.frame_score(clf.engine, p)
        probs.append(p), scores.append(s), flagged.append(u)
    return np.stack(probs), np.asarray(scores), np.asarray(flagged)


def measure(bundle_dir: Path, data: Path, held_out: str, threads: int) -> dict:
    from trashcam.calibration.metrics import ece
    from trashcam.edge.bundle import Bundle
    from trashcam.edge.imageset import decode, split_images
    from trashcam.edge.ood import auroc
    from trashcam.edge.runtime import Classifier

    bundle = Bundle.load(bundle_dir)
    clf = Classifier(bundle, VARIANT, threads)
    test = split_images(bundle, "test")
    paths = sorted(p for p in (data / held_out).iterdir() if p.is_file())
    foreign = decode(paths, np.full(len(paths), -1), bundle.preprocessing, f"{data / held_out}", "decode foreign")
    p_in, s_in, f_in = flag_images(clf, test.x)
    _, s_out, f_out = flag_images(clf, foreign.x)
    meta = bundle.calibration["ood_by_variant"][VARIANT]
    rec = {"held_out": held_out, "classes": bundle.labels, "score": meta.get("kind"),
           "threshold": meta.get("threshold"), "val_flagged": meta.get("flag_rate"),
           "test_images": len(test), "foreign_images": len(foreign), "foreign_skipped": len(foreign.skipped),
           "test_accuracy": float(np.mean(p_in.argmax(1) == test.y)), "test_ece": ece(p_in, test.y),
           "test_flagged": float(f_in.mean()), "foreign_flagged": float(f_out.mean()),
           "auroc": auroc(s_in, s_out), "calibrated_on": bundle.calibrated_on}
    if rec["calibrated_on"] == "test":  # a refit bundle: its in-distribution numbers, fitted there, cross-fitted
        from .crossfit import bundle_crossfit
        x = bundle_crossfit(bundle, VARIANT, clf.engine, test, meta.get("flag_rate", 0.05))
        rec.update(test_ece_in_sample=rec["test_ece"], test_flagged_in_sample=rec["test_flagged"],
                   test_ece=x["ece"], test_flagged=x["flagged"])
    return rec


def summarise(folds: list[dict]) -> dict:
    keys = ("foreign_flagged", "test_flagged", "auroc", "test_accuracy", "test_ece")
    out = {k: {"mean": float(np.mean([f[k] for f in folds])), "min": float(np.min([f[k] for f in folds])),
               "max": float(np.max([f[k] for f in folds]))} for k in keys}
    worst = min(folds, key=lambda f: f["foreign_flagged"])
    out["worst_fold"] = worst["held_out"]
    out["target_met"] = out["foreign_flagged"]["mean"] >= 0.5 and out["test_flagged"]["mean"] <= 0.05
    return out


def markdown(folds: list[dict], summary: dict) -> str:
    pct = lambda v: f"{100 * v:.1f} %"  # noqa: E731
    md = ["# Leave-one-class-out, deployed INT8 (fine-tuned, edge-calibrate defaults)", "",
          "| held out | score | foreign flagged | in-dist test flagged | AUROC | test accuracy | test ECE |",
          "|---|---|---:|---:|---:|---:|---:|"]
    for f in folds:
        md.append(f"| {f['held_out']} | {f['score']} | {pct(f['foreign_flagged'])} | {pct(f['test_flagged'])} | "
                  f"{f['auroc']:.3f} | {pct(f['test_accuracy'])} | {pct(f['test_ece'])} |")
    s = summary
    md.append(f"| **mean** | | **{pct(s['foreign_flagged']['mean'])}** | {pct(s['test_flagged']['mean'])} | "
              f"{s['auroc']['mean']:.3f} | {pct(s['test_accuracy']['mean'])} | {pct(s['test_ece']['mean'])} |")
    md += ["", f"Worst fold: {s['worst_fold']} ({pct(s['foreign_flagged']['min'])} flagged). Target (>= 50 % "
           f"foreign at <= 5 % in-distribution, mean of folds): {'met' if s['target_met'] else 'not met'}."]
    if any(f.get("calibrated_on") == "test" for f in folds):
        md += ["", "Bundles calibrated on their test split (refit): in-distribution flagged and ECE are cross-fitted "
               "(fitted on half the test split, scored on the other half; benchmarks/crossfit.py)."]
    return "\n".join(md) + "\n"


def run(data: Path, out: Path, recipe: str, seed: int, threads: int, classes: list[str] | None,
        train_args: tuple[str, ...] = (), recalibrate: bool = False) -> dict:
    """`recalibrate`: folds already measured are calibrated again with today's edge-calibrate and measured again (a
    change of the score or its defaults, on the same fold models); their records are replaced."""
    classes = classes or sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    folds = []
    for k in classes:
        fold_dir = out / k
        fold_dir.mkdir(parents=True, exist_ok=True)
        bundle, log = fold_dir / "bundle", fold_dir / "log.txt"
        record = fold_dir / "record.json"
        if record.is_file() and not recalibrate:
            folds.append(json.loads(record.read_text()))
            continue
        steps = fold_steps(data, k, bundle, recipe, seed, out / ".cache", threads, train_args)
        wall = run_steps(steps, bundle, log, k, ("calibrate",) if recalibrate else ())
        t0 = time.perf_counter()
        rec = {**measure(bundle, data, k, threads), "train_args": list(train_args),
               "wall_s": {**wall, "measure": round(time.perf_counter() - t0, 1)}}
        record.write_text(json.dumps(rec, indent=1))
        folds.append(rec)
        print(f"{k}: foreign flagged {rec['foreign_flagged']:.3f}, test flagged {rec['test_flagged']:.3f}", flush=True)
    summary = summarise(folds)
    (out / "summary.json").write_text(json.dumps({"folds": folds, "summary": summary}, indent=1))
    (out / "summary.md").write_text(markdown(folds, summary))
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, help="DIR/<class>/*.jpg")
    p.add_argument("--out", default=Path("runs/loco"), type=Path, help="a folder per held-out class + summary.md")
    p.add_argument("--recipe", default="default")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--classes", default="", help="held-out classes, comma-separated (default: every class)")
    p.add_argument("--train-args", default="", metavar="'ARGS'",
                   help="more edge-train flags for every fold, one quoted string: a recipe change measured here, "
                        "e.g. --train-args '--label-smoothing 0 --mixup-alpha 0'")
    p.add_argument("--recalibrate", action="store_true",
                   help="calibrate the folds already trained again with today's edge-calibrate, and measure them "
                        "again: a change of the uncertainty score's defaults measured on the same fold models")
    a = p.parse_args(argv)
    run(a.data.resolve(), a.out, a.recipe, a.seed, a.threads, [c for c in a.classes.split(",") if c] or None,
        tuple(shlex.split(a.train_args)), a.recalibrate)
    print((a.out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
