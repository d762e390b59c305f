"""The two training stages in each mode, run through the epoch loop of train/loop.py.

- `full`: every epoch runs the whole network on freshly augmented images (the seed notebook; best on a GPU).
- `cached`: the frozen part of the network runs once per augmented view and its output is kept; epochs then
  train only what learns. Stage 1 trains the head on pooled features; stage 2 trains the unfrozen blocks on the
  activations entering them. Mathematically the same forward pass as `full` (BN is frozen in both), with a fixed
  set of `views` augmentations per image instead of new ones each epoch, and MixUp applied where the cache is.
"""
from __future__ import annotations

import time

import numpy as np

from . import augment, distill
from .checkpoint import Checkpoint
from .config import TrainConfig
from .frozen_inference import frozen_predictor
from .loop import StageResult, epoch_rng, finish, finished, predict, run_stage
from .model import ClassifierParts, any_size, head_model, set_stage, stage2_index, trunk_and_top


def _mixed(x, y, n_classes, sw, cfg: TrainConfig, rng, teacher: np.ndarray | None = None):
    """Smoothed one-hot targets (blended with the `teacher`'s probabilities of these samples, if any), then MixUp
    (which returns its inputs unchanged at alpha 0)."""
    t = distill.blend(augment.one_hot_smooth(y, n_classes, cfg.label_smoothing), teacher, cfg)
    x, t, sw, _, _ = augment.mixup(x, t, sw, cfg.mixup_alpha, rng)
    return x, t, sw


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
                cfg: TrainConfig, ckpt: Checkpoint | None) -> StageResult:
    """One stage on the whole network, fresh augmentation every epoch."""
    name = f"stage{stage}"

    def epoch_data(epoch):
        rng = epoch_rng(cfg, name, epoch)
        xa = np.concatenate([augment.augment_batch(train.x[i:i + 256], rng, cfg) for i in range(0, len(train.x), 256)])
        return _mixed(xa, train.y, n_classes, sw[train.y], cfg, rng)

    epochs, lr, pat, cosine = ((cfg.stage1_epochs, cfg.stage1_lr, cfg.stage1_patience, True) if stage == 1 else
                               (cfg.stage2_epochs, cfg.stage2_lr, cfg.stage2_patience, cfg.stage2_cosine))
    info = set_stage(parts, stage, cfg)
    r = run_stage(name, parts.model, epoch_data, val, epochs, pat, lr, cosine, cfg.batch_size, ckpt,
                  cfg.verbose, _jit(cfg), n_per_epoch=len(train.x), monitor=cfg.monitor, seed=cfg.seed)
    r.info = info
    return finish(ckpt, parts, r)


def _stage1_weights(parts: ClassifierParts, ckpt: Checkpoint | None, ran: bool):
    """Stage 1's final weights: the model's own right after stage 1 ran here; the checkpoint's if stage 1
    finished before an interruption (so the stage-2-vs-stage-1 guard still works after --resume)."""
    if ran:
        return parts.model.get_weights()
    return ckpt.weights("stage1", "final") if ckpt else None


def fit_full(parts: ClassifierParts, train, val, n_classes: int, sw: np.ndarray, cfg: TrainConfig,
             ckpt: Checkpoint | None, compute: dict | None = None) -> list[StageResult]:
    """Both stages on the whole network, fresh augmentation every epoch."""
    v = (val.x.astype(np.float32), augment.one_hot_smooth(val.y, n_classes, 0.0))
    results = []
    s1 = finished(ckpt, "stage1")
    results.append(s1 or _full_stage(1, parts, train, v, n_classes, sw, cfg, ckpt))
    stage1_weights = _stage1_weights(parts, ckpt, s1 is None)
    results.append(finished(ckpt, "stage2") or _full_stage(2, parts, train, v, n_classes, sw, cfg, ckpt))
    keep_better_stage(parts, stage1_weights, results, cfg.fixed_stage2)
    return results


def _cache_views(model, x: np.ndarray, cfg: TrainConfig, rng, desc: str, dtype=np.float32, teacher=None):
    """`model` on `cfg.views` views of every image -> (N, V, ...), and the `teacher`'s probabilities on the same
    views (N, V, C) (None without one). View 0 is the plain image; the rest are random augmentations drawn with
    the recipe's parameters."""
    soft: list[np.ndarray] = []

    def view(xb, v):
        xa = xb.astype(np.float32) if v == 0 else augment.augment_batch(xb, rng, cfg)
        if teacher is not None:  # here, the teacher sees exactly the pixels the student's cache is made from
            soft.append(predict(teacher, xa, cfg.batch_size))
        return xa

    out = [batched_predict(model, x, cfg.batch_size, f"{desc} view {v + 1}/{cfg.views}", cfg.verbose,
                           transform=lambda xb, v=v: view(xb, v)).astype(dtype) for v in range(cfg.views)]
    teacher_p = np.concatenate(soft).reshape(cfg.views, len(x), -1).swapaxes(0, 1) if teacher is not None else None
    return np.stack(out, 1), teacher_p


def _head_stage(parts: ClassifierParts, feats: np.ndarray, train, val_feat: np.ndarray, tv: np.ndarray,
                n_classes: int, w: np.ndarray, cfg: TrainConfig, ckpt, cache_s: float,
                teacher_p: np.ndarray | None = None, n_cached: int = 0) -> StageResult:
    """Stage 1 on cached pooled features (N, V, D): every view every epoch, it costs milliseconds. `cache_s`:
    what computing the cache of `n_cached` passes took (default: the views plus validation), reported with the
    stage. `teacher_p`: a teacher's probabilities (N, V, C)."""
    head = head_model(parts)
    f_all = feats.reshape(-1, feats.shape[-1])
    y_all, w_all = np.repeat(train.y, cfg.views), np.repeat(w, cfg.views)
    t_all = None if teacher_p is None else teacher_p.reshape(-1, teacher_p.shape[-1])
    r = run_stage("stage1", head,
                  lambda e: _mixed(f_all, y_all, n_classes, w_all, cfg, epoch_rng(cfg, "stage1", e), t_all),
                  (val_feat, tv), cfg.stage1_epochs, cfg.stage1_patience, cfg.stage1_lr, True, cfg.batch_size, ckpt,
                  cfg.verbose, _jit(cfg), n_per_epoch=len(f_all), full_model=parts.model, monitor=cfg.monitor,
                  seed=cfg.seed)
    n = n_cached or feats.shape[0] * feats.shape[1] + len(val_feat)
    r.info = {"cache_seconds": round(cache_s, 1), "cached_views": n, "cache_images_per_s": round(n / cache_s, 1),
              "trainable_weights": int(sum(int(np.prod(v.shape)) for v in head.trainable_weights))}
    return finish(ckpt, parts, r)


def fit_hybrid(parts: ClassifierParts, train, val, n_classes: int, sw: np.ndarray, cfg: TrainConfig,
               ckpt: Checkpoint | None, compute: dict | None = None) -> list[StageResult]:
    """Stage 1 on pooled features cached for `views` views (the head needs no fresh images to converge);
    stage 2 on the whole network with fresh augmentation every epoch (fine-tuning on a few fixed views overfits
    them: measured, stage 2 on cached views never beat stage 1's validation loss)."""
    import keras
    tv = augment.one_hot_smooth(val.y, n_classes, 0.0)
    s1 = finished(ckpt, "stage1")
    if s1 is None:
        t0 = time.perf_counter()
        set_stage(parts, 1, cfg)
        rng = np.random.default_rng(cfg.seed)
        to_feat = keras.Model(parts.model.input, parts.model.get_layer("head_pool").output, name="features")
        to_feat = frozen_predictor(to_feat, cfg, {} if compute is None else compute, train.x[:4],
                                   len(train.x) * cfg.views + len(val.x))
        feats, _ = _cache_views(to_feat, train.x, cfg, rng, "cache")
        val_feat = batched_predict(to_feat, val.x, cfg.batch_size, "cache val", cfg.verbose)
        s1 = _head_stage(parts, feats, train, val_feat, tv, n_classes, sw[train.y], cfg, ckpt,
                         time.perf_counter() - t0)
        stage1_weights = _stage1_weights(parts, ckpt, True)
    else:
        stage1_weights = _stage1_weights(parts, ckpt, False)
    results = [s1, finished(ckpt, "stage2")
               or _full_stage(2, parts, train, (val.x.astype(np.float32), tv), n_classes, sw, cfg, ckpt)]
    keep_better_stage(parts, stage1_weights, results, cfg.fixed_stage2)
    return results


def fit_cached(parts: ClassifierParts, train, val, n_classes: int, sw: np.ndarray, cfg: TrainConfig,
               ckpt: Checkpoint | None, compute: dict | None = None, teacher=None) -> list[StageResult]:
    """Frozen part once per augmented view; epochs train only the head (stage 1) or the top blocks (stage 2).
    `teacher`: a Keras model whose probabilities on each cached view join that view's targets (train/distill.py)."""
    rng = np.random.default_rng(cfg.seed)
    t_cache = time.perf_counter()
    start = stage2_index(parts, cfg.stage2_from)
    set_stage(parts, 2, cfg)
    trunk, top, to_features = trunk_and_top(parts, start)
    compute = {} if compute is None else compute
    with_val = cfg.stage2_data == "train+val"
    n_views = (len(train.x) + len(val.x) * with_val) * cfg.views
    n_passes = n_views + len(val.x) * (not with_val)
    trunk = frozen_predictor(trunk, cfg, compute, train.x[:4], n_passes)
    if teacher is not None:
        teacher = frozen_predictor(teacher, cfg, compute, train.x[:4], n_views)
    acts, teacher_p = _cache_views(trunk, train.x, cfg, rng, "cache", np.float16, teacher)  # (N, V, h', w', c)
    w = sw[train.y]
    if with_val:  # drawn after the training views, so those are the same as without; view 0 is the plain image
        val_acts, val_teacher = _cache_views(trunk, val.x, cfg, rng, "cache val", np.float16, teacher)
        val_act = val_acts[:, 0].copy()
    else:
        val_act = batched_predict(trunk, val.x, cfg.batch_size, "cache val", cfg.verbose).astype(np.float16)
    tv = augment.one_hot_smooth(val.y, n_classes, 0.0)

    s1 = finished(ckpt, "stage1")
    if s1 is None:  # pooled features for the head; a run resumed past stage 1 needs only the activations
        to_features = frozen_predictor(to_features, cfg, compute, acts[:4, 0].astype(np.float32), n_passes)
        feats = np.stack([batched_predict(to_features, acts[:, v], cfg.batch_size, "features", 0)
                          for v in range(cfg.views)], 1)  # (N, V, D)
        val_feat = batched_predict(to_features, val_act, cfg.batch_size, "features", 0)
        results = [_head_stage(parts, feats, train, val_feat, tv, n_classes, w, cfg, ckpt,
                               time.perf_counter() - t_cache, teacher_p, n_passes)]
    else:
        results = [s1]
    stage1_weights = _stage1_weights(parts, ckpt, s1 is None)

    # Stage 2: unfrozen blocks + head on cached activations, one random view of each image per epoch.
    s2 = finished(ckpt, "stage2")
    if s2 is None:
        info = set_stage(parts, 2, cfg)
        y2 = train.y
        if with_val:
            acts, y2, w = np.concatenate([acts, val_acts]), np.concatenate([y2, val.y]), np.concatenate([w, sw[val.y]])
            teacher_p = None if teacher_p is None else np.concatenate([teacher_p, val_teacher])
            del val_acts
        idx = np.arange(len(acts))
        crop = max(1, round(acts.shape[2] * cfg.stage2_crop))
        cropped = crop < min(acts.shape[2:4])

        def epoch_data(epoch):
            erng = epoch_rng(cfg, "stage2", epoch)
            pick = erng.integers(0, cfg.views, len(idx))
            x = augment.random_crops(acts[idx, pick], crop, erng) if cropped else acts[idx, pick]
            return _mixed(x.astype(np.float32), y2, n_classes, w, cfg, erng,
                          None if teacher_p is None else teacher_p[idx, pick])

        # the refit trains on the validation images: a loss on them would only say they were learnt (~1e-15)
        val2 = None if with_val else (val_act.astype(np.float32), tv)
        s2 = run_stage("stage2", any_size(top) if cropped else top, epoch_data, val2, cfg.stage2_epochs,
                       cfg.stage2_patience, cfg.stage2_lr, cfg.stage2_cosine, cfg.batch_size, ckpt, cfg.verbose,
                       _jit(cfg), n_per_epoch=len(idx), full_model=parts.model, monitor=cfg.monitor, seed=cfg.seed)
        s2.info = {**info, "cut_at": parts.backbone_layers[start].name, "activation_shape": list(acts.shape[2:]),
                   "cache_mb": round(acts.nbytes / 2**20, 1), "trained_on": cfg.stage2_data, "images": len(idx),
                   **({"crop": [crop, crop]} if cropped else {})}
        finish(ckpt, parts, s2)
    results.append(s2)
    keep_better_stage(parts, stage1_weights, results, cfg.fixed_stage2)
    return results


def keep_better_stage(parts: ClassifierParts, stage1_weights, results: list[StageResult],
                      fixed: bool = False) -> None:
    """Stage 2 starts from stage 1's best; if it never beats that (monitored) validation loss, stage 1's weights
    stay. Both losses are the full model's on the same un-augmented validation images, so they compare directly.
    `fixed` (a fixed-length stage 2): stage 2 stays. Measured: one seed's stage 1 hit a validation loss of 0.203 by
    chance, stage 2 (still warming up from it) was stopped after 6 of 24 epochs and thrown away, and the model
    tested 3 pp below the same recipe's other seeds."""
    if stage1_weights is None or len(results) < 2:
        return
    s1, s2 = results[0], results[-1]
    if fixed:
        s2.info.update(kept=True, fixed_length=True)
        return
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
