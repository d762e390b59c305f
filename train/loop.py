"""The epoch loop both stages run in every mode: one epoch of training, validation, early stopping, checkpoints.

Every epoch's randomness is a function of (seed, stage, epoch), so `--resume` redraws an interrupted epoch exactly.
train/fit.py builds what each mode trains and calls `run_stage`.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from .checkpoint import Checkpoint
from .config import TrainConfig
from .model import ClassifierParts, compile_for


@dataclass
class StageResult:
    name: str
    epochs_run: int = 0
    best_epoch: int = -1
    best_val_loss: float | None = math.inf  # None: the stage was not validated
    seconds: float = 0.0
    images_per_s: float = 0.0
    history: dict[str, list[float]] = field(default_factory=lambda: {"loss": [], "accuracy": [], "val_loss": [],
                                                                     "val_loss_calibrated": [], "val_accuracy": [],
                                                                     "lr": []})
    info: dict[str, Any] = field(default_factory=dict)
    images_seen: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StageResult":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def epoch_seed(seed: int, stage: str, epoch: int) -> int:
    """Every epoch's randomness (augmentation, MixUp, the batch order) is a function of (seed, stage, epoch)
    alone, so an epoch run after `--resume` draws exactly what it would have drawn in one go."""
    return (seed * 1_000_003 + int(stage[-1]) * 10_007 + epoch) % 2**31


def epoch_rng(cfg: TrainConfig, stage: str, epoch: int) -> np.random.Generator:
    return np.random.default_rng(epoch_seed(cfg.seed, stage, epoch))


def run_stage(name: str, model, epoch_data: Callable[[int], tuple], val: tuple | None, epochs: int, patience: int,
              lr: float, cosine: bool, batch_size: int, ckpt: Checkpoint | None, verbose: int = 1,
              jit: bool | str = False, n_per_epoch: int = 0, full_model=None, monitor: str = "val_loss",
              seed: int = 0) -> StageResult:
    """Epoch loop: fit one epoch on `epoch_data(epoch)` = (x, targets, weights), validate, early-stop on the
    `monitor`ed validation loss (`best_val_loss` is that value) with the best weights restored. Per-step cosine
    decay from `lr` to 0 over the stage when `cosine`. `patience` 0: a fixed-length stage, no early stopping,
    the last epoch's weights kept (`best_epoch` and `best_val_loss` are then the last epoch's). `val` None (only
    with `patience` 0): nothing to validate on, e.g. the stage trains on the validation images; `best_val_loss`
    is then None.
    `full_model` is what the checkpoint saves (the sub-model being trained shares its weights). With saved
    progress for this stage in `ckpt`, continues from it: history, best weights, early-stopping wait, optimizer."""
    import keras
    import tensorflow as tf
    from tqdm.auto import tqdm

    drop_remainder = tf.distribute.get_strategy().num_replicas_in_sync > 1
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    full = full_model or model
    saved = ckpt.stage(name) if ckpt else None
    res, start, wait, best_weights = StageResult(name), 0, 0, None
    if saved:
        res = StageResult.from_dict(saved["result"])
        start, wait = int(saved["next_epoch"]), int(saved["wait"])
        best_weights = ckpt.weights(name, "best")
    if epochs <= 0:
        return res
    if val is None and patience > 0:
        raise ValueError("early stopping needs validation data")
    steps_per_epoch = math.ceil(n_per_epoch / batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, steps_per_epoch * epochs)) \
        if cosine else lr
    compile_for(model, schedule, jit)
    if start and not ckpt.restore_optimizer(model.optimizer, model.trainable_variables):
        # no optimizer state: at least put the LR schedule where the interrupted run left it
        model.optimizer.iterations.assign(steps_per_epoch * start)
    t_stage = time.perf_counter()
    fixed = patience <= 0
    stopped = start > 0 and not fixed and wait >= patience
    bar = tqdm(range(start, epochs if not stopped else start), desc=name, unit="epoch", disable=verbose < 1,
               leave=True)
    for epoch in bar:
        e_seed = epoch_seed(seed, name, epoch)
        keras.utils.set_random_seed(e_seed)
        x, t, w = epoch_data(epoch)
        if drop_remainder:  # tf.distribute with several replicas fails on a batch it cannot split evenly
            if len(x) < batch_size:
                raise ValueError(f"{len(x)} training samples are fewer than one global batch ({batch_size}); "
                                 "lower --batch-size")
            # which samples sit out follows --seed too (a stream apart from the batch order's)
            keep = np.random.default_rng([e_seed, 2]).permutation(len(x))[:len(x) - len(x) % batch_size]
            x, t, w = x[keep], t[keep], w[keep]
        t0 = time.perf_counter()
        if _multiworker():  # Keras' fit fails under MultiWorkerMirroredStrategy: train/distributed.py
            from .distributed import distributed_epoch
            loss, acc = distributed_epoch(model, x, t, w, batch_size, seed=e_seed)
        else:  # several replicas stay on Keras' fit, as before train_on_batch came in; now over the seeded order
            loss, acc = fit_epoch(model, x, t, w, batch_size, e_seed, pipelined=on_gpu or drop_remainder)
        res.images_seen += len(x)
        vals = validation_loss(model, val[0], val[1], batch_size) if val is not None else {}
        cur_lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        for k, v in (("loss", loss), ("accuracy", acc), *vals.items(),
                     ("lr", cur_lr)):
            res.history[k].append(float(v))
        res.epochs_run += 1
        vl = vals.get(monitor)
        shown = {"val_loss": f"{vl:.3f}", "val_acc": f"{vals['val_accuracy']:.3f}"} if vals else {}
        bar.set_postfix(loss=f"{loss:.3f}", **shown, ips=f"{len(x) / (time.perf_counter() - t0):.0f}")
        improved = vl is not None and vl < res.best_val_loss - 1e-4
        if fixed:  # the last epoch is the result: nothing is chosen on 303 noisy validation images
            res.best_val_loss, res.best_epoch, improved = None if vl is None else float(vl), epoch, False
        elif improved:
            res.best_val_loss, res.best_epoch, wait = float(vl), epoch, 0
            best_weights = full.get_weights()
        else:
            wait += 1
        if ckpt:
            res.seconds += time.perf_counter() - t_stage
            t_stage = time.perf_counter()
            ckpt.save_epoch(name, full, model.optimizer, {"next_epoch": epoch + 1, "wait": wait,
                                                          "result": res.to_dict()},
                            best_weights if improved else None)
        if not fixed and wait >= patience:
            break
    if best_weights is not None and not fixed:
        full.set_weights(best_weights)
    res.seconds += time.perf_counter() - t_stage
    res.images_per_s = res.images_seen / res.seconds if res.seconds else 0.0
    return res


def fit_epoch(model, x: np.ndarray, t: np.ndarray, w: np.ndarray, batch_size: int, seed: int,
              pipelined: bool = False) -> tuple[float, float]:
    """One epoch over a shuffle drawn from `seed` -> (mean loss, accuracy), per-sample means as `Model.fit`
    reports them (its compiled accuracy ignores sample weights).

    The same batches in the same order either way, and the same weights to the bit (tests/test_train_recipe.py);
    only the execution differs. On a CPU, `train_on_batch`: `fit`'s input pipeline left one of two cores idle ~45 %
    of the time, 64 ms an image against 35-40 ms this way for the same stage-2 step (Lite0 from block5a at 288 px,
    Keras 3.15). `pipelined` (a GPU): `fit` over the pre-shuffled arrays, whose input pipeline feeds the device
    while it computes, where `train_on_batch` would wait for each batch's loss to come back."""
    order = np.random.default_rng([seed, 1]).permutation(len(x))  # a stream apart from the epoch's MixUp draws
    if pipelined:
        h = model.fit(x[order], t[order], sample_weight=w[order], batch_size=batch_size, epochs=1, verbose=0,
                      shuffle=False).history
        return float(h["loss"][0]), float(h["accuracy"][0])
    loss = correct = 0.0
    for i in range(0, len(x), batch_size):
        j = order[i:i + batch_size]
        logs = model.train_on_batch(x[j], t[j], sample_weight=w[j], return_dict=True)
        loss += float(logs["loss"]) * len(j)
        correct += float(logs["accuracy"]) * len(j)
    n = max(1, len(x))
    return loss / n, correct / n


def finish(ckpt: Checkpoint | None, parts: ClassifierParts, r: StageResult) -> StageResult:
    """Record a finished stage (with its `info`), so a resumed run skips it and still knows its result."""
    if ckpt:
        ckpt.finish_stage(r.name, parts.model, r.to_dict())
    return r


def finished(ckpt: Checkpoint | None, name: str) -> StageResult | None:
    saved = ckpt.stage(name) if ckpt else None
    return StageResult.from_dict(saved["result"]) if saved and saved.get("done") else None


def predict(model, x: np.ndarray, batch: int) -> np.ndarray:
    """`model.predict`, not `predict_on_batch`: the latter returns wrong shapes under MirroredStrategy."""
    if _multiworker():
        return local_predict(model, x, batch)
    return np.asarray(model.predict(x, batch_size=batch, verbose=0))


def _multiworker() -> bool:
    import tensorflow as tf
    return isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy)


def local_predict(model, x: np.ndarray, batch: int) -> np.ndarray:
    """Forward passes in this process only. Keras' predict under MultiWorkerMirroredStrategy fails ("Attempt to
    convert a value (PerReplica...)", Keras 3.15); every worker holds all the data and the same synchronised
    weights, so each computes the same predictions locally and takes the same early-stopping decisions."""
    import keras
    outs = [keras.ops.convert_to_numpy(model(x[i:i + batch].astype(np.float32), training=False))
            for i in range(0, len(x), batch)]
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


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
