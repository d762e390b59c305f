"""`edge-convert BUNDLE`: add deployable variants (TFLite fp32/fp16/int8, ONNX), each checked before it is kept."""
from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  edge-convert runs/b0                 # all variants, each checked on the bundle's saved test split
  edge-convert runs/b0 --int8          # just INT8 (uint8 I/O, 300 class-balanced training images)
  edge-convert runs/b0 --int8 --calib-size 600 --int8-io float
  edge-convert runs/b0 --int8 --int8-float-layers -1   # fully integer (NPU / Edge TPU)
  edge-convert runs/b0 --int8 --no-int8-bias-correction --no-int8-range-repair --int8-float-layers -1
                                       # the stock TFLite converter, no INT8 recipe
  edge-convert runs/b0 --fp16 --max-drop 0.5
  edge-convert runs/b0 --data photos/  # check on another labelled folder (DIR/<class>/*.jpg)
  edge-convert runs/b0 --onnx --opset 17 --no-check

Each variant is written to a temp file, run with the edge runtime on the test images and compared with the
Keras float model (accuracy, drop in percentage points, top-1 agreement, max |Δprob|). Over --max-drop it is
NOT installed (an earlier file stays), the table says FAIL and the exit status is 1. The report is saved as
BUNDLE/convert_report.json; sizes, checksums and check results go into BUNDLE/metadata.json.

INT8 recipe (default Lite0 bundle, 303 test images, 3 calibration seeds): the stock converter lost 1.0-1.65 pp
(mean |Δprob| 0.013, max 0.29); bias correction + repaired ranges + float stem: -0.33..0.00 pp, mean |Δprob|
0.004, max 0.08, same size and speed. Why, step by step: convert/int8.py.
"""


def build_parser() -> argparse.ArgumentParser:
    from .variants import VARIANTS

    p = argparse.ArgumentParser(prog="edge-convert", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle directory made by edge-train (needs model.keras)")
    g = p.add_argument_group("variants (none given: all)")
    for v in VARIANTS.values():
        g.add_argument(f"--{v.flag}", dest="variants", action="append_const", const=v.name,
                       help=f"{v.name}: {v.help}")
    g.add_argument("--all", action="store_true", help="every variant (the default)")
    c = p.add_argument_group("accuracy check")
    c.add_argument("--max-drop", type=float, default=1.0, metavar="PP",
                   help="allowed accuracy drop vs Keras, percentage points (default 1.0)")
    c.add_argument("--no-check", action="store_true", help="skip the check (variants marked UNCHECKED)")
    c.add_argument("--data", metavar="DIR", help="check on DIR/<class>/*.jpg instead of the saved test split")
    c.add_argument("--data-root", metavar="DIR", help="where the saved split's images live now, if moved")
    q = p.add_argument_group("INT8")
    q.add_argument("--calib-size", type=int, default=300, metavar="N",
                   help="representative images, class-balanced from the train split (default 300)")
    q.add_argument("--calib-data", metavar="DIR", help="take representative images from DIR instead")
    q.add_argument("--seed", type=int, default=0, help="selects the representative images (default 0)")
    q.add_argument("--int8-io", choices=("uint8", "float"), default="uint8",
                   help="uint8 (default): integer input/output; float: float I/O around the integer model")
    q.add_argument("--int8-float-layers", type=int, default=2, metavar="N",
                   help="keep the input normalisation and the first N conv/dense layers in float (default 2: "
                        "stem + first depthwise, the most rounding-sensitive layers; 0-5%% slower than fully "
                        "integer here); 0: only the normalisation; -1: fully integer, for NPUs / Edge TPU that "
                        "run nothing else")
    q.add_argument("--int8-bias-correction", action=argparse.BooleanOptionalAction, default=True,
                   help="cancel the mean output shift that int8 weight rounding causes in each layer (default on)")
    q.add_argument("--int8-range-repair", action=argparse.BooleanOptionalAction, default=True,
                   help="re-measure the calibrated activation ranges op by op; the TFLite calibrator records "
                        "some too wide (TF issue 127842) (default on; ~15 s for 300 images at 288 px)")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset (default 13)")
    p.add_argument("--threads", type=int, default=None, help="inference threads for the check")
    return p


def config_from_args(args):
    from .config import ConvertConfig
    variants = () if args.all else tuple(args.variants or ())
    return ConvertConfig(variants=variants, check=not args.no_check, max_drop=args.max_drop,
                         calib_size=args.calib_size, calib_data=args.calib_data, seed=args.seed,
                         int8_io=args.int8_io, int8_bias_correction=args.int8_bias_correction,
                         int8_range_repair=args.int8_range_repair, int8_float_layers=args.int8_float_layers,
                         opset=args.opset, data=args.data, data_root=args.data_root,
                         threads=args.threads)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from trashcam.edge.bundle import BundleError
    from trashcam.edge.dataset import DatasetError

    try:
        config = config_from_args(args)
        from .pipeline import convert_bundle
        from .report import advice, format_table
        report = convert_bundle(args.bundle, config)
    except (BundleError, DatasetError, ValueError, FileNotFoundError) as e:
        print(f"edge-convert: error: {e}", file=sys.stderr)
        return 2
    print(format_table(report))
    for line in advice(report):
        print(line, file=sys.stderr)
    if not config.check:
        print("WARNING: nothing was checked (--no-check); variants are marked UNCHECKED", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
