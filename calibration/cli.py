"""`edge-calibrate BUNDLE`: temperature scaling and the "uncertain" threshold, fitted on images the model never
trained on."""
from __future__ import annotations

import sys

import click

from trashcam.edge.clitools import CONTEXT, config_options, error, given, input_errors, make_config, raw, run

from .config import CalibrationConfig

PROG = "edge-calibrate"

EPILOG = """\
examples:
  edge-calibrate runs/b0                        # every variant; threshold for 95 % precision
  edge-calibrate runs/b0 --target-precision 0.98
  edge-calibrate runs/b0 --target-coverage 0.9  # flag the least confident 10 % as uncertain
  edge-calibrate runs/b0 --variants tflite-int8 --ood-data photos/not_waste/
  edge-calibrate runs/refit                     # a --stage2-data train+val bundle: fits on its test split

Fits one temperature T per variant on the saved validation split (minimum NLL of softmax(log p / T)), reports
ECE (15 bins) before/after, writes reliability diagrams and the coverage/accuracy curve to BUNDLE/calibration/,
and stores temperature, temperature_by_variant and threshold in metadata.json["calibration"], which
edge-run's Classifier applies. --ood-data DIR: images of no known class; reports the share flagged uncertain.
With no such images the uncertainty score flags about half of a kind of object the model never trained on
(docs/cold-start.md); reviewed ones (--ood-data, or edge-train --add-data's _foreign/) lift that for their kind.
A refit bundle (edge-train --stage2-data train+val) trained on its validation images; --split auto then fits on
its test split, the only images it never saw. Neither T nor the threshold changes which class wins, so its test
accuracy still counts; ECE and the share flagged on that test split become in-sample (edge-bench marks them).
Measured on 10 refit 5-fold models, each fitted on half its test fold and scored on the other half: INT8 ECE 2.2 %
and 5.2 % flagged (fitted on the seen validation images: 3.8 % and 6.3 %; default bundles: 2.3 % and 5.1 %).
Exit status: 0 ok, 2 bad bundle/data/arguments.
"""


# The cold start's measured limit (docs/cold-start.md, "Every fresh run") and the field loop that lifts it
# (docs/foreign-objects.md), said where a user first sees the score chosen without foreign images.
NO_FOREIGN_HINT = ("no reviewed foreign images: the score flags about half of a kind of object it never trained on; "
                   "reviewed ones (--ood-data DIR, or DIR/_foreign/ of edge-train --add-data) lift that for their "
                   "kind (docs/foreign-objects.md)")


def format_table(report: dict) -> str:
    head = (f"{'variant':<12} {'T':>7} {'NLL before':>10} {'after':>7} {'ECE before':>10} {'after':>7} "
            f"{'threshold':>9} {'coverage':>8} {'precision':>9}")
    lines = [head, "-" * len(head)]
    for name, r in report["variants"].items():
        th = r["threshold"]
        prec = "-" if th["precision"] is None else f"{th['precision'] * 100:.1f}%"
        lines.append(f"{name:<12} {r['temperature']:>7.3f} {r['before']['nll']:>10.4f} {r['after']['nll']:>7.4f} "
                     f"{r['before']['ece'] * 100:>9.2f}% {r['after']['ece'] * 100:>6.2f}% "
                     f"{th['threshold']:>9.4f} {th['coverage'] * 100:>7.1f}% {prec:>9}"
                     + (f"  ood below threshold {r['ood']['flagged_uncertain'] * 100:.1f}%" if "ood" in r else ""))
    f = report["fitted_on"]
    lines.append(f"fitted on {f['n_images']} images ({f['source']}); {f['n_skipped']} unreadable skipped; "
                 f"threshold from {report['base_variant']}")
    cold = False  # a rule fitted with no foreign images to hand
    for name, r in report["variants"].items():  # the rule edge-run applies: the score, when the variant has one
        u = r.get("uncertainty")
        if not u or u.get("kind") not in u.get("candidates", {}):
            continue
        c = u["candidates"][u["kind"]]
        cold = cold or "foreign_flagged" not in c
        foreign = f", {c['foreign_flagged'] * 100:.1f}% of foreign images" if "foreign_flagged" in c else ""
        if "foreign_flagged_in_sample" in c:
            foreign += " (each half scored with centres fitted on the other half)"
        how = ", an int8 model" if u.get("per_frame") == "int8 tflite" else ""
        promise = u.get("new_flagged_expected")
        new = f" (new known-class images: {promise * 100:.1f}% expected)" if promise is not None else ""
        lines.append(f"{name}: 'uncertain' = {u['kind']} score > {c['threshold']:.4g} "
                     f"({u.get('chosen_by', 'asked for')}{how}): flags {c['val_flagged'] * 100:.1f}% of the fitting "
                     f"images{new}{foreign}")
    if cold:
        lines.append(NO_FOREIGN_HINT)
    return "\n".join(lines)


def config_from_params(params: dict) -> CalibrationConfig:
    over = given(CalibrationConfig, params)
    if params.get("variant"):  # the old repeatable --variant NAME
        over["variants"] = tuple(over.get("variants", ())) + tuple(params["variant"])
    return make_config(CalibrationConfig, **over)


@click.command(PROG, context_settings=CONTEXT, epilog=raw(EPILOG),
               help="Temperature scaling and the 'uncertain' threshold, fitted on the validation split (the test split "
                    "for a refit bundle, which trained on its validation images).")
@click.argument("bundle")
@config_options(CalibrationConfig)
@click.option("--variant", multiple=True, hidden=True)
def command(bundle: str, **params) -> int:
    config = config_from_params(params)
    try:
        from .pipeline import calibrate_bundle
        report = calibrate_bundle(bundle, config)
    except input_errors() as e:
        return error(PROG, str(e))
    print(format_table(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(command, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
