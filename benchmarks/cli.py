"""`edge-bench BUNDLE`: size, accuracy, latency and memory of every variant of a bundle, side by side.

Answers "which file do I put on my Pi?": run it on the device itself.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from trashcam.edge.clitools import CONTEXT, config_options, error, given, input_errors, make_config, raw, run

from .config import BenchConfig

PROG = "edge-bench"

EPILOG = """\
examples:
  edge-bench runs/b0                              # every variant, 1 and N threads, on the saved test split
  edge-bench runs/b0 --threads 1,2,4 --runs 200 --json pi5.json --md pi5.md --plots pi5/
  edge-bench runs/b0 --variants tflite-int8,tflite-fp16 --data photos/    # DIR/<class>/*.jpg
  edge-bench runs/b0 --no-accuracy --runs 20 --no-record                 # quick latency look
  edge-bench --compare laptop.json pi5.json       # B/A ratios per variant and thread count
  edge-bench runs/lite1 --variants tflite-int8 --baseline runs/lite0     # invoke time as a ratio to another
                                                  # bundle's, both timed in one process, interleaved

Per variant: file size; accuracy + macro F1 (drop in pp vs the Keras float model, or vs tflite-fp32 where
TensorFlow is not installed); load time, invoke()-only latency and end-to-end latency (decode + resize + invoke
+ postprocess of real image files), each after --warmup untimed runs: mean, std, p50/p90/p99 ms, fps; peak RSS
of a fresh process that loaded and ran it. The environment (CPU model and SIMD flags such as avx2/avx512_vnni
or asimddp, cores, OS, Python, runtime versions) is in the JSON: INT8 is only faster than FP32 on CPUs with
integer dot-product instructions. End-to-end p50s are recorded in BUNDLE/metadata.json ("bench"), where
`edge-run --variant auto` reads them (--no-record: leave the bundle alone).
After edge-calibrate, each variant's uncertainty score too: the share it flags (validation, test, foreign),
ECE after temperature, and its per-frame cost: the scored frame over the probabilities-only one, timed
interleaved, p50 with a 95 % bootstrap interval and the extra microseconds (a ratio near a budget is only on
one side of it when the interval is).
A --data folder with a class the model does not know is an error (exit 2).
Exit status: 0 ok, 1 a requested variant could not be measured, 2 bad bundle/data/arguments.
"""


def config_from_params(params: dict) -> BenchConfig:
    return make_config(BenchConfig, **given(BenchConfig, params))


def _compare(a_path: str, b_path: str) -> int:
    from .report import format_compare
    try:
        a, b = (json.loads(Path(x).read_text()) for x in (a_path, b_path))
        print(format_compare(a, b, Path(a_path).stem, Path(b_path).stem))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        print(f"edge-bench: error: cannot compare {a_path} and {b_path}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


def _write_outputs(result: dict, out: dict) -> None:
    from trashcam.edge.bundle import atomic_write_json

    from .report import to_csv, to_markdown, write_plots, write_text
    if out["json"]:
        atomic_write_json(out["json"], result)
    if out["csv"]:
        write_text(out["csv"], to_csv(result))
    if out["md"]:
        write_text(out["md"], to_markdown(result))
    if out["plots"]:
        made = write_plots(result, out["plots"])
        if made:
            print(f"edge-bench: plots: {', '.join(str(p) for p in made)}", file=sys.stderr)
        else:
            print("edge-bench: note: matplotlib is not installed; plots skipped", file=sys.stderr)


@click.command(PROG, context_settings=CONTEXT, epilog=raw(EPILOG),
               help="Size, accuracy, latency and memory of every variant of a bundle, side by side. "
                    "Answers 'which file do I put on my Pi?': run it on the device itself.")
@click.argument("bundle", required=False)
@config_options(BenchConfig)
@click.option("--json", "json_out", metavar="FILE", help="full result (stable schema trashcam.bench/1)")
@click.option("--csv", metavar="FILE", help="one row per variant and thread count")
@click.option("--md", metavar="FILE", help="markdown table with the environment")
@click.option("--plots", metavar="DIR", help="latency.png and accuracy_vs_size.png (needs matplotlib)")
@click.option("--compare", nargs=2, metavar="A.json B.json", default=None,
              help="print the B/A ratio table of two --json results and exit")
def command(bundle: str | None, json_out, csv, md, plots, compare, **params) -> int:
    if compare:
        return _compare(*compare)
    if not bundle:
        raise click.UsageError("a BUNDLE directory is required (or --compare A.json B.json)")

    config = config_from_params(params)
    try:
        from .pipeline import run_benchmark
        from .report import format_table
        result = run_benchmark(bundle, config)
    except input_errors() as e:
        return error(PROG, str(e))
    print(format_table(result))
    _write_outputs(result, {"json": json_out, "csv": csv, "md": md, "plots": plots})
    if not result["variants"]:
        return error(PROG, "no variant could be measured", 1)
    asked = [s["name"] for s in result["skipped"] if s["requested"]]
    if asked:
        return error(PROG, f"requested variant(s) not measured: {', '.join(asked)}", 1)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(command, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
