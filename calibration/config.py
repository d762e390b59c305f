"""`CalibrationConfig`: what `edge-calibrate` was asked to do, frozen and saved in its report.

Each field's `setting(...)` carries its help text and its bounds: edge-calibrate derives its flags from them.
"""
from __future__ import annotations

from dataclasses import dataclass

from trashcam.edge.config import JsonConfig, setting
from trashcam.edge.ood import KINDS as OOD_KINDS
from trashcam.edge.prototypes import PROTOTYPE_FITS


@dataclass(frozen=True)
class CalibrationConfig(JsonConfig):
    variants: tuple[str, ...] = setting((), "variants to calibrate, comma-separated (default: keras and every "
                                            "variant present that did not fail its check)")
    data: str | None = setting(None, "labelled folder DIR/<class>/* instead of the saved validation split",
                               metavar="DIR")
    split: str = setting("auto", "saved split to fit on: val, test, or auto (val; test for a bundle whose stage 2 "
                                 "trained on its validation images, --stage2-data train+val)",
                         choices=("auto", "val", "test"))
    data_root: str | None = setting(None, "where the saved split's images live now, if moved", metavar="DIR")
    target_precision: float = setting(0.95, "threshold: lowest confidence keeping accepted predictions at least "
                                            "this accurate", above=0.0, max=1.0, metavar="P")
    target_coverage: float | None = setting(None, "threshold: accept this share of validation images instead "
                                                  "(wins over --target-precision), e.g. 0.9", above=0.0, max=1.0,
                                            metavar="C")
    bins: int = setting(15, "ECE / reliability bins", min=1)
    plots: bool = setting(True, "write the reliability and coverage PNGs")
    ood_data: str | None = setting(None, "images of no known class: report the share flagged uncertain",
                                   metavar="DIR")
    threads: int | None = setting(None, "inference threads", min=1)
    # the "uncertain" score (calibration/ood.py), fitted per variant
    ood_score: str = setting("auto", "uncertainty score: auto (neighbour-max: neighbour-lite on the pooled "
                                     "features beside each channel's maximum over the last feature map, the "
                                     "converted models' third output; neighbour-lite where a model lacks it: each "
                                     "frame's distance to each class's k-means centres, averaged with its distance "
                                     "to the nearest train feature in units of that feature's own radius, in the "
                                     "train features' top 192 directions, computed by a tiny int8 TFLite model; with "
                                     "reviewed "
                                     "foreign images, relative: the prototypes' distance minus the distance to "
                                     "centres of those images), msp, mahalanobis, combined, prototypes, radius-mix "
                                     "(the default before 2026-12-06), neighbour-mix (neighbour-lite in all 1280 "
                                     "directions: a little more flagged, ~3.5x its bytes a frame), neighbour-lite "
                                     "(the default before 2026-12-06's stop 51), neighbour-max, relative",
                             choices=("auto", *OOD_KINDS), flag="--uncertainty-score")
    flag_rate: float = setting(0.05, "the score's threshold flags at most this share of new known-class images "
                               "(split conformal on the validation images)", above=0.0,
                               max=0.99, metavar="R")
    ood_fit_images: int = setting(1000, "train images (at most) for the score's class statistics", min=2)
    prototype_fits: int | None = setting(None, "k-means fits of the prototypes averaged: steadier and better than "
                                               f"one, each a block of centres every frame reads (default: "
                                               f"{PROTOTYPE_FITS} at 288 x 288 px, fewer for smaller inputs; 1: the "
                                               "cheapest)", min=1, metavar="N")
