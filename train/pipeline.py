"""`train(cfg)`: data folder -> complete model bundle. The one function `edge-train` calls.

The bundle is assembled in `<out>.partial/` (checkpoints included, so `--resume` finds them) and renamed into
place only after the model is saved and evaluated: a failed or interrupted run never replaces a good bundle.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from trashcam.edge.bundle import Bundle, Preprocessing, atomic_write_bytes, atomic_write_json
from trashcam.edge.dataset import DatasetError, Split, make_split, require_every_class

from .config import TrainConfig, overridden
from .data import FOREIGN, class_weights, decode_images, default_cache_dir, fold_split


class TrainError(RuntimeError):
    pass


def setup_compute(cfg: TrainConfig):
    """Threads, precision and distribution strategy, decided before any model is built."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # ~2x on CPU (measured); must precede the TF import
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    if cfg.threads:
        tf.config.threading.set_intra_op_parallelism_threads(cfg.threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, cfg.threads))
    gpus = tf.config.list_physical_devices("GPU")
    precision = cfg.precision
    if precision == "auto":
        precision = "mixed_float16" if gpus else "float32"
    keras.mixed_precision.set_global_policy(precision)
    if cfg.strategy == "mirrored" or (cfg.strategy == "auto" and len(gpus) > 1):
        strategy = tf.distribute.MirroredStrategy()
    elif cfg.strategy == "multiworker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    keras.utils.set_random_seed(cfg.seed)
    return strategy, {"precision": precision, "gpus": len(gpus), "replicas": strategy.num_replicas_in_sync,
                      "strategy": type(strategy).__name__}


def _split(cfg: TrainConfig, partial: Path) -> Split:
    saved = partial / "split.json"
    if cfg.resume and saved.is_file():
        return Split.load(saved)
    split = (fold_split(cfg.data, cfg.fold, cfg.split_seed_used, cfg.split) if cfg.fold
             else make_split(cfg.data, seed=cfg.split_seed_used, fractions=cfg.split))
    if cfg.exclude_classes:
        unknown = set(cfg.exclude_classes) - set(split.classes)
        if unknown:
            raise DatasetError(f"--exclude-classes {sorted(unknown)} not in the data's classes {split.classes}")
        keep = [c for c in split.classes if c not in cfg.exclude_classes]
        if len(keep) < 2:
            raise DatasetError("excluding those classes leaves fewer than 2")
        _keep_classes(split, keep)
    foreign_class = select_classes(split, cfg) if cfg.classes else ""
    if cfg.add_data:
        add_field_data(split, cfg, foreign_class)
    if foreign_class and not any(y == split.classes.index(foreign_class) for y in split.labels("train")):
        raise DatasetError(f"--classes {foreign_class}: no reviewed images in {cfg.add_data}/{FOREIGN}/ to train it")
    return split


def select_classes(split: Split, cfg: TrainConfig) -> str:
    """Keep and order `split`'s classes as `cfg.classes` lists them; -> the one listed name that is no class of
    the data ("" if none): the class --add-data's DIR/_foreign/ images will train."""
    listed = list(cfg.classes)
    if len(set(listed)) != len(listed):
        raise DatasetError(f"--classes {','.join(listed)}: a class is listed twice")
    new = [c for c in listed if c not in split.classes]
    if len(new) > 1 or (new and not cfg.add_data):
        raise DatasetError(f"--classes: {', '.join(new)} not among the data's classes {split.classes}; one new "
                           f"name is allowed with --add-data DIR, for the images in DIR/{FOREIGN}/")
    if len(listed) - len(new) < 1 or len(listed) < 2:
        raise DatasetError("--classes needs at least 2 classes, one of them from the data")
    _keep_classes(split, listed)
    return new[0] if new else ""


def _keep_classes(split: Split, classes: list[str]) -> None:
    """Relabel `split` to `classes` (in that order); images of classes not listed leave it."""
    remap = {split.classes.index(c): i for i, c in enumerate(classes) if c in split.classes}
    split.files = {k: [(r, remap[y]) for r, y in v if y in remap] for k, v in split.files.items()}
    split.classes = list(classes)


def add_field_data(split: Split, cfg: TrainConfig, foreign_class: str = "") -> dict[str, int]:
    """Reviewed field images join train and val; their own test split and the foreign negatives get their own
    keys in split.json (absolute paths: they live outside --data). With `foreign_class`, DIR/_foreign/ is that
    class's images instead of negatives."""
    from .data import FIELD_TEST, FOREIGN_KEY, field_split
    fd = field_split(cfg.add_data, split.classes, cfg.split_seed_used, cfg.split, foreign_class)
    split.files["train"] = split.files["train"] + fd.files["train"]
    split.files["val"] = split.files["val"] + fd.files["val"]
    split.files[FIELD_TEST], split.files[FOREIGN_KEY] = fd.files[FIELD_TEST], fd.files[FOREIGN_KEY]
    if cfg.verbose:
        print(f"--add-data {cfg.add_data}: {fd.counts}", file=sys.stderr)
    return fd.counts


def evaluate_field(model, split: Split, pre: Preprocessing, cfg: TrainConfig, summary: dict) -> None:
    """Accuracy on the field-only test split, reported apart from the shared test split's."""
    from . import evaluate as ev
    from .data import FIELD_TEST
    if not split.files.get(FIELD_TEST):
        return
    d = decode_images(split.paths(FIELD_TEST), split.labels(FIELD_TEST), pre, None, desc="decode field test",
                      progress=False)
    if len(d.x):
        summary["field_evaluation"] = ev.evaluate(model, d.x, d.y, split.classes, cfg.tta_passes, cfg.tta, 0)
        summary["counts"][FIELD_TEST] = int(len(d.x))


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf
    return {"python": sys.version.split()[0], "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "platform": platform.platform(), "machine": platform.machine()}


def _weights_only(model):
    """An uncompiled copy: a compiled model's .keras file carries Adam's two moments per weight (B0: 52 MB
    instead of 16 MB), which no later stage needs."""
    import keras
    clone = keras.Model.from_config(model.get_config())  # clone_model would copy the compile state too
    clone.set_weights(model.get_weights())
    return clone


def train(cfg: TrainConfig, overwrite: bool = False) -> Path:
    t_start = time.perf_counter()
    if not cfg.data:
        raise TrainError("no data folder given (--data DIR with one sub-folder per class)")
    from . import cluster
    chief = cfg.strategy != "multiworker" or cluster.is_chief()
    out = Path(cfg.out) if chief else cluster.scratch_out(cfg.out)  # only the chief writes --out
    partial = out.with_name(out.name + ".partial")
    if out.exists() and (out / "metadata.json").exists() and not cfg.resume and not overwrite:
        raise TrainError(f"{out} already holds a bundle; choose another --out or pass --overwrite")
    if not cfg.resume and partial.exists():
        shutil.rmtree(partial)

    from . import evaluate as ev
    from . import numerics
    from .backbones.efficientnet_lite0 import Lite0WeightsError
    from .backbones.torch_legacy import TorchFileError
    from .checkpoint import Checkpoint
    from .distill import load_teacher
    from .fit import fit_cached, fit_full, fit_hybrid
    from .frozen_inference import frozen_predictor
    from .model import build_classifier

    strategy, compute = setup_compute(cfg)
    split = _split(cfg, partial)
    pre = Preprocessing(input_size=(cfg.image_size, cfg.image_size), resize=cfg.resize)
    # a wrong teacher fails here, before minutes of decoding; bad data or a bad teacher leave no OUT.partial/ behind
    teacher = {"teacher": load_teacher(cfg.teacher, split, pre.input_size)} if cfg.teacher else {}
    partial.mkdir(parents=True, exist_ok=True)
    split.save(partial / "split.json")
    cache = cfg.cache_dir or default_cache_dir()
    t0 = time.perf_counter()
    sets = {s: decode_images(split.paths(s), split.labels(s), pre, cache, desc=f"decode {s}",
                             progress=cfg.verbose > 0) for s in ("train", "val", "test")}
    decode_s = time.perf_counter() - t0
    skipped = [s for d in sets.values() for s in d.skipped]
    for name, d in sets.items():
        if len(d.x) == 0:
            raise TrainError(f"no readable images in the {name} split ({len(d.skipped)} unreadable)")
    if skipped and cfg.verbose:
        print(f"skipped {len(skipped)} unreadable image(s); listed in report.md", file=sys.stderr)
    require_every_class(sets["train"].y, split.classes, "training split", len(sets["train"].skipped))
    n_classes = len(split.classes)
    sw = class_weights(sets["train"].y, n_classes, cfg.class_weight_clip) if cfg.class_weights \
        else np.ones(n_classes, np.float32)

    # A checkpoint is resumed only by a run with the same recipe (how it is run may differ: threads, verbosity)
    same = {k: v for k, v in cfg.to_dict().items() if k not in ("resume", "verbose", "threads", "cache_dir",
                                                                "frozen_inference")}
    ckpt = Checkpoint(partial / "checkpoints", same)
    resumed = False
    with strategy.scope():
        try:
            parts = build_classifier(cfg, n_classes)
        except (TorchFileError, Lite0WeightsError) as e:
            raise TrainError(f"weights {cfg.weights!r}: {e}") from None
        if cfg.resume and ckpt.load():
            resumed = ckpt.restore(parts.model)
            if not resumed:
                ckpt = Checkpoint(partial / "checkpoints", same)  # does not fit this model: start over
    if cfg.resume and cfg.verbose:
        print(f"resuming from {ckpt.describe() if resumed else 'the start (no usable checkpoint)'}",
              file=sys.stderr)
    eff = cfg.replace(batch_size=cfg.batch_size * compute["replicas"])
    t1 = time.perf_counter()
    with strategy.scope():
        fit = {"cached": fit_cached, "hybrid": fit_hybrid, "full": fit_full}[cfg.mode]
        stages = fit(parts, sets["train"], sets["val"], n_classes, sw, eff, ckpt, compute, **teacher)
    train_s = time.perf_counter() - t1

    t2 = time.perf_counter()
    # Under multiworker, evaluate a local copy: Keras' predict fails on the distributed model (see loop.local_predict).
    eval_model = _weights_only(parts.model) if cfg.strategy == "multiworker" else parts.model
    eval_model = frozen_predictor(eval_model, cfg, compute, sets["test"].x[:4],
                                  len(sets["test"].x) * len(ev.evaluation_passes(cfg.tta_passes, cfg.tta)))
    evaluation = ev.evaluate(eval_model, sets["test"].x, sets["test"].y, split.classes, cfg.tta_passes, cfg.tta,
                             cfg.verbose)
    eval_s = time.perf_counter() - t2
    field_summary: dict[str, Any] = {"counts": {}}
    evaluate_field(parts.model, split, pre, cfg, field_summary)

    tmp_model = partial / ".model.tmp.keras"
    _weights_only(parts.model).save(tmp_model)
    tmp_model.replace(partial / "model.keras")
    summary: dict[str, Any] = {
        "recipe": cfg.recipe, "overrides": overridden(cfg), "backbone": cfg.backbone, "labels": split.classes,
        "evaluation": evaluation, "monitor": cfg.monitor,
        "stages": [{"name": s.name, "epochs_run": s.epochs_run, "best_epoch": s.best_epoch,
                    "best_val_loss": s.best_val_loss, "seconds": round(s.seconds, 1),
                    "images_per_s": round(s.images_per_s, 1), "history": s.history, "info": s.info} for s in stages],
        "seconds": {"decode": round(decode_s, 1), "train": round(train_s, 1), "evaluate": round(eval_s, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
        "skipped": skipped, "class_weights": sw.tolist(), "compute": compute,
        "counts": {k: int(len(v.x)) for k, v in sets.items()},
        "numerics": numerics.record(cfg),  # seed, threads, oneDNN, TF, CPU: what the float rounding depended on
    }
    if "field_evaluation" in field_summary:
        summary["field_evaluation"] = field_summary["field_evaluation"]
        summary["counts"].update(field_summary["counts"])
    atomic_write_json(partial / "metrics.json", summary)
    report = ev.report_markdown(summary)
    if "field_evaluation" in summary:
        fe = summary["field_evaluation"]
        fb = fe.get("tta", fe["plain"])
        report += (f"\n## Field test split (--add-data, {summary['counts']['field_test']} images, apart from the "
                   f"test split above)\n\naccuracy plain {fe['plain']['accuracy']:.4f}"
                   + (f", TTA {fe['tta']['accuracy']:.4f}" if "tta" in fe else "") +
                   f"; weighted F1 {fb['weighted_f1']:.4f}\n")
    atomic_write_bytes(partial / "report.md", report.encode())
    best = evaluation.get("tta", evaluation["plain"])
    ev.plot_history(stages, partial / "training_curves.png")
    ev.plot_confusion(best["confusion_matrix"], split.classes, partial / "confusion_matrix.png",
                      f"test, {'TTA' if 'tta' in evaluation else 'plain'}: {best['accuracy']:.1%}")
    cfg.save(partial / "train_config.json")

    bundle = Bundle.create(partial, split.classes, pre, backbone=cfg.backbone)
    for rel in ("split.json", "train_config.json", "metrics.json", "report.md", "training_curves.png",
                "confusion_matrix.png"):
        bundle.add_file(rel)
    bundle.set_variant("keras", "model.keras", format="keras")
    bundle.metadata["split"] = {k: v for k, v in split.to_dict().items() if k != "files"}
    bundle.metadata["training"] = {"config": cfg.to_dict(), "versions": _versions(), "compute": compute,
                                   "seconds": summary["seconds"], "skipped_images": len(skipped),
                                   "stages": [{k: v for k, v in s.items() if k != "history"}
                                              for s in summary["stages"]]}
    bundle.metadata["metrics"] = {"test_accuracy": evaluation["plain"]["accuracy"],
                                  "test_accuracy_tta": evaluation.get("tta", {}).get("accuracy"),
                                  "weighted_f1": best["weighted_f1"], "macro_f1": best["macro_f1"]}
    if "field_evaluation" in summary:
        bundle.metadata["metrics"]["field_test_accuracy"] = summary["field_evaluation"]["plain"]["accuracy"]
    bundle.save()
    shutil.rmtree(partial / "checkpoints", ignore_errors=True)

    if out.exists():  # swap only now that the new bundle is complete
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        partial.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        partial.rename(out)
    Bundle.load(out)  # verifies every checksum of what was just written
    if not chief:
        cluster.release(out)
        return Path(cfg.out)
    if cfg.verbose:
        print(json.dumps({"bundle": str(out), **bundle.metadata["metrics"], "seconds": summary["seconds"]}))
    return out
