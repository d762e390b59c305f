"""Training throughput per stage, measured the same way every time (img/s; warm-up, repeats, median).

    python -m trashcam.benchmarks.train_speed --recipe default --json runs/train_speed.json
    python -m trashcam.benchmarks.train_speed --recipe seed --weights none --repeats 3
    python -m trashcam.benchmarks.train_speed --per-layer --json runs/train_speed.json   # + stage 2 by layer kind

It times what a recipe's epochs cost on this machine: full-network inference, stage 1 and stage 2 of the `full`
mode, and the pieces of the `cached` mode (trunk pass per view, stage-2 step on cached activations, head step on
features). Content does not change speed, so random images are used; threads and oneDNN are recorded.
`--per-layer` adds where a cached stage-2 step spends its time: forward + backward of each layer alone, summed by
kind (1x1 convolution, depthwise, BatchNorm, ...), to tell arithmetic from overhead.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def _time(fn, warmup: int, repeats: int, n: int) -> dict:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    med = statistics.median(ts)
    return {"images_per_s": round(n / med, 2), "seconds_median": round(med, 4),
            "seconds": [round(t, 4) for t in ts], "images_per_call": n}


def layer_kind(layer) -> str:
    kind = type(layer).__name__
    if hasattr(layer, "kernel_size"):
        kind += f"[{layer.kernel_size[0]}x{layer.kernel_size[1]} s{layer.strides[0]}]"
    return kind


def stage2_by_layer(top, batch_size: int, warmup: int, repeats: int) -> dict:
    """Forward + backward (input and trainable weights) of each layer of the cached stage-2 model on its own,
    median ms per batch summed by `layer_kind`; one layer per tf.function adds a little dispatch to each."""
    import tensorflow as tf

    def rand(t):
        return tf.random.normal((batch_size,) + tuple(t.shape[1:]))

    by_kind: dict[str, float] = {}
    for layer in top.layers[1:]:
        xs = [rand(t) for t in layer.input] if isinstance(layer.input, (list, tuple)) else [rand(layer.input)]

        @tf.function
        def step(xs, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(xs)
                y = layer(xs if len(xs) > 1 else xs[0], training=False)
                loss = tf.reduce_sum(y)
            return [g for g in tape.gradient(loss, xs + layer.trainable_weights) if g is not None]

        def run():
            for g in step(xs):
                g.numpy()
        t = _time(run, warmup + 1, repeats, batch_size)
        by_kind[layer_kind(layer)] = by_kind.get(layer_kind(layer), 0.0) + t["seconds_median"] * 1e3
    total = sum(by_kind.values())
    return {"ms_per_batch": round(total, 1), "ms_per_image": round(total / batch_size, 2),
            "by_kind": {k: {"ms_per_batch": round(v, 1), "share": round(v / total, 3)}
                        for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])}}


def measure(recipe: str = "default", batches: int = 3, warmup: int = 1, repeats: int = 3, per_layer: bool = False,
            **overrides) -> dict:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from trashcam.train.config import resolve
    from trashcam.train.model import build_classifier, compile_for, head_model, set_stage, stage2_index, trunk_and_top
    from trashcam.train.pipeline import setup_compute

    cfg = resolve(recipe, **{k: v for k, v in overrides.items() if v is not None})
    _, compute = setup_compute(cfg)
    import keras
    import tensorflow as tf

    n = cfg.batch_size * batches
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
    parts = build_classifier(cfg, 5)
    t = keras.utils.to_categorical(rng.integers(0, 5, n), 5)
    out: dict = {}

    def fit(model, xs):
        return lambda: model.fit(xs, t, batch_size=cfg.batch_size, epochs=1, verbose=0)

    out["inference"] = _time(lambda: parts.model.predict(x, batch_size=cfg.batch_size, verbose=0), warmup, repeats, n)
    for stage in (1, 2):
        set_stage(parts, stage, cfg)
        compile_for(parts.model, 1e-4, False)
        out[f"full_stage{stage}_train"] = _time(fit(parts.model, x), warmup, repeats, n)
    start = stage2_index(parts, cfg.stage2_from)
    trunk, top, feats = trunk_and_top(parts, start)
    out["cached_trunk_pass"] = _time(lambda: trunk.predict(x, batch_size=cfg.batch_size, verbose=0), warmup, repeats, n)
    acts = trunk.predict(x, batch_size=cfg.batch_size, verbose=0)
    set_stage(parts, 2, cfg)
    compile_for(top, 1e-4, False)
    out["cached_stage2_train"] = _time(fit(top, acts), warmup, repeats, n)
    by_layer = stage2_by_layer(top, cfg.batch_size, warmup, repeats) if per_layer else None
    head = head_model(parts)
    compile_for(head, 1e-3, False)
    f = feats.predict(acts, batch_size=cfg.batch_size, verbose=0)
    out["cached_stage1_train"] = _time(fit(head, f), warmup, repeats, n)
    return {
        "recipe": cfg.recipe, "backbone": cfg.backbone, "image_size": cfg.image_size, "batch_size": cfg.batch_size,
        "stage2_from": cfg.stage2_from, "cut_at": parts.backbone_layers[start].name, "results": out,
        **({"cached_stage2_by_layer": by_layer} if by_layer else {}),
        "environment": {"cpu_count": os.cpu_count(), "threads": cfg.threads or "all",
                        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                        "tensorflow": tf.__version__, "keras": keras.__version__, "python": sys.version.split()[0],
                        "platform": platform.platform(), "processor": _cpu_model(), **compute},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trashcam.benchmarks.train_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="default")
    p.add_argument("--backbone")
    p.add_argument("--weights", default="none", help="weights do not change speed; 'none' skips loading them")
    p.add_argument("--image-size", type=int)
    p.add_argument("--stage2-from")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--batches", type=int, default=3, help="batches per timed call")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--per-layer", action="store_true", help="also time each stage-2 layer alone, summed by kind")
    p.add_argument("--json", help="write the result here")
    a = p.parse_args(argv)
    res = measure(a.recipe, a.batches, a.warmup, a.repeats, a.per_layer, backbone=a.backbone, weights=a.weights,
                  image_size=a.image_size, stage2_from=a.stage2_from, batch_size=a.batch_size, threads=a.threads)
    for k, v in res["results"].items():
        print(f"{k:24s} {v['images_per_s']:8.1f} img/s")
    for k, v in res.get("cached_stage2_by_layer", {}).get("by_kind", {}).items():
        print(f"  stage 2, {k:28s} {v['ms_per_batch']:8.1f} ms a batch  {100 * v['share']:5.1f} %")
    if a.json:
        from trashcam.edge.bundle import atomic_write_json
        atomic_write_json(a.json, res)
    else:
        print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
