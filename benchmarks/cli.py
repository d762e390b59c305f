"""`edge-bench BUNDLE`: size, accuracy, latency and memory of every variant of a bundle, side by side.

Answers "which file do I put on my Pi?": run it on the device itself.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EPILOG = """\
examples:
  edge-bench runs/b0                              # every variant, 1 and N threads, on the saved test split
  edge-bench runs/b0 --threads 1,2,4 --runs 200 --json pi5.json --md pi5.md --plots pi5/
  edge-bench runs/b0 --variants tflite-int8,tflite-fp16 --data photos/    # DIR/<class>/*.jpg
  edge-bench runs/b0 --no-accuracy --runs 20 --no-record                 # quick latency look
  edge-bench --compare laptop.json pi5.json       # B/A ratios per variant and thread count

Per variant: file size; accuracy + macro F1 (drop in pp vs the Keras float model, or vs tflite-fp32 where
TensorFlow is not installed); load time, invoke()-only latency and end-to-end latency (decode + resize + invoke
+ postprocess of real image files), each after --warmup untimed runs: mean, std, p50/p90/p99 ms, fps; peak RSS
of a fresh process that loaded and ran it. The environment (CPU model and SIMD flags such as avx2/avx512_vnni
or asimddp, cores, OS, Python, runtime versions) is in the JSON: INT8 is only faster than FP32 on CPUs with
integer dot-product instructions. End-to-end p50s are recorded in BUNDLE/metadata.json ("bench"), where
`edge-run --variant auto` reads them (--no-record: leave the bundle alone).
A --data folder with a class the model does not know is an error (exit 2).
"""


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _threads(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(t) for t in _csv_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads takes a comma-separated list of integers, got {text!r}")
    if not out or any(t < 1 for t in out):
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-bench", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", nargs="?", help="bundle directory (edge-train + edge-convert output)")
    p.add_argument("--variants", type=_csv_list, default=[], metavar="A,B",
                   help="variants to measure, comma-separated (default: all the bundle has)")
    p.add_argument("--threads", type=_threads, default=(), metavar="1,2,4",
                   help="thread counts to time, comma-separated (default: 1 and min(4, cores))")
    p.add_argument("--runs", type=int, default=100, help="timed runs per measurement (default 100)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs before timing (default 10)")
    d = p.add_argument_group("images")
    d.add_argument("--data", metavar="DIR", help="labelled folder DIR/<class>/*.jpg instead of the saved test split")
    d.add_argument("--data-root", metavar="DIR", help="where the saved split's images live now, if moved")
    d.add_argument("--max-images", type=int, metavar="N", help="cap the accuracy set (evenly spread over classes)")
    d.add_argument("--e2e-images", type=int, default=32, metavar="N",
                   help="distinct files the end-to-end timing cycles through (default 32)")
    d.add_argument("--no-accuracy", action="store_true", help="latency and memory only")
    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="FILE", help="full result (stable schema trashcam.bench/1)")
    o.add_argument("--csv", metavar="FILE", help="one row per variant and thread count")
    o.add_argument("--md", metavar="FILE", help="markdown table with the environment")
    o.add_argument("--plots", metavar="DIR", help="latency.png and accuracy_vs_size.png (needs matplotlib)")
    o.add_argument("--no-record", action="store_true", help="do not write the p50s into the bundle's metadata")
    p.add_argument("--in-process", action="store_true",
                   help="time in this process instead of a fresh one per variant (faster; no RSS figures)")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="print the B/A ratio table of two --json results and exit")
    return p


def config_from_args(args):
    from .config import BenchConfig
    return BenchConfig(variants=tuple(args.variants), threads=tuple(args.threads), runs=args.runs,
                       warmup=args.warmup, data=args.data, data_root=args.data_root, max_images=args.max_images,
                       e2e_images=args.e2e_images, accuracy=not args.no_accuracy, isolate=not args.in_process,
                       record=not args.no_record)


def _compare(a_path: str, b_path: str) -> int:
    from .report import format_compare
    try:
        a, b = (json.loads(Path(x).read_text()) for x in (a_path, b_path))
        print(format_compare(a, b, Path(a_path).stem, Path(b_path).stem))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        print(f"edge-bench: error: cannot compare {a_path} and {b_path}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


def _write_outputs(result: dict, args) -> None:
    from trashcam.edge.bundle import atomic_write_json

    from .report import to_csv, to_markdown, write_plots, write_text
    if args.json:
        atomic_write_json(args.json, result)
    if args.csv:
        write_text(args.csv, to_csv(result))
    if args.md:
        write_text(args.md, to_markdown(result))
    if args.plots:
        made = write_plots(result, args.plots)
        if made:
            print(f"edge-bench: plots: {', '.join(str(p) for p in made)}", file=sys.stderr)
        else:
            print("edge-bench: note: matplotlib is not installed; plots skipped", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare:
        return _compare(*args.compare)
    if not args.bundle:
        parser.error("a BUNDLE directory is required (or --compare A.json B.json)")
    from trashcam.edge.bundle import BundleError
    from trashcam.edge.dataset import DatasetError

    try:
        config = config_from_args(args)
        from .pipeline import run_benchmark
        from .report import format_table
        result = run_benchmark(args.bundle, config)
    except (BundleError, DatasetError, ValueError, FileNotFoundError) as e:
        print(f"edge-bench: error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    _write_outputs(result, args)
    if not result["variants"]:
        print("edge-bench: error: no variant could be measured", file=sys.stderr)
        return 1
    asked = [s["name"] for s in result["skipped"] if s["requested"]]
    if asked:
        print(f"edge-bench: error: requested variant(s) not measured: {', '.join(asked)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
