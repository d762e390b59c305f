"""`edge-run`: classify a live camera (or video, folder, stdin paths) with a bundle, no TensorFlow needed."""
from __future__ import annotations

import argparse
import signal
import sys
import threading

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

The shown decision is the smoothed top class once it has held for --stable frames, or "uncertain" when its
confidence is below the bundle's calibrated threshold (--min-confidence overrides). Ctrl-C or SIGTERM stops
cleanly: logs flushed, a summary printed (frames, fps, invoke vs end-to-end latency p50/p95, skipped).
Exit status: 0 ok, 2 bad bundle/source/arguments, 1 unexpected failure.
"""


def parse_size(s: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in s.lower().split("x"))
        if w <= 0 or h <= 0:
            raise ValueError
        return w, h
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{s!r}: expected WIDTHxHEIGHT, e.g. 640x480") from e


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-run", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle directory (full or slim, see edge-export)")
    p.add_argument("--variant", default="auto",
                   help="auto (fastest passing variant: edge-bench result, else a short probe) or a name, "
                        "e.g. tflite-int8 (default: %(default)s)")
    p.add_argument("--source", default="auto", help="see 'sources' below (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads in all (default: min(4, cores))")
    p.add_argument("--streams", type=int, default=None,
                   help="interpreters classifying frames at once, --threads shared between them (default: one "
                        "single-threaded interpreter per thread for folders, stdin and video files, where "
                        "throughput counts; one with every thread for cameras, where the newest frame counts)")
    g = p.add_argument_group("decision")
    g.add_argument("--smooth", choices=("ema", "majority", "none"), default="ema",
                   help="combine the last --window frames by EMA of probabilities or majority vote")
    g.add_argument("--window", type=int, default=5, help="frames combined by --smooth (default: %(default)s)")
    g.add_argument("--stable", type=int, default=3,
                   help="frames a new decision must hold before it is shown (default: %(default)s)")
    g.add_argument("--min-confidence", type=float, default=None,
                   help="below this the decision is 'uncertain' (default: the bundle's calibrated threshold)")
    g = p.add_argument_group("outputs")
    g.add_argument("--log", metavar="JSONL", help="append events (start, decisions or frames, skips, summary)")
    g.add_argument("--log-mode", choices=("changes", "frames"), default="changes",
                   help="log each decision change or every frame (default: %(default)s)")
    g.add_argument("--save-frames", metavar="DIR", help="save annotated JPEGs here")
    g.add_argument("--save-mode", choices=("changes", "frames"), default="changes",
                   help="save on each decision change or every frame (default: %(default)s)")
    g.add_argument("--serve", metavar="[HOST:]PORT",
                   help="HTTP view: / page, /stream.mjpg, /status JSON; binds 127.0.0.1 unless HOST is given")
    g.add_argument("--quiet", action="store_true", help="no live console line (the summary is still printed)")
    g = p.add_argument_group("run length and capture")
    g.add_argument("--max-frames", type=int, default=None, help="stop after N frames read (skipped included)")
    g.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    g.add_argument("--loop", action="store_true", help="repeat a folder or video file forever")
    g.add_argument("--capture-size", type=parse_size, default=None, metavar="WxH",
                   help="camera capture / preview size (default: 640x480)")
    g.add_argument("--max-fps", type=float, default=None, help="classify at most this many frames per second")
    g.add_argument("--config", metavar="JSON", help="read these options from a saved run_config.json "
                                                    "(its 'config' entry); flags given here are ignored")
    return p


def config_from_args(args: argparse.Namespace):
    from .live import RunConfig
    if args.config:
        import json
        from pathlib import Path
        d = json.loads(Path(args.config).read_text())
        return RunConfig.from_dict({**d.get("config", d), "bundle": args.bundle})
    for name in ("window", "stable", "max_frames", "threads", "streams"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.min_confidence is not None and not 0.0 <= args.min_confidence <= 1.0:
        raise ValueError(f"--min-confidence must be in 0..1, got {args.min_confidence}")
    return RunConfig(bundle=args.bundle, variant=args.variant, source=args.source, threads=args.threads,
                     streams=args.streams, smooth=args.smooth, window=args.window, stable=args.stable,
                     min_confidence=args.min_confidence, log=args.log, log_mode=args.log_mode,
                     save_frames=args.save_frames, save_mode=args.save_mode, serve=args.serve,
                     max_frames=args.max_frames, duration=args.duration, loop=args.loop,
                     capture_size=args.capture_size, max_fps=args.max_fps, quiet=args.quiet)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .bundle import BundleError
    from .live import LiveRunner, format_summary
    from .sources import SourceError

    stop = threading.Event()
    try:
        cfg = config_from_args(args)
        runner = LiveRunner(cfg, stop)
    except (BundleError, SourceError, ValueError, ImportError, OSError) as e:
        print(f"edge-run: error: {e}", file=sys.stderr)
        return 2

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
        print(f"edge-run: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(format_summary(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
