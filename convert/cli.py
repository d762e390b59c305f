"""`edge-convert BUNDLE`: add deployable variants (TFLite fp32/fp16/int8, ONNX), each checked before it is kept.

The options are ConvertConfig's fields (convert/config.py).
"""
from __future__ import annotations

import sys

import click

from trashcam.edge.clitools import CONTEXT, config_options, error, given, input_errors, make_config, raw, run

from .config import ConvertConfig

PROG = "edge-convert"
# The old one-flag-per-variant spellings still work (hidden): --int8 is --variants tflite-int8.
SHORTHANDS = ("fp32", "fp16", "int8", "onnx")

EPILOG = """\
examples:
  edge-convert runs/b0                 # all variants, each checked on the bundle's saved test split
  edge-convert runs/b0 --variants tflite-int8          # just INT8 (uint8 I/O, 300 class-balanced training images)
  edge-convert runs/b0 --variants int8 --calib-size 600 --int8-io float
  edge-convert runs/b0 --variants int8 --int8-float-layers -1   # fully integer (NPU / Edge TPU)
  edge-convert runs/b0 --variants int8 --no-int8-bias-correction --no-int8-range-repair --int8-float-layers -1
                                       # the stock TFLite converter, no INT8 recipe
  edge-convert runs/b0 --variants tflite-fp16 --max-drop 0.5
  edge-convert runs/b0 --data photos/  # check on another labelled folder (DIR/<class>/*.jpg)
  edge-convert runs/b0 --variants onnx --opset 17 --no-check

Each variant is written to a temp file, run with the edge runtime on the test images and compared with the
Keras float model (accuracy, drop in percentage points, top-1 agreement, max |Δprob|). Over --max-drop it is
NOT installed (an earlier file stays), the table says FAIL and the exit status is 1. The report is saved as
BUNDLE/convert_report.json; sizes, checksums and check results go into BUNDLE/metadata.json.
Exit status: 0 ok, 1 a variant failed its check, 2 bad bundle/data/arguments.

INT8 recipe (default Lite0 bundle, 303 test images, 3 calibration seeds): the stock converter lost 1.0-1.65 pp
(mean |Δprob| 0.013, max 0.29); bias correction + repaired ranges + float stem: -0.33..0.00 pp, mean |Δprob|
0.004, max 0.08, same size and speed. Why, step by step: convert/int8.py.
"""


def config_from_params(params: dict) -> ConvertConfig:
    over = given(ConvertConfig, params)
    picked = tuple(s for s in SHORTHANDS if params.get(s))
    if picked and not params.get("all"):
        over["variants"] = tuple(over.get("variants", ())) + picked
    if params.get("all"):
        over["variants"] = ()
    return make_config(ConvertConfig, **over)


def _shorthands(fn):
    for s in SHORTHANDS:
        fn = click.option(f"--{s}", is_flag=True, hidden=True)(fn)
    return click.option("--all", is_flag=True, hidden=True)(fn)


@click.command(PROG, context_settings=CONTEXT, epilog=raw(EPILOG),
               help="Add deployable variants (TFLite fp32/fp16/int8, ONNX) to a bundle made by edge-train, "
                    "each checked before it is kept.")
@click.argument("bundle")
@config_options(ConvertConfig)
@_shorthands
def command(bundle: str, **params) -> int:
    config = config_from_params(params)
    try:
        from .pipeline import convert_bundle
        from .report import advice, format_table
        report = convert_bundle(bundle, config)
    except input_errors() as e:
        return error(PROG, str(e))
    print(format_table(report))
    for line in advice(report):
        print(line, file=sys.stderr)
    if not config.check:
        print("WARNING: nothing was checked (--no-check); variants are marked UNCHECKED", file=sys.stderr)
    return 0 if report["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    return run(command, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
