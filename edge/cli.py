"""`edge-run`: classify a live camera (or video, folder, stdin paths) with a bundle, no TensorFlow needed.

The options are RunConfig's fields (edge/config.py): a new option is a new field declared with `setting(...)`.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

import click

from .clitools import CONTEXT, config_options, error, given, make_config, raw, run
from .config import RunConfig

PROG = "edge-run"
EPILOG = """\
sources (--source):
  auto            the Pi camera when picamera2 is installed, else camera:0 (default)
  picamera2[:N]   Raspberry Pi camera N: lores stream at the model's input size, main stream for --serve
  camera:N        USB/V4L2 camera N via OpenCV
  FILE | URL      a video file or stream (rtsp://, http://) via OpenCV
  DIR | GLOB      an image folder (recursive) or a glob like 'shots/*.jpg'; --loop repeats it
  -               image paths, one per line, on stdin

examples:
  edge-run runs/trashnet                                 # Pi camera, fastest passing variant, live console line
  edge-run runs/trashnet --serve 8080                    # + http://127.0.0.1:8080/ (MJPEG + /status)
  edge-run runs/trashnet --serve 0.0.0.0:8080            # the same, reachable from the LAN (only when asked)
  edge-run runs/trashnet --source camera:0 --log events.jsonl --save-frames shots/
  edge-run runs/trashnet --source clip.mp4 --log all.jsonl --log-mode frames --max-frames 500
  edge-run runs/trashnet --source data/sample --loop --duration 3600 --quiet     # soak test
  ls *.jpg | edge-run runs/trashnet --source - --smooth none --stable 1 --log-mode frames --log out.jsonl
  edge-run runs/trashnet --config shots/run_config.json --max-frames 100   # a saved run, one flag changed

The shown decision is the smoothed top class once it has held for --stable frames, or "uncertain" when its
confidence is below the bundle's calibrated threshold (--min-confidence overrides). Ctrl-C or SIGTERM stops
cleanly: logs flushed, a summary printed (frames, fps, invoke vs end-to-end latency p50/p95, skipped).
Exit status: 0 ok, 2 bad bundle/source/arguments, 1 unexpected failure.
"""


def load_config_file(path: str) -> dict:
    """A saved run_config.json (its "config" entry) or a bare RunConfig object, as a dict; ValueError if not."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--config {path}: cannot read it: {e}") from None
    d = d.get("config", d) if isinstance(d, dict) else d
    if not isinstance(d, dict):
        raise ValueError(f"--config {path}: expected a JSON object (a run_config.json), got {type(d).__name__}")
    return d


def config_from_params(params: dict) -> RunConfig:
    """Flags over the --config file over RunConfig's defaults."""
    base = load_config_file(params["config"]) if params.get("config") else {}
    return make_config(RunConfig.from_dict, {**base, **given(RunConfig, params)})


@click.command(PROG, context_settings=CONTEXT, epilog=raw(EPILOG),
               help="Classify a camera, video, image folder or stdin paths with a bundle (no TensorFlow needed).")
@config_options(RunConfig)
@click.option("--config", metavar="JSON", help="start from a saved run_config.json (its 'config' entry); "
                                               "flags given here override it")
def command(**params) -> int:
    from .bundle import BundleError
    from .live import LiveRunner, format_summary
    from .sources import SourceError

    stop = threading.Event()
    try:
        cfg = config_from_params(params)
        runner = LiveRunner(cfg, stop)
    except click.UsageError:
        raise
    except (BundleError, SourceError, ValueError, ImportError, OSError) as e:
        return error(PROG, str(e))

    def on_signal(signum, _frame):
        if stop.is_set():  # a second Ctrl-C: the user really wants out
            raise KeyboardInterrupt
        runner.request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        summary = runner.run()
    except KeyboardInterrupt:
        summary = getattr(runner, "summary", None)
        if summary is None:
            return 130
    except Exception as e:  # noqa: BLE001 - report, after run()'s finally flushed the logs
        return error(PROG, f"failed: {type(e).__name__}: {e}", 1)
    print(format_summary(summary), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(command, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
