"""The two training stages, in either mode, through one epoch loop with early stopping and checkpoints.

- `full`: every epoch runs the whole network on freshly augmented images (the seed notebook; best on a GPU).
- `cached`: the frozen part of the network runs once per augmented view and its output is kept; epochs then
  train only what learns. Stage 1 trains the head on pooled features; stage 2 trains the unfrozen blocks on the
  activations entering them. Mathematically the same forward pass as `full` (BN is frozen in both), with a fixed
  set of `views` augmentations per image instead of new ones each epoch, and MixUp applied where the cache is.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import augment
from .config import TrainConfig
from .model import ClassifierParts, compile_for, head_model, set_stage, stage2_index, trunk_and_top


@dataclass
class StageResult:
    name: str
    epochs_run: int = 0
    best_epoch: int = -1
    best_val_loss: float = math.inf
    seconds: float = 0.0
    images_per_s: float = 0.0
    history: dict[str, list[float]] = field(default_factory=lambda: {"loss": [], "accuracy": [], "val_loss": [],
                                                                     "val_loss_calibrated": [], "val_accuracy": [],
                                                                     "lr": []})
    info: dict[str, Any] = field(default_factory=dict)


class Checkpoint:
    """Per-epoch weights + a small state file, so `--resume` continues where a run stopped (Ctrl-C included)."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.state_path = directory / "state.json"

    def state(self) -> dict[str, Any]:
        return json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}

    def save(self, model, state: dict[str, Any]) -> None:
        from trashcam.edge.bundle import atomic_write_json
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "last.tmp.weights.h5"
        model.save_weights(tmp)
        tmp.replace(self.dir / "last.weights.h5")
        atomic_write_json(self.state_path, state)

    def restore(self, model) -> bool:
        p = self.dir / "last.weights.h5"
        if p.is_file():
            model.load_weights(p)
            return True
        return False


def run_stage(name: str, model, epoch_data: Callable[[int], tuple], val: tuple, epochs: int, patience: int,
              lr: float, cosine: bool, batch_size: int, ckpt: Checkpoint | None, start_epoch: int = 0,
              verbose: int = 1, jit: bool | str = False, n_per_epoch: int = 0, full_model=None,
              monitor: str = "val_loss") -> StageResult:
    """Epoch loop: fit one epoch on `epoch_data(epoch)` = (x, targets, weights), validate, early-stop on the
    `monitor`ed validation loss (`best_val_loss` is that value) with the best weights restored. Per-step cosine
    decay from `lr` to 0 over the stage when `cosine`.
    `full_model` is what the checkpoint saves (the sub-model being trained shares its weights)."""
    import keras
    import tensorflow as tf
    from tqdm.auto import tqdm

    drop_remainder = tf.distribute.get_strategy().num_replicas_in_sync > 1
    res = StageResult(name)
    if epochs <= 0:
        return res
    steps_per_epoch = math.ceil(n_per_epoch / batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, steps_per_epoch * epochs)) \
        if cosine else lr
    compile_for(model, schedule, jit)
    if start_epoch:  # resumed: put the LR schedule where the interrupted run left it
        model.optimizer.iterations.assign(steps_per_epoch * start_epoch)
    best_weights, wait = None, 0
    t_stage = time.perf_counter()
    seen = 0
    bar = tqdm(range(start_epoch, epochs), desc=name, unit="epoch", disable=verbose < 1, leave=True)
    for epoch in bar:
        x, t, w = epoch_data(epoch)
        if drop_remainder:  # tf.distribute with several replicas fails on a batch it cannot split evenly
            if len(x) < batch_size:
                raise ValueError(f"{len(x)} training samples are fewer than one global batch ({batch_size}); "
                                 "lower --batch-size")
            keep = np.random.default_rng(epoch).permutation(len(x))[:len(x) - len(x) % batch_size]
            x, t, w = x[keep], t[keep], w[keep]
        t0 = time.perf_counter()
        h = model.fit(x, t, sample_weight=w, batch_size=batch_size, epochs=1, verbose=0, shuffle=True)
        seen += len(x)
        vals = validation_loss(model, val[0], val[1], batch_size)
        cur_lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        for k, v in (("loss", h.history["loss"][0]), ("accuracy", h.history["accuracy"][0]), *vals.items(),
                     ("lr", cur_lr)):
            res.history[k].append(float(v))
        res.epochs_run += 1
        vl = vals[monitor]
        bar.set_postfix(loss=f"{h.history['loss'][0]:.3f}", val_loss=f"{vl:.3f}",
                        val_acc=f"{vals['val_accuracy']:.3f}", ips=f"{len(x) / (time.perf_counter() - t0):.0f}")
        if vl < res.best_val_loss - 1e-4:
            res.best_val_loss, res.best_epoch, wait = float(vl), epoch, 0
            best_weights = model.get_weights()
        else:
            wait += 1
        if ckpt:
            ckpt.save(full_model or model, {"stage": name, "epoch": epoch + 1, "best_val_loss": res.best_val_loss})
        if wait >= patience:
            break
    if best_weights is not None:
        model.set_weights(best_weights)
    res.seconds = time.perf_counter() - t_stage
    res.images_per_s = seen / res.seconds if res.seconds else 0.0
    return res


def _mixed(x, y, n_classes, sw, cfg: TrainConfig, rng):
    """Smoothed one-hot targets, then MixUp (which returns its inputs unchanged at alpha 0)."""
    t = augment.one_hot_smooth(y, n_classes, cfg.label_smoothing)
    x, t, sw, _, _ = augment.mixup(x, t, sw, cfg.mixup_alpha, rng)
    return x, t, sw


def predict(model, x: np.ndarray, batch: int) -> np.ndarray:
    """`model.predict`, not `predict_on_batch`: the latter returns wrong shapes under MirroredStrategy."""
    return np.asarray(model.predict(x, batch_size=batch, verbose=0))


def validation_loss(model, x: np.ndarray, t: np.ndarray, batch: int) -> dict[str, float]:
    """Cross-entropy, cross-entropy at the best temperature, and accuracy on validation data (Keras' evaluate
    breaks on uneven multi-replica batches).

    The calibrated loss compares models by what they know rather than how confident they sound: MixUp and label
    smoothing make stage 1 under-confident, fine-tuning makes it sharper, and raw cross-entropy punishes the
    latter even when it ranks classes better. `edge-calibrate` fits the same temperature afterwards anyway.
    """
    from trashcam.edge.temperature import fit_temperature, nll_at, pseudo_logits

    p = predict(model, x, batch)
    y = t.argmax(1)
    ce = -np.sum(t * np.log(np.clip(p, 1e-7, 1.0)), axis=1).mean()
    ce_t = nll_at(pseudo_logits(p), y, fit_temperature(p, y, iters=40))
    return {"val_loss": float(ce), "val_loss_calibrated": float(ce_t), "val_accuracy": float(np.mean(p.argmax(1) == y))}


def batched_predict(model, xs: np.ndarray, batch: int, desc: str, verbose: int, transform=None,
                    chunk: int = 256) -> np.ndarray:
    """Run `model` over `xs` in chunks (optionally augmenting each chunk first), with a progress bar."""
    from tqdm.auto import tqdm
    outs = []
    for i in tqdm(range(0, len(xs), chunk), desc=desc, unit="chunk", disable=verbose < 1, leave=False):
        xb = xs[i:i + chunk]
        xb = transform(xb) if transform else xb.astype(np.float32)
        outs.append(predict(model, xb, batch))
    return np.concatenate(outs) if outs else np.zeros((0,))


def _full_stage(stage: int, parts: ClassifierParts, train, val: tuple, n_classes: int, sw: np.ndarray,
                cfg: TrainConfig, ckpt: Checkpoint | None, start: int, rng) -> StageResult:
    """One stage on the whole network, fresh augmentation every epoch."""
    def epoch_data(_epoch):
        xa = np.concatenate([augment.augment_batch(train.x[i:i + 256], rng, cfg) for i in range(0, len(train.x), 256)])
        return _mixed(xa, train.y, n_classes, sw[train.y], cfg, rng)

    epochs, lr, pat, cosine = ((cfg.stage1_epochs, cfg.stage1_lr, cfg.stage1_patience, True) if stage == 1 else
                               (cfg.stage2_epochs, cfg.stage2_lr, cfg.stage2_patience, cfg.stage2_cosine))
    info = set_stage(parts, stage, cfg)
    r = run_stage(f"stage{stage}", parts.model, epoch_data, val, epochs, pat, lr, cosine, cfg.batch_size, ckpt,
                  start, cfg.verbose, _jit(cfg), n_per_epoch=len(train.x), monitor=cfg.monitor)
    r.info = info
    return r


def fit_full(parts: ClassifierParts, train, val, n_classes: int, sw: np.ndarray, cfg: TrainConfig,
             ckpt: Checkpoint | None, resume: dict) -> list[StageResult]:
    """Both stages on the whole network, fresh augmentation every epoch."""
    rng = np.random.default_rng(cfg.seed)
    v = (val.x.astype(np.float32), augment.one_hot_smooth(val.y, n_classes, 0.0))
    results, stage1_weights = [], None
    for stage in (1, 2):
        start = _start_epoch(resume, f"stage{stage}")
        if start is None:
            continue
        results.append(_full_stage(stage, parts, train, v, n_classes, sw, cfg, ckpt, start, rng))
        if stage == 1:
            stage1_weights = parts.model.get_weights()
    keep_better_stage(parts, stage1_weights, results)
    return results


def _cache_views(model, x: np.ndarray, cfg: TrainConfig, rng, desc: str, dtype=np.float32) -> np.ndarray:
    """`model` on `cfg.views` views of every image -> (N, V, ...). View 0 is the plain image; the rest are random
    augmentations drawn with the recipe's parameters."""
    def view(xb, v):
        return xb.astype(np.float32) if v == 0 else augment.augment_batch(xb, rng, cfg)

    out = [batched_predict(model, x, cfg.batch_size, f"{desc} view {v + 1}/{cfg.views}", cfg.verbose,
                           transform=lambda xb, v=v: view(xb, v)).astype(dtype) for v in range(cfg.views)]
    return np.stack(out, 1)


def _head_stage(parts: ClassifierParts, feats: np.ndarray, train, val_feat: np.ndarray, tv: np.ndarray,
                n_classes: int, w: np.ndarray, cfg: TrainConfig, ckpt, start: int, rng,
                cache_s: float) -> StageResult:
    """Stage 1 on cached pooled features (N, V, D): every view every epoch, it costs milliseconds. `cache_s`:
    what computing the cache took, reported with the stage."""
    head = head_model(parts)
    f_all = feats.reshape(-1, feats.shape[-1])
    y_all, w_all = np.repeat(train.y, cfg.views), np.repeat(w, cfg.views)
    r = run_stage("stage1", head, lambda e: _mixed(f_all, y_all, n_classes, w_all, cfg, rng), (val_feat, tv),
                  cfg.stage1_epochs, cfg.stage1_patience, cfg.stage1_lr, True, cfg.batch_size, ckpt, start,
                  cfg.verbose, _jit(cfg), n_per_epoch=len(f_all), full_model=parts.model, monitor=cfg.monitor)
    n = feats.shape[0] * feats.shape[1] + len(val_feat)
    r.info = {"cache_seconds": round(cache_s, 1), "cached_views": n, "cache_images_per_s": round(n / cache_s, 1),
              "trainable_weights": int(sum(int(np.prod(v.shape)) for v in head.trainable_weights))}
    return r


def fit_hybrid(parts: ClassifierParts, train, val, n_classes: int, sw: np.ndarray, cfg: TrainConfig,
               ckpt: Checkpoint | None, resume: dict) -> list[StageResult]:
    """Stage 1 on pooled features cached for `views` views (the head needs no fresh images to converge);
    stage 2 on the whole network with fresh augmentation every epoch (fine-tuning on a few fixed views overfits
    them: measured, stage 2 on cached views never beat stage 1's validation loss)."""
    import keras
    rng = np.random.default_rng(cfg.seed)
    tv = augment.one_hot_smooth(val.y, n_classes, 0.0)
    results, stage1_weights = [], None
    if (s := _start_epoch(resume, "stage1")) is not None:
        t0 = time.perf_counter()
        set_stage(parts, 1, cfg)
        to_feat = keras.Model(parts.model.input, parts.model.get_layer("head_pool").output, name="features")
        feats = _cache_views(to_feat, train.x, cfg, rng, "cache")
        val_feat = batched_predict(to_feat, val.x, cfg.batch_size, "cache val", cfg.verbose)
        results.append(_head_stage(parts, feats, train, val_feat, tv, n_classes, sw[train.y], cfg, ckpt, s, rng,
                                   time.perf_counter() - t0))
        stage1_weights = parts.model.get_weights()
    if (s := _start_epoch(resume, "stage2")) is not None:
        results.append(_full_stage(2, parts, train, (val.x.astype(np.float32), tv), n_classes, sw, cfg, ckpt, s,
                                   rng))
    keep_better_stage(parts, stage1_weights, results)
    return results


def fit_cached(parts: ClassifierParts, train, val, n_classes: int, sw: np.ndarray, cfg: TrainConfig,
               ckpt: Checkpoint | None, resume: dict) -> list[StageResult]:
    """Frozen part once per augmented view; epochs train only the head (stage 1) or the top blocks (stage 2)."""
    rng = np.random.default_rng(cfg.seed)
    t_cache = time.perf_counter()
    start = stage2_index(parts, cfg.stage2_from)
    set_stage(parts, 2, cfg)
    trunk, top, to_features = trunk_and_top(parts, start)
    acts = _cache_views(trunk, train.x, cfg, rng, "cache", np.float16)  # (N, V, h', w', c)
    feats = np.stack([batched_predict(to_features, acts[:, v], cfg.batch_size, "features", 0)
                      for v in range(cfg.views)], 1)  # (N, V, D)
    val_act = batched_predict(trunk, val.x, cfg.batch_size, "cache val", cfg.verbose).astype(np.float16)
    val_feat = batched_predict(to_features, val_act, cfg.batch_size, "features", 0)
    cache_s = time.perf_counter() - t_cache
    tv = augment.one_hot_smooth(val.y, n_classes, 0.0)
    w = sw[train.y]
    results = []

    if (s := _start_epoch(resume, "stage1")) is not None:
        results.append(_head_stage(parts, feats, train, val_feat, tv, n_classes, w, cfg, ckpt, s, rng, cache_s))
    stage1_weights = parts.model.get_weights() if results else None

    # Stage 2: unfrozen blocks + head on cached activations, one random view of each image per epoch.
    if (s := _start_epoch(resume, "stage2")) is not None:
        info = set_stage(parts, 2, cfg)
        idx = np.arange(len(train.x))

        def epoch_data(_epoch):
            pick = rng.integers(0, cfg.views, len(idx))
            return _mixed(acts[idx, pick].astype(np.float32), train.y, n_classes, w, cfg, rng)

        r = run_stage("stage2", top, epoch_data, (val_act.astype(np.float32), tv), cfg.stage2_epochs,
                      cfg.stage2_patience, cfg.stage2_lr, cfg.stage2_cosine, cfg.batch_size, ckpt, s, cfg.verbose,
                      _jit(cfg), n_per_epoch=len(idx), full_model=parts.model, monitor=cfg.monitor)
        r.info = {**info, "cut_at": parts.backbone_layers[start].name, "activation_shape": list(acts.shape[2:]),
                  "cache_mb": round(acts.nbytes / 2**20, 1)}
        results.append(r)
    keep_better_stage(parts, stage1_weights, results)
    return results


def keep_better_stage(parts: ClassifierParts, stage1_weights, results: list[StageResult]) -> None:
    """Stage 2 starts from stage 1's best; if it never beats that (monitored) validation loss, stage 1's weights
    stay. Both losses are the full model's on the same un-augmented validation images, so they compare directly.
    """
    if stage1_weights is None or len(results) < 2:
        return
    s1, s2 = results[0], results[-1]
    s2.info["kept"] = bool(s2.best_val_loss < s1.best_val_loss)
    if not s2.info["kept"]:
        parts.model.set_weights(stage1_weights)


def _jit(cfg: TrainConfig) -> bool | str:
    if cfg.jit_compile == "on":
        return True
    if cfg.jit_compile == "off":
        return False
    import tensorflow as tf
    return "auto" if tf.config.list_physical_devices("GPU") else False


def _start_epoch(resume: dict, stage: str) -> int | None:
    """Where a stage starts: 0 normally; the saved epoch for the interrupted stage; None if already done."""
    if not resume:
        return 0
    done_stage, epoch = resume.get("stage"), int(resume.get("epoch", 0))
    if done_stage == stage:
        return epoch
    if done_stage == "stage2" and stage == "stage1":
        return None
    return 0
