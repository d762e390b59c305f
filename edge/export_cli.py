"""`edge-export`: write a slim edge bundle (one variant + metadata + labels) to copy to a device."""
from __future__ import annotations

import sys

import click

from .clitools import CONTEXT, config_options, error, given, make_config, raw, run
from .config import ExportConfig

PROG = "edge-export"
EPILOG = """\
examples:
  edge-export runs/trashnet slim/ --variant tflite-int8       # ~3 MB instead of the whole training bundle
  rsync -a slim/ pi@raspberrypi.local:trashcam/bundle/       # then on the Pi: edge-run trashcam/bundle
  edge-export runs/trashnet slim/ --variant auto --force      # replace slim/; auto = fastest passing here

The variant must have passed its accuracy check (see metadata.json "variants"), unless --force.
The slim bundle keeps the whole metadata (preprocessing, calibration, bench) so edge-run behaves the same.
DEST is created; it must be empty unless --force. Exit status: 0 ok, 2 bad bundle/variant/destination.
"""


@click.command(PROG, context_settings=CONTEXT, epilog=raw(EPILOG),
               help="Write a slim edge bundle (one variant + metadata + labels) to copy to a device.")
@config_options(ExportConfig)
def command(**params) -> int:
    from .bundle import BundleError
    from .export import bundle_size, export_edge_bundle

    cfg = make_config(ExportConfig, **given(ExportConfig, params))
    try:
        slim = export_edge_bundle(cfg.bundle, cfg.dest, cfg.variant, force=cfg.force)
    except (BundleError, OSError, ValueError, ImportError) as e:
        return error(PROG, str(e))
    (variant,) = slim.variants
    print(f"wrote {slim.path}: {variant} + metadata + labels, {bundle_size(slim.path) / 1e6:.2f} MB")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(command, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
