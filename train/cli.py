"""`edge-train`: parse flags into a TrainConfig (recipe preset + overrides) and call `pipeline.train`."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

from .config import RECIPES, TrainConfig, resolve

EPILOG = """examples:
  edge-train --data data/sample --out runs/sample --recipe quick        # ~1-2 min on a laptop CPU
  edge-train --data ../shared/data/trashnet5 --out runs/trashnet         # default recipe, ~15-20 min on 2 cores
  edge-train --data DIR --out runs/seed --recipe seed --weights none     # the published notebook's recipe
  edge-train --data DIR --out runs/x --resume                            # continue an interrupted run

recipes:
  default  EfficientNet-Lite0 (offline ImageNet weights), frozen part cached per augmented view,
           head then top blocks fine-tuned on the cache: CPU-friendly
  seed     EfficientNetB0, the published notebook number for number (full fine-tuning from layer 60)
  quick    tiny version of default for the bundled sample and tests

Data: DIR/<class>/*.jpg (split 70/15/15 stratified, seed --seed) or DIR/{train,val,test}/<class>/*.jpg.
The bundle (--out) gets model.keras, labels, split, config, metrics.json, report.md and plots; next:
`edge-convert BUNDLE --int8`.
"""

HELP = {
    "data": "dataset folder (class sub-folders, or train/val/test)",
    "out": "bundle directory to create",
    "backbone": "backbone from the registry: efficientnet_lite0 | efficientnet_b0",
    "weights": "'imagenet' (default), 'none' (random init) or a path to a Keras weights file",
    "image_size": "square input size in pixels",
    "mode": "'cached': frozen part computed once per view, both stages on the cache (fastest on CPU); 'hybrid': "
            "stage 1 on cached features, stage 2 on freshly augmented images; 'full': both stages fresh (the seed's way)",
    "views": "augmented views per training image cached for stage 1 ('cached', 'hybrid') and stage 2 ('cached')",
    "stage2_from": "first backbone layer that trains in stage 2: an index (60) or a name prefix (block6a)",
    "exclude_classes": "comma-separated classes to leave out (open-set experiments)",
    "tta_passes": "comma-separated TTA passes: identity,hflip,vflip,zoom_in,zoom_in_hflip,rot90",
    "strategy": "auto | none | mirrored (several GPUs) | multiworker (several machines; set TF_CONFIG)",
    "precision": "auto (mixed_float16 on GPU, float32 on CPU) | float32 | mixed_float16 | mixed_bfloat16",
    "threads": "CPU threads for TensorFlow (0: all cores)",
    "cache_dir": "where decoded images are cached (default $TRASHCAM_CACHE or ~/.cache/trashcam)",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-train", description="Train a waste classifier and write a model bundle.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="default", choices=sorted(RECIPES), help="preset; other flags override it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out (only on success)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    skip = {"recipe", "verbose"}
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        default = f.default
        kw = {"default": None, "help": HELP.get(f.name, f"(recipe default: {default})")}
        if isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, tuple):
            kw["type"] = str
            kw["metavar"] = "A,B,..."
        else:
            kw["type"] = type(default)
        p.add_argument(_flag(f.name), **kw)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    over = {}
    for f in fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is None or f.name in ("recipe", "verbose"):
            continue
        if isinstance(f.default, tuple):
            items = [s for s in str(v).split(",") if s]
            v = tuple(type(f.default[0])(s) for s in items) if f.default else tuple(items)
        over[f.name] = v
    over["verbose"] = 0 if args.quiet else 1
    return resolve(args.recipe, **over)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"edge-train: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        import json
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    if args.overwrite:
        os.environ["TRASHCAM_OVERWRITE"] = "1"
    if not sys.stderr.isatty():  # CI logs and nohup: a progress line every 30 s, not every batch
        os.environ.setdefault("TQDM_MININTERVAL", "30")
    from trashcam.edge.dataset import DatasetError

    from .pipeline import TrainError, train
    try:
        train(cfg)
    except KeyboardInterrupt:
        print(f"\nedge-train: interrupted; the last finished epoch is checkpointed in {cfg.out}.partial/ — "
              "continue with the same command plus --resume", file=sys.stderr)
        return 130
    except (TrainError, DatasetError, FileNotFoundError, ValueError) as e:
        print(f"edge-train: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
