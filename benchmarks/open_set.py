"""Open-set experiment: which "uncertain" score flags foreign objects best? Leave-one-class-out, cheap version.

For each class k: the recipe's head is trained on the other classes' train split, and class k plays the foreign
object. Frozen EfficientNet-Lite0 pooled features are extracted ONCE for every image (the plain image for all,
plus `views - 1` augmented views of the train split, as the recipe's stage 1 caches them), so a fold costs
seconds, not the ~20 minutes of the fine-tuned recipe. The numbers are therefore those of frozen-feature head
models, not of the fine-tuned default bundle.

Per fold and score: the threshold flagging `flag_rate` (5 %) of the known classes' VALIDATION images, then on
the fold's own in-distribution TEST images and ALL images of class k: flagged %, and the AUROC.

    python -m trashcam.benchmarks.open_set --data /work/shared/data/trashnet5 --out runs/open_set
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from trashcam.edge.ood import (Mahalanobis, auroc, energy_score, knn_cosine_score, msp_score,
                               threshold_for_rate)

SCORES = ("msp", "energy", "maha_pooled", "maha_full", "maha_r32", "maha_r64", "maha_r256", "maha_sqrt",
          "maha_class_r32", "maha_penult", "rel_maha", "knn_cosine", "knn10_cosine", "combined", "combined_full",
          "combined_sqrt", "combined_energy", "combined_knn", "maha_layers", "combined_layers")
# Pooled outputs of earlier blocks (Lee et al. 2018 sum Mahalanobis distances over layers): "maha_layers" adds
# their z-scored distances to the pooled features' one, "combined_layers" adds max-probability too.
LAYERS = ("block4c_add", "block5c_add", "block6d_add", "block7a_project_bn")
LAYER_DIMS = (80, 112, 192, 320)
# maha_pooled and combined are what edge-calibrate deploys (shared covariance, rank edge.ood.DEFAULT_RANK);
# maha_full / maha_rN: the same at full rank / rank N; maha_sqrt on square-rooted features; maha_class_r32: one
# rank-32 Gaussian per class (its own covariance).


def extract_features(data: str, image_size: int, views: int, seed: int, cache_dir: Path) -> dict:
    """Pooled frozen-backbone features of every image (view 0 = plain) and of augmented train views."""
    import keras

    from trashcam.edge.bundle import Preprocessing
    from trashcam.edge.dataset import make_split
    from trashcam.train.augment import augment_batch
    from trashcam.train.backbones import get
    from trashcam.train.config import DEFAULT
    from trashcam.train.data import decode_images
    from trashcam.train.fit import batched_predict

    split = make_split(data, seed=seed)
    pre = Preprocessing(input_size=(image_size, image_size))
    out: dict = {"classes": np.array(split.classes)}
    backbone = get("efficientnet_lite0").build(input_shape=(image_size, image_size, 3), weights="imagenet")
    pools = [keras.layers.GlobalAveragePooling2D()(backbone.output)]
    pools += [keras.layers.GlobalAveragePooling2D()(backbone.get_layer(n).output) for n in LAYERS]
    model = keras.Model(backbone.input, keras.layers.Concatenate()(pools))
    cfg = DEFAULT.replace(image_size=image_size)
    rng = np.random.default_rng(seed)
    for name in ("train", "val", "test"):
        dec = decode_images(split.paths(name), split.labels(name), pre, cache_dir, desc=f"decode {name}")
        n_views = views if name == "train" else 1
        feats = []
        for v in range(n_views):
            tf_ = None if v == 0 else (lambda xb: augment_batch(xb, rng, cfg))
            feats.append(batched_predict(model, dec.x, 32, f"{name} view {v + 1}/{n_views}", 1, transform=tf_))
        allf = np.stack(feats, 1).astype(np.float32)  # (N, V, D + intermediate layers)
        d = allf.shape[-1] - sum(LAYER_DIMS)
        out[f"{name}_x"] = allf[..., :d]
        out[f"{name}_layers"] = allf[:, 0, d:]  # plain view only: what a per-layer Gaussian is fitted on
        out[f"{name}_y"] = dec.y
    return out


def train_head(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, n_classes: int, seed: int,
               epochs: int | None = None):
    """The default recipe's stage 1 on cached features: dropout -> dense(192, swish) -> softmax, MixUp,
    label smoothing, clipped class weights, cosine LR, early stopping on calibrated validation NLL.
    -> (penultimate-feature model, final layer kernel, bias)."""
    import keras

    from trashcam.train import augment
    from trashcam.train.config import DEFAULT as cfg
    from trashcam.train.data import class_weights
    from trashcam.train.loop import run_stage

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    inp = keras.Input((x.shape[-1],))
    h = keras.layers.Dropout(cfg.dropout)(inp)
    h = keras.layers.Dense(cfg.dense_units, activation=cfg.dense_activation,
                           kernel_regularizer=keras.regularizers.L2(cfg.l2))(h)
    final = keras.layers.Dense(n_classes, activation="softmax")
    model = keras.Model(inp, final(h))
    n, v, d = x.shape
    xf, yf = x.reshape(-1, d), np.repeat(y, v)
    w = class_weights(y, n_classes, cfg.class_weight_clip)[yf]

    def epoch_data(_e):
        t = augment.one_hot_smooth(yf, n_classes, cfg.label_smoothing)
        xm, tm, wm, _, _ = augment.mixup(xf, t, w, cfg.mixup_alpha, rng)
        return xm, tm, wm

    run_stage("stage1", model, epoch_data, (xv, augment.one_hot_smooth(yv, n_classes, 0.0)),
              epochs or cfg.stage1_epochs,
              cfg.stage1_patience, cfg.stage1_lr, True, cfg.batch_size, None, verbose=0, n_per_epoch=len(xf),
              monitor=cfg.monitor)
    penult = keras.Model(inp, h)
    kernel, bias = final.get_weights()
    return penult, kernel, bias


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fold_scores(f: dict, k: int, seed: int, knn_k: int = 1, head_epochs: int | None = None) -> dict:
    """Train without class k; -> {score: {"val", "test", "foreign"} arrays} and the fold's test accuracy."""
    from trashcam.calibration.temperature import fit_temperature

    known = [c for c in range(len(f["classes"])) if c != k]
    remap = {c: i for i, c in enumerate(known)}

    def mask(name, keep_known):
        return np.isin(f[f"{name}_y"], known) if keep_known else f[f"{name}_y"] == k

    def part(name, keep_known):
        m = mask(name, keep_known)
        y = np.array([remap.get(int(c), -1) for c in f[f"{name}_y"][m]])
        return f[f"{name}_x"][m], y

    xtr, ytr = part("train", True)
    xv, yv = part("val", True)
    xte, yte = part("test", True)
    xfor = np.concatenate([part(s, False)[0][:, 0] for s in ("train", "val", "test")])

    def layers(name, keep_known):
        return f[f"{name}_layers"][mask(name, keep_known)]
    lay = {"val": layers("val", True), "test": layers("test", True),
           "foreign": np.concatenate([layers(s, False) for s in ("train", "val", "test")])}
    lay_tr = layers("train", True)
    bounds = np.cumsum((0,) + LAYER_DIMS)
    per_layer = [Mahalanobis.fit(lay_tr[:, a:b], ytr, rank=None) for a, b in zip(bounds[:-1], bounds[1:])]
    penult, kernel, bias = train_head(xtr, ytr, xv[:, 0], yv, len(known), seed, head_epochs)
    sets = {"val": xv[:, 0], "test": xte[:, 0], "foreign": xfor}
    hid = {s: np.asarray(penult.predict(v, batch_size=256, verbose=0)) for s, v in sets.items()}
    logits = {s: h @ kernel + bias for s, h in hid.items()}
    temp = fit_temperature(_softmax(logits["val"]), yv)
    probs = {s: _softmax(z / temp) for s, z in logits.items()}
    maha_p = Mahalanobis.fit(xtr[:, 0], ytr)
    ranked = {f"maha_{n}": Mahalanobis.fit(xtr[:, 0], ytr, rank=r)
              for n, r in (("full", None), ("r32", 32), ("r64", 64), ("r256", 256))}
    maha_sqrt = Mahalanobis.fit(np.sqrt(np.maximum(xtr[:, 0], 0)), ytr)
    per_class = [Mahalanobis.fit(xtr[:, 0][ytr == c], np.zeros(int(np.sum(ytr == c)), int), rank=32)
                 for c in range(len(known))]
    maha_bg = Mahalanobis.fit(xtr[:, 0], np.zeros(len(ytr), int))  # one Gaussian for all: relative Mahalanobis
    tr_hid = np.asarray(penult.predict(xtr[:, 0], batch_size=256, verbose=0))
    maha_h = Mahalanobis.fit(tr_hid, ytr)
    out = {s: {} for s in SCORES}
    for s in sets:
        out["msp"][s] = msp_score(probs[s])
        out["energy"][s] = energy_score(logits[s], temp)
        out["maha_pooled"][s] = maha_p.score(sets[s])
        for name, m in ranked.items():
            out[name][s] = m.score(sets[s])
        out["maha_sqrt"][s] = maha_sqrt.score(np.sqrt(np.maximum(sets[s], 0)))
        out["maha_class_r32"][s] = np.min([m.score(sets[s]) for m in per_class], axis=0)
        out["maha_penult"][s] = maha_h.score(hid[s])
        out["rel_maha"][s] = out["maha_pooled"][s] - maha_bg.score(sets[s])
        out["knn_cosine"][s] = knn_cosine_score(sets[s], xtr[:, 0], knn_k)
        out["knn10_cosine"][s] = knn_cosine_score(sets[s], xtr[:, 0], 10)

    def z(name, s):  # standardised on in-distribution validation (what edge.ood deploys for "combined")
        v = out[name]["val"]
        return (out[name][s] - v.mean()) / (v.std() + 1e-12)
    for s in sets:
        out["combined"][s] = z("maha_pooled", s) + z("msp", s)
        out["combined_full"][s] = z("maha_full", s) + z("msp", s)
        out["combined_sqrt"][s] = z("maha_sqrt", s) + z("msp", s)
        out["combined_energy"][s] = z("maha_pooled", s) + z("energy", s)
    layer_scores = {s: [m.score(lay[s][:, a:b]) for m, a, b in zip(per_layer, bounds[:-1], bounds[1:])]
                    for s in sets}
    for s in sets:
        zl = sum((v - lv.mean()) / (lv.std() + 1e-12) for v, lv in zip(layer_scores[s], layer_scores["val"]))
        out["maha_layers"][s] = z("maha_pooled", s) + zl
        out["combined_layers"][s] = out["maha_layers"][s] + z("msp", s)
        out["combined_knn"][s] = z("knn_cosine", s) + z("msp", s)
    acc = float(np.mean(probs["test"].argmax(1) == yte))
    return {"scores": out, "test_accuracy": acc, "temperature": temp, "shrinkage": maha_p.shrinkage,
            "n": {s: int(len(v)) for s, v in sets.items()}}


def evaluate(scores: dict, flag_rate: float) -> dict:
    t = threshold_for_rate(scores["val"], flag_rate)
    return {"threshold": t, "foreign_flagged": float(np.mean(scores["foreign"] > t)),
            "in_dist_flagged": float(np.mean(scores["test"] > t)),
            "auroc": auroc(scores["test"], scores["foreign"])}


def summarise(folds: list[dict]) -> dict:
    out = {}
    for s in SCORES:
        rows = [f["metrics"][s] for f in folds]
        out[s] = {}
        for m in ("foreign_flagged", "in_dist_flagged", "auroc"):
            vals = np.array([r[m] for r in rows])
            worst = vals.max() if m == "in_dist_flagged" else vals.min()
            out[s][m] = {"mean": float(vals.mean()), "worst": float(worst)}
    return out


def markdown(report: dict) -> str:
    lines = [f"Leave-one-class-out on {report['data']} (frozen Lite0 {report['image_size']} px features + the "
             f"recipe's head; threshold flags {report['flag_rate']:.0%} of in-distribution validation)", "",
             "| score | foreign flagged, mean | worst fold | in-dist test flagged, mean | worst fold | AUROC mean |"
             " worst |", "|---|---|---|---|---|---|---|"]
    for s, m in report["summary"].items():
        ff, fi, au = m["foreign_flagged"], m["in_dist_flagged"], m["auroc"]
        lines.append(f"| {s} | {ff['mean']:.1%} | {ff['worst']:.1%} | {fi['mean']:.1%} | {fi['worst']:.1%} | "
                     f"{au['mean']:.3f} | {au['worst']:.3f} |")
    lines += ["", "| held-out class | 4-class test acc. | " + " | ".join(f"{s} foreign / AUROC" for s in SCORES)
              + " |", "|---" * (len(SCORES) + 2) + "|"]
    for f in report["folds"]:
        lines.append(f"| {f['held_out']} | {f['test_accuracy']:.1%} | " + " | ".join(
            f"{f['metrics'][s]['foreign_flagged']:.1%} / {f['metrics'][s]['auroc']:.3f}" for s in SCORES) + " |")
    return "\n".join(lines) + "\n"


def run(data: str, out: Path, image_size: int = 288, views: int = 4, seed: int = 42, flag_rate: float = 0.05,
        cache_dir: Path | None = None, head_epochs: int | None = None) -> dict:
    from trashcam.edge.bundle import atomic_write_bytes, atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    feat_path = out / f"features-{image_size}px-{views}v-seed{seed}.npz"
    t0 = time.perf_counter()
    if feat_path.is_file():
        f = dict(np.load(feat_path))
    else:
        f = extract_features(data, image_size, views, seed, cache_dir or out / ".cache")
        tmp = feat_path.with_suffix(".tmp.npz")
        np.savez(tmp, **f)
        os.replace(tmp, feat_path)
    t_feat = time.perf_counter() - t0
    folds = []
    for k, name in enumerate(f["classes"]):
        t1 = time.perf_counter()
        r = fold_scores(f, k, seed, head_epochs=head_epochs)
        metrics = {s: evaluate(v, flag_rate) for s, v in r["scores"].items()}
        folds.append({"held_out": str(name), "test_accuracy": r["test_accuracy"], "temperature": r["temperature"],
                      "shrinkage": r["shrinkage"], "n": r["n"], "metrics": metrics,
                      "seconds": round(time.perf_counter() - t1, 1)})
        print(f"fold {name}: " + ", ".join(f"{s} {m['foreign_flagged']:.1%}/{m['auroc']:.3f}"
                                          for s, m in metrics.items()), flush=True)
    report = {"data": data, "image_size": image_size, "views": views, "seed": seed, "flag_rate": flag_rate,
              "feature_seconds": round(t_feat, 1), "folds": folds, "summary": summarise(folds),
              "note": "frozen-feature head models (stage 1 of the default recipe), not the fine-tuned default"}
    atomic_write_json(out / "open_set.json", report)
    atomic_write_bytes(out / "open_set.md", markdown(report).encode())
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m trashcam.benchmarks.open_set", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="DIR/<class>/*.jpg (at least 3 classes)")
    p.add_argument("--out", default="runs/open_set", help="folder for features, open_set.json and open_set.md")
    p.add_argument("--image-size", type=int, default=288)
    p.add_argument("--views", type=int, default=4, help="feature views of each train image (1 = plain only)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--flag-rate", type=float, default=0.05, help="share of in-distribution validation flagged")
    a = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    from trashcam.edge.dataset import DatasetError
    try:
        report = run(a.data, Path(a.out), a.image_size, a.views, a.seed, a.flag_rate)
    except (DatasetError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
