"""`edge-calibrate BUNDLE`: temperature scaling and the "uncertain" threshold, fitted on the validation split."""
from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  edge-calibrate runs/b0                        # every variant; threshold for 95 % precision
  edge-calibrate runs/b0 --target-precision 0.98
  edge-calibrate runs/b0 --target-coverage 0.9  # flag the least confident 10 % as uncertain
  edge-calibrate runs/b0 --variant tflite-int8 --ood-data photos/not_waste/

Fits one temperature T per variant on the saved validation split (minimum NLL of softmax(log p / T)), reports
ECE (15 bins) before/after, writes reliability diagrams and the coverage/accuracy curve to BUNDLE/calibration/,
and stores temperature, temperature_by_variant and threshold in metadata.json["calibration"], which
edge-run's Classifier applies. --ood-data DIR: images of no known class; reports the share flagged uncertain.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-calibrate", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle directory (after edge-train; best after edge-convert)")
    p.add_argument("--variant", dest="variants", action="append", metavar="NAME",
                   help="calibrate only this variant (repeatable; default: all that did not fail their check)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--target-precision", type=float, default=0.95, metavar="P",
                   help="threshold: lowest confidence keeping accepted predictions >= P accurate (default 0.95)")
    g.add_argument("--target-coverage", type=float, default=None, metavar="C",
                   help="threshold: accept this share of validation images instead (e.g. 0.9)")
    p.add_argument("--data", metavar="DIR", help="labelled folder DIR/<class>/* instead of the validation split")
    p.add_argument("--data-root", metavar="DIR", help="where the saved split's images live now, if moved")
    p.add_argument("--ood-data", metavar="DIR", help="images of no known class: report the share flagged uncertain")
    p.add_argument("--bins", type=int, default=15, help="ECE / reliability bins (default 15)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    p.add_argument("--threads", type=int, default=None)
    return p


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
                     + (f"  ood flagged {r['ood']['flagged_uncertain'] * 100:.1f}%" if "ood" in r else ""))
    f = report["fitted_on"]
    lines.append(f"fitted on {f['n_images']} images ({f['source']}); {f['n_skipped']} unreadable skipped; "
                 f"threshold from {report['base_variant']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from trashcam.edge.bundle import BundleError
    from trashcam.edge.dataset import DatasetError

    try:
        from .config import CalibrationConfig
        from .pipeline import calibrate_bundle
        config = CalibrationConfig(variants=tuple(args.variants or ()), data=args.data, data_root=args.data_root,
                                   target_precision=args.target_precision, target_coverage=args.target_coverage,
                                   bins=args.bins, plots=not args.no_plots, ood_data=args.ood_data,
                                   threads=args.threads)
        report = calibrate_bundle(args.bundle, config)
    except (BundleError, DatasetError, ValueError, FileNotFoundError) as e:
        print(f"edge-calibrate: error: {e}", file=sys.stderr)
        return 2
    print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
