"""One training epoch under MultiWorkerMirroredStrategy, without `Model.fit`.

Keras 3's `fit` (and `predict`) fail under MultiWorkerMirroredStrategy with "Attempt to convert a value
(PerReplica...)" as soon as a cluster has two workers (keras-team/keras#20585, tensorflow/tensorflow#72388;
measured here with Keras 3.15 / TF 2.21). This is the same step `fit` runs (the compiled model's loss:
categorical cross-entropy weighted per sample, plus the layers' regularisation losses; the compiled optimizer,
loss scaling included), written as TensorFlow's custom-loop guide writes it: the global batch is split across
replicas, each replica's loss is divided by the global batch size, and the optimizer all-reduces gradients.
"""
from __future__ import annotations

import numpy as np

_STEPS: dict[tuple[int, int], object] = {}  # (model, optimizer) -> its compiled distributed step


def _step_fn(model, strategy, global_batch: int):
    import keras
    import tensorflow as tf

    def replica_step(xb, tb, wb):
        with tf.GradientTape() as tape:
            p = model(xb, training=True)
            ce = keras.losses.categorical_crossentropy(tb, p)
            loss = tf.reduce_sum(tf.cast(ce, tf.float32) * wb) / global_batch
            if model.losses:
                loss += tf.add_n([tf.cast(v, tf.float32) for v in model.losses]) / strategy.num_replicas_in_sync
            scaled = model.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(p, -1), tf.argmax(tb, -1)), tf.float32))
        return loss, correct

    @tf.function
    def step(batch):
        loss, correct = strategy.run(replica_step, args=batch)
        total = tf.distribute.ReduceOp.SUM
        return strategy.reduce(total, loss, axis=None), strategy.reduce(total, correct, axis=None)

    return step


def distributed_epoch(model, x: np.ndarray, t: np.ndarray, w: np.ndarray, batch_size: int, seed: int
                      ) -> tuple[float, float]:
    """One shuffled pass over (x, t, w) in global batches of `batch_size`; returns (mean loss, accuracy).
    Every worker passes the same arrays and seed (the data pipeline is deterministic), and each trains on its
    share of every global batch."""
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # variables must exist before the tf.function runs
    key = (id(model), id(model.optimizer))
    if key not in _STEPS:
        _STEPS.clear()  # a new stage compiles a new optimizer: the old step is dead
        _STEPS[key] = _step_fn(model, strategy, batch_size)
    step = _STEPS[key]
    ds = tf.data.Dataset.from_tensor_slices((x.astype(np.float32), t.astype(np.float32), w.astype(np.float32)))
    ds = ds.shuffle(len(x), seed=seed).batch(batch_size, drop_remainder=True)
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    losses, correct, n = [], 0.0, 0
    for batch in strategy.experimental_distribute_dataset(ds.with_options(opts)):
        loss, c = step(batch)
        losses.append(float(loss))
        correct += float(c)
        n += batch_size
    return (float(np.mean(losses)) if losses else float("nan")), (correct / n if n else float("nan"))
