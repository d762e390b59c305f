"""Does training on finer labels flag more foreign objects with no foreign images (issue 15)? Each class is split into
`--subclasses` clusters of its frozen ImageNet features, the model learns the clusters as classes, and the prototypes
score is fitted on the pooled features per parent class as the default's is. The idea: a cross-entropy on 4 classes
only needs features that tell the 4 apart and collapses each class's variety, while a held-out class differs from
the others by some of that variety; finer labels keep more of it (the features of 20 k-means clusters, not 4 heaps).

Leave-one-class-out as benchmarks/open_set_tuned.py (same steps: edge-train with the held-out class's clusters
excluded, edge-convert INT8, edge-calibrate), then per fold, from the INT8 outputs (benchmarks/loco_features.py):
the prototypes score fitted on edge-calibrate's train images with PARENT labels (16 centres a class), threshold at
`--flag-rate` of the calibration split (cross-fitted), k-means seeds averaged as in feature_power, and the 4-class
accuracy of the summed cluster probabilities. Compare with `feature_power --powers 1` on a default LOCO run.
Measured at seed 42, 4 clusters a class (docs/cold-start.md): 39.3 % flagged against the default's 36.6 %,
cardboard +21 pp but glass -8 pp, so the default recipe keeps its 4 labels.

    python -m trashcam.benchmarks.subclass_loco --data ../shared/data/trashnet5 --out runs/loco_sub4 --subclasses 4
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np

from .feature_power import fold as power_fold, summarise
from .loco_features import fold_features, loco_parser, pct, write_results
from .open_set_tuned import fold_steps, run_steps

SEP = "__"  # <class>__<cluster>: a parent class name never contains it (checked)


def parent(label: str) -> str:
    return label.split(SEP)[0]


def frozen_features(paths: list[Path], size: int, threads: int) -> tuple[np.ndarray, list[Path]]:
    """Pooled ImageNet features (Lite0, not fine-tuned) of the readable `paths`, and those paths."""
    import keras
    import tensorflow as tf

    from trashcam.calibration.ood import keras_features
    from trashcam.edge.bundle import Preprocessing
    from trashcam.edge.imageset import decode
    from trashcam.train.backbones import get

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    pre = Preprocessing(input_size=(size, size))
    ims = decode(paths, np.zeros(len(paths), np.int64), pre, "subclusters", "decode for clusters")
    body = get("efficientnet_lite0").build(input_shape=(size, size, 3), weights="imagenet")
    model = keras.Model(body.input, keras.layers.GlobalAveragePooling2D()(body.output))
    feats = keras_features(model, ims.x)  # its one pooling layer's output, in batches of 32
    if ims.skipped:
        print(f"subclusters: {len(ims.skipped)} unreadable images skipped")
    return feats, [Path(p) for p in ims.paths]


def make_subclass_data(data: Path, out: Path, k: int, size: int = 288, seed: int = 0, threads: int = 2,
                       features=frozen_features) -> dict[str, int]:
    """out/<class>__<j>/ (symlinks to data/<class>/ files), j < k: spherical k-means of each class's frozen
    features. Returns images per cluster; a finished folder (out/clusters.json) is reused."""
    from trashcam.edge.prototypes import spherical_kmeans
    from trashcam.edge.vectors import unit_rows

    done = out / "clusters.json"
    if done.is_file():
        return json.loads(done.read_text())
    classes = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if any(SEP in c for c in classes):
        raise SystemExit(f"a class name contains {SEP!r}; rename it first")
    paths = [p for c in classes for p in sorted((data / c).iterdir()) if p.is_file()]
    feats, kept = features(paths, size, threads)
    owner = np.array([p.parent.name for p in kept])
    counts = {}
    for c in classes:
        x = unit_rows(feats[owner == c].astype(np.float64))
        near = (x @ spherical_kmeans(x, k, seed=seed).T).argmax(1)
        for j in range(k):
            d = out / f"{c}{SEP}{j}"
            d.mkdir(parents=True, exist_ok=True)
            for p in np.asarray(kept, object)[owner == c][near == j]:
                (d / p.name).unlink(missing_ok=True)
                (d / p.name).symlink_to(p.resolve())
            counts[d.name] = int(np.sum(near == j))
    done.write_text(json.dumps(counts, indent=1))
    return counts


def to_parents(F: dict, labels: list[str]) -> tuple[dict, list[str]]:
    """The fold's cached outputs with cluster labels and probabilities summed into parent classes."""
    parents = sorted({parent(n) for n in labels})
    idx = np.array([parents.index(parent(n)) for n in labels])
    out = dict(F, train_y=idx[F["train_y"]], cal_y=idx[F["cal_y"]])
    for key in ("cal_p", "foreign_p"):
        out[key] = np.stack([F[key][:, idx == j].sum(1) for j in range(len(parents))], axis=1)
    return out, parents


def main(argv=None) -> int:
    from trashcam.edge.bundle import Bundle

    p = loco_parser(__doc__, folds=False)
    p.add_argument("--out", required=True, type=Path, help="clusters under OUT/data, a folder per held-out class")
    p.add_argument("--subclasses", type=int, default=4)
    p.add_argument("--recipe", default="default")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--seeds", type=int, default=5, help="k-means seeds 0..N-1 of the prototypes")
    p.add_argument("--classes", default="", help="held-out classes (default: every class)")
    p.add_argument("--train-args", default="")
    a = p.parse_args(argv)
    data, out = a.data.resolve(), a.out.resolve()
    sub = out / "data"
    counts = make_subclass_data(data, sub, a.subclasses, threads=a.threads)
    classes = [c for c in a.classes.split(",") if c] or sorted({parent(n) for n in counts})
    folds, acc = {}, {}
    for k in classes:
        bundle = out / k / "bundle"
        bundle.parent.mkdir(parents=True, exist_ok=True)
        excluded = ",".join(n for n in counts if parent(n) == k)
        run_steps(fold_steps(sub, excluded, bundle, a.recipe, a.seed, out / ".cache", a.threads,
                             tuple(shlex.split(a.train_args))), bundle, out / k / "log.txt", k)
        F, _ = to_parents(fold_features(bundle, data, k, a.threads), Bundle.load(bundle).labels)
        acc[k] = float(np.mean(F["cal_p"].argmax(1) == F["cal_y"]))
        folds[k] = power_fold(F, (1.0,), tuple(range(a.seeds)), a.flag_rate)
    s = summarise(folds)[0]
    md = [f"# Finer labels ({a.subclasses} clusters a class), LOCO seed {a.seed}, INT8, prototypes on parent classes",
          "", f"foreign flagged {pct(s['foreign_flagged_mean'])} (k-means seeds: "
          + " / ".join(f"{100 * v:.1f}" for v in s["by_seed"]) + f"), worst {pct(s['worst_fold'])}, "
          f"in-distribution {pct(s['in_dist_flagged_mean'])}, AUROC {s['auroc_mean']:.3f}", "",
          *[f"- {k}: {pct(s['per_fold'][k])} flagged, 4-class accuracy {pct(acc[k])}" for k in folds]]
    write_results(out, "subclass_loco", {"counts": counts, "folds": folds, "summary": s, "accuracy": acc},
                  "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
