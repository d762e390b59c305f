"""`edge-train`: flags -> a TrainConfig (recipe preset + overrides) -> `pipeline.train`.

The options are TrainConfig's fields; --help shows each recipe's value where the recipes differ.
"""
from __future__ import annotations

import os
import sys
from dataclasses import Field

import click

from trashcam.edge.clitools import CONTEXT, config_options, error, given, make_config, raw, run

from .config import RECIPES, TrainConfig, resolve

PROG = "edge-train"

EPILOG = """examples:
  edge-train --data data/sample --out runs/sample --recipe quick        # ~1-2 min on a laptop CPU
  edge-train --data ../shared/data/trashnet5 --out runs/trashnet         # default recipe, ~15-20 min on 2 cores
  edge-train --data DIR --out runs/seed --recipe seed --weights none     # the published notebook's recipe
  edge-train --data DIR --out runs/x --resume                            # continue an interrupted run
  edge-train --data DIR --out runs/teacher --backbone efficientnet_lite2 --image-size 288 --split-seed 42
  edge-train --data DIR --out runs/student --teacher runs/teacher --split-seed 42   # Lite2 distilled into Lite0

recipes:
  default  EfficientNet-Lite0 (offline ImageNet weights), frozen part cached per augmented view,
           head then top blocks fine-tuned on random crops of the cache, validation images joining that
           fixed-length stage 2 (edge-calibrate then fits on the test split): CPU-friendly
  seed     EfficientNetB0, the published notebook number for number (full fine-tuning from layer 60)
  quick    tiny version of default for the bundled sample and tests

Data: DIR/<class>/*.jpg (split 70/15/15 stratified, seed --seed) or DIR/{train,val,test}/<class>/*.jpg.
The bundle (--out) gets model.keras, labels, split, config, metrics.json, report.md and plots; next:
`edge-convert BUNDLE --variants tflite-int8`.
Exit status: 0 ok, 2 bad arguments or data (nothing written at --out), 130 interrupted.
"""

HELP = {
    "data": "dataset folder (class sub-folders, or train/val/test)",
    "out": "bundle directory to create",
    "backbone": "backbone from the registry: efficientnet_lite0 | efficientnet_lite1 | efficientnet_lite2 | "
                "efficientnet_b0",
    "weights": "'imagenet' (default), 'none' (random init) or a path to a Keras weights file",
    "image_size": "square input size in pixels",
    "mode": "'cached': frozen part computed once per view, both stages on the cache (fastest on CPU); 'hybrid': "
            "stage 1 on cached features, stage 2 on freshly augmented images; 'full': both stages fresh "
            "(the seed's way)",
    "views": "augmented views per training image cached for stage 1 ('cached', 'hybrid') and stage 2 ('cached')",
    "stage2_from": "first backbone layer that trains in stage 2: an index (60) or a name prefix (block6a); with "
                   "--backbone, that backbone's own start where the recipe used its backbone's",
    "stage2_patience": "epochs without a better validation loss before stage 2 stops (best epoch's weights kept); 0: "
                       "a fixed-length stage 2, every epoch run and the last epoch's weights kept",
    "fold": "k/K: k-fold cross-validation run, e.g. 2/5. The images are dealt into K stratified folds shuffled by "
            "--seed; fold k is the test split, validation is drawn from the other folds (val share of --split) and "
            "the rest trains. K runs with one seed test every image once (benchmarks/spread.py runs them)",
    "split_seed": "seed of the train/val/test split and of --fold's partition (default: --seed); fix it while "
                  "--seed varies to measure the training's own spread on one test split",
    "exclude_classes": "comma-separated classes to leave out (open-set experiments)",
    "add_data": "also train on reviewed field images: DIR/<class>/ (from edge-run --capture, relabelled on "
                "/review) split like --data with a separate field test split; DIR/_foreign/ become negatives "
                "for edge-calibrate's uncertainty score",
    "classes": "comma-separated classes the model learns, in this order (default: every class of --data). One "
               "name that --data lacks, e.g. 'other', makes --add-data's DIR/_foreign/ images a class of its own "
               "instead of negatives for the uncertainty score",
    "resize": "how images reach --image-size, recorded in the bundle so every stage sees the same pixels: 'linear' "
              "(OpenCV's INTER_LINEAR: cv2 where installed, an exact NumPy copy elsewhere) or 'bilinear' (PIL's "
              "antialiased filter, as bundles made before 'linear' existed)",
    "augment_style": "'keras': the notebook's ImageDataGenerator semantics (shear in degrees, x/y zoom drawn apart, "
                     "one channel shift for all channels; the seed recipe); 'trashcam': the default recipe's own",
    "tta_passes": "comma-separated TTA passes: identity,hflip,vflip,zoom_in,zoom_in_hflip,rot90",
    "strategy": "auto | none | mirrored (several GPUs) | multiworker (several machines; set TF_CONFIG)",
    "precision": "auto (mixed_float16 on GPU, float32 on CPU) | float32 | mixed_float16 | mixed_bfloat16",
    "threads": "CPU threads for TensorFlow and LiteRT (0: all cores)",
    "frozen_inference": "forward passes through frozen layers (cached views, stage-1 features): 'tflite' (LiteRT, "
                        "float32, ~4x Keras on a CPU; checked against Keras), 'keras', or 'auto' (tflite without a "
                        "GPU)",
    "cache_dir": "where decoded images are cached (default $TRASHCAM_CACHE or ~/.cache/trashcam)",
    "teacher": "knowledge distillation: a trained bundle with the same classes and --image-size whose probabilities on "
               "every cached view make --distill-weight of the targets (--mode cached). The model that ships keeps "
               "the student's size and speed",
    "distill_weight": "share of the teacher's probabilities in the targets (the rest: the smoothed labels)",
    "stage2_data": "'train+val': validation images also train stage 2 (8 cached views each) after stage 1's early "
                   "stopping used them; needs mode 'cached' and a fixed-length stage 2 (a recipe's train+val becomes "
                   "'train' with --mode full/hybrid or --stage2-patience > 0, and the default recipe's 18 epochs "
                   "become 22, the same image-steps). +0.6 pp INT8 over 10 paired 5-fold "
                   "runs; edge-calibrate then fits on the test split, the only images the model never saw",
    "stage2_crop": "stage 2 (--mode cached) trains on a random crop of each cached activation, this fraction of its "
                   "side (0.83: 15 of 18 cells at 288 px, 0.73x stage 2's time; 0.72: 13 cells, ~0.55x); the model "
                   "still takes whole images. 1: whole activations; --mode full/hybrid: always 1",
    "distill_temperature": "softens the teacher's probabilities (> 1: softer) before they are blended",
}


def recipe_values(f: Field) -> str | None:
    """What --help shows as a field's default: the recipes' values, e.g. "default recipe: 30; quick: 15; seed: 8"."""
    def show(v):
        return ",".join(map(str, v)) if isinstance(v, tuple) else ("on" if v is True else "off" if v is False else
                                                                    repr(v) if v == "" else str(v))
    values = {name: show(getattr(cfg, f.name)) for name, cfg in RECIPES.items()}
    if len(set(values.values())) == 1:
        return None if values["default"] in ("''", "") else f"default: {values['default']}"
    first = values.pop("default")
    return f"default recipe: {first}; " + "; ".join(f"{k}: {v}" for k, v in sorted(values.items()))


def config_from_params(params: dict) -> TrainConfig:
    over = {k: v for k, v in given(TrainConfig, params).items() if k != "recipe"}
    over["verbose"] = 0 if params.get("quiet") else 1
    return make_config(resolve, params.get("recipe") or "default", **over)


@click.command(PROG, context_settings=CONTEXT, epilog=raw(EPILOG),
               help="Train a waste classifier and write a model bundle.")
@click.option("--recipe", type=click.Choice(sorted(RECIPES)), default="default", show_default=True,
              help="preset; other flags override it")
@click.option("--overwrite", is_flag=True, help="replace an existing bundle at --out (only on success)")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--print-config", is_flag=True, help="print the resolved config as JSON and exit")
@config_options(TrainConfig, help=HELP, skip=("recipe", "verbose"), default_text=recipe_values)
def command(recipe: str, overwrite: bool, quiet: bool, print_config: bool, **params) -> int:
    cfg = config_from_params({"recipe": recipe, "quiet": quiet, **params})
    if print_config:
        import json
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    if not sys.stderr.isatty():  # CI logs and nohup: a progress line every 30 s, not every batch
        os.environ.setdefault("TQDM_MININTERVAL", "30")
    from trashcam.edge.dataset import DatasetError

    from .pipeline import TrainError, train
    try:
        train(cfg, overwrite=overwrite)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; the last finished epoch is checkpointed in {cfg.out}.partial/ — "
              "continue with the same command plus --resume", file=sys.stderr)
        return 130
    except (TrainError, DatasetError, FileNotFoundError, ValueError) as e:  # bad data or arguments
        return error(PROG, str(e))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(command, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
