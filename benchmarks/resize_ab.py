"""Does the resize filter change accuracy? Paired A/B of two `Preprocessing.resize` methods on frozen features.

Every image is resized both ways (e.g. "linear", OpenCV's INTER_LINEAR, against "bilinear", PIL's antialiased
filter that bundles used before) and run through the frozen ImageNet backbone once per way. Then, for each seed,
a stratified k-fold partition of all images: per fold, one logistic regression per method on the same training
images, scored on the same test images. Paired per fold, the accuracy differences give a mean and a 95 %
interval (t over all folds of all seeds) instead of one split's draw; per image, how often the two agree.
C is fixed for both arms (not tuned on either), so the comparison has one knob: the resize.

    python -m trashcam.benchmarks.resize_ab --data /work/shared/data/trashnet5 --json runs/resize_ab.json
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def features_by_method(data: str, methods: tuple[str, ...], image_size: int, backbone: str = "efficientnet_lite0"
                       ) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    import keras

    from pathlib import Path

    from trashcam.edge.dataset import scan_classes
    from trashcam.train.backbones import get

    from .linear_probe import extract_features

    classes, items = scan_classes(data)
    paths = [Path(data) / r for r, _ in items]
    labels = [y for _, y in items]
    net = get(backbone).build(input_shape=(image_size, image_size, 3), weights="imagenet")
    model = keras.Model(net.input, keras.layers.GlobalAveragePooling2D()(net.output))
    feats, kept = {}, None
    for m in methods:
        x, k, _ = extract_features(model, paths, image_size, desc=f"features ({m})", resize=m)
        if kept is not None and not np.array_equal(k, kept):
            raise RuntimeError("the methods read different images")
        feats[m], kept = x, k
    return feats, np.asarray(labels)[kept], classes


def paired_folds(feats: dict[str, np.ndarray], y: np.ndarray, seeds: tuple[int, ...], folds: int, c: float) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a, b = list(feats)
    rows, agree, n_test = [], 0, 0
    for seed in seeds:
        for k, (tr, te) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(y, y)):
            pred = {}
            for m, x in feats.items():
                clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
                pred[m] = clf.fit(x[tr], y[tr]).predict(x[te])
            rows.append({"seed": seed, "fold": k + 1, **{m: float(np.mean(p == y[te])) for m, p in pred.items()}})
            agree += int(np.sum(pred[a] == pred[b]))
            n_test += len(te)
            print(f"seed {seed} fold {k + 1}: " + ", ".join(f"{m} {rows[-1][m]:.2%}" for m in feats), flush=True)
    diff = np.array([r[a] - r[b] for r in rows])
    from scipy import stats
    half = float(stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return {"folds": rows,
            "accuracy": {m: {"mean": float(np.mean([r[m] for r in rows])), "min": float(min(r[m] for r in rows)),
                             "max": float(max(r[m] for r in rows))} for m in feats},
            "difference_pp": {"of": f"{a} - {b}", "mean": float(diff.mean() * 100), "ci95": half * 100,
                              "min": float(diff.min() * 100), "max": float(diff.max() * 100)},
            "prediction_agreement": agree / max(n_test, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m trashcam.benchmarks.resize_ab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="DIR/<class>/*.jpg")
    p.add_argument("--methods", default="linear,bilinear", help="two resize methods to compare (A,B)")
    p.add_argument("--image-size", type=int, default=288)
    p.add_argument("--seeds", default="1,2,3", help="one k-fold partition per seed")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--C", type=float, default=0.1, help="logistic regression's inverse L2 strength, both arms")
    p.add_argument("--json", default=None, help="write the result here")
    a = p.parse_args(argv)
    methods = tuple(m.strip() for m in a.methods.split(","))
    if len(methods) != 2:
        p.error("--methods takes exactly two methods, A,B")
    t0 = time.perf_counter()
    feats, y, classes = features_by_method(a.data, methods, a.image_size)
    out = {"data": a.data, "image_size": a.image_size, "methods": methods, "C": a.C, "classes": classes,
           "images": int(len(y)), **paired_folds(feats, y, tuple(int(s) for s in a.seeds.split(",")), a.folds, a.C),
           "seconds": round(time.perf_counter() - t0, 1)}
    d = out["difference_pp"]
    print(f"{d['of']}: {d['mean']:+.2f} pp (95 % CI ±{d['ci95']:.2f}, folds {d['min']:+.2f}..{d['max']:+.2f}); "
          f"predictions agree on {out['prediction_agreement']:.2%} of test images", file=sys.stderr)
    if a.json:
        from trashcam.edge.bundle import atomic_write_json
        atomic_write_json(a.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
