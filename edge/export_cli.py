"""`edge-export`: write a slim edge bundle (one variant + metadata + labels) to copy to a device."""
from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  edge-export runs/trashnet slim/ --variant tflite-int8       # ~3 MB instead of the whole training bundle
  rsync -a slim/ pi@raspberrypi.local:trashcam/bundle/       # then on the Pi: edge-run trashcam/bundle
  edge-export runs/trashnet slim/ --variant auto --force      # replace slim/; auto = fastest passing here

The variant must have passed its accuracy check (see metadata.json "variants"), unless --force.
The slim bundle keeps the whole metadata (preprocessing, calibration, bench) so edge-run behaves the same.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-export", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="the full bundle directory")
    p.add_argument("dest", help="where to write the slim bundle (created; must be empty unless --force)")
    p.add_argument("--variant", default="tflite-int8",
                   help="variant to keep, or auto (default: %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="replace a non-empty DEST, and allow a variant that failed its check")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .bundle import BundleError
    from .export import bundle_size, export_edge_bundle

    try:
        slim = export_edge_bundle(args.bundle, args.dest, args.variant, force=args.force)
    except (BundleError, OSError, ValueError, ImportError) as e:
        print(f"edge-export: error: {e}", file=sys.stderr)
        return 2
    (variant,) = slim.variants
    print(f"wrote {slim.path}: {variant} + metadata + labels, {bundle_size(slim.path) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
