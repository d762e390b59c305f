"""Linear probe: how good are a backbone's frozen ImageNet features on a dataset, before any training?

Globally pooled backbone features (no augmentation) -> standardised -> logistic regression, on the dataset's
fixed split (train+val to fit, test to score). A correctly ported EfficientNet-Lite0 reaches >= 90 % on
TrashNet-5; a broken port (wrong padding, transposed kernels, wrong input scaling) lands far lower, so this is
the end-to-end check of the weights as well as a baseline for the fine-tuned models.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)

EPILOG = """examples:
  python -m trashcam.benchmarks.linear_probe --data /work/shared/data/trashnet5
  python -m trashcam.benchmarks.linear_probe --data data/sample --json probe.json --image-size 160
  python -m trashcam.benchmarks.linear_probe --data DIR --backbone efficientnet_b0 --weights b0_notop.h5
"""


@dataclass(frozen=True)
class ProbeConfig:
    data: str
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    image_size: int = 224
    batch_size: int = 32
    seed: int = 42
    C: float = 0.0  # inverse L2 strength of the logistic regression; 0 = pick from C_GRID by 5-fold CV on train+val
    max_iter: int = 3000

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ProbeConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def extract_features(model, paths: list[Path], image_size: int, batch_size: int = 32, desc: str = "features",
                     resize: str = "linear") -> tuple[np.ndarray, np.ndarray, float]:
    """Pooled features of each readable image -> (features, indices of the images used, seconds of inference)."""
    from tqdm import tqdm

    from trashcam.edge.bundle import Preprocessing
    from trashcam.edge.images import ImageDecodeError, load_for_model

    pre = Preprocessing(input_size=(image_size, image_size), resize=resize)
    feats, kept, infer_s = [], [], 0.0
    for start in tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch", leave=False):
        batch, idx = [], []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                batch.append(load_for_model(paths[i], pre))
                idx.append(i)
            except ImageDecodeError:
                continue  # counted by the caller as len(paths) - len(kept)
        if not batch:
            continue
        x = np.stack(batch).astype(np.float32)
        t = time.perf_counter()
        feats.append(np.asarray(model(x, training=False)))
        infer_s += time.perf_counter() - t
        kept += idx
    dim = int(model.output.shape[-1])
    return (np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)), np.array(kept, int), infer_s


def run_probe(cfg: ProbeConfig) -> dict:
    """Extract features for the split, fit on train+val, score on test. Returns the report dict."""
    import keras
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from trashcam.edge.dataset import make_split
    from trashcam.train.backbones import get

    split = make_split(cfg.data, seed=cfg.seed)
    spec = get(cfg.backbone)
    weights = None if str(cfg.weights).lower() in ("none", "") else cfg.weights
    backbone = spec.build(input_shape=(cfg.image_size, cfg.image_size, 3), weights=weights)
    model = keras.Model(backbone.input, keras.layers.GlobalAveragePooling2D()(backbone.output))
    model(np.zeros((1, cfg.image_size, cfg.image_size, 3), np.float32), training=False)  # warm-up, not timed

    fit_paths = split.paths("train") + split.paths("val")
    fit_labels = np.concatenate([split.labels("train"), split.labels("val")])
    test_paths, test_labels = split.paths("test"), split.labels("test")
    t0 = time.perf_counter()
    x_fit, k_fit, s_fit = extract_features(model, fit_paths, cfg.image_size, cfg.batch_size, "train+val")
    x_test, k_test, s_test = extract_features(model, test_paths, cfg.image_size, cfg.batch_size, "test")
    wall = time.perf_counter() - t0
    y_fit, y_test = fit_labels[k_fit], test_labels[k_test]
    if len(x_test) == 0 or len(np.unique(y_fit)) < 2:
        raise ValueError(f"{cfg.data}: not enough readable images to fit and test a probe")

    def make(c):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=cfg.max_iter))

    cv_scores = {}
    n_folds = min(5, int(np.bincount(y_fit)[np.unique(y_fit)].min()))
    if cfg.C > 0 or n_folds < 2:
        best_c = cfg.C if cfg.C > 0 else 1.0
    else:  # the test split never influences the choice of C
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        folds = StratifiedKFold(n_folds, shuffle=True, random_state=cfg.seed)
        cv_scores = {c: float(cross_val_score(make(c), x_fit, y_fit, cv=folds).mean()) for c in C_GRID}
        best_c = max(cv_scores, key=cv_scores.get)
    clf = make(best_c)
    clf.fit(x_fit, y_fit)
    pred = clf.predict(x_test)
    n_img = len(x_fit) + len(x_test)
    return {
        "config": cfg.to_dict(),
        "classes": split.classes,
        "split_sha256": split.sha256(),
        "n_fit": int(len(x_fit)), "n_test": int(len(x_test)),
        "skipped_unreadable": int(len(fit_paths) + len(test_paths) - n_img),
        "C": best_c, "cv_accuracy_by_C": cv_scores,
        "test_accuracy": float(np.mean(pred == y_test)),
        "train_accuracy": float(clf.score(x_fit, y_fit)),
        "confusion": confusion_matrix(y_test, pred, labels=list(range(len(split.classes)))).tolist(),
        "feature_dim": int(x_fit.shape[1]),
        "model_img_per_s": n_img / max(s_fit + s_test, 1e-9),  # inference only
        "pipeline_img_per_s": n_img / max(wall, 1e-9),  # decode + resize + inference
        "threads_hint": os.cpu_count(),
    }


def parse_args(argv=None) -> tuple[ProbeConfig, str | None]:
    p = argparse.ArgumentParser(prog="python -m trashcam.benchmarks.linear_probe", description=__doc__,
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="DIR/<class>/*.jpg or DIR/{train,val,test}/<class>/...")
    p.add_argument("--json", default=None, help="write the report (with the resolved config) here")
    p.add_argument("--backbone", default=ProbeConfig.backbone, help="registered backbone name")
    p.add_argument("--weights", default=ProbeConfig.weights, help="imagenet | none | path to a weights file")
    p.add_argument("--image-size", type=int, default=ProbeConfig.image_size)
    p.add_argument("--batch-size", type=int, default=ProbeConfig.batch_size)
    p.add_argument("--seed", type=int, default=ProbeConfig.seed, help="split seed (make_split)")
    p.add_argument("--C", type=float, default=ProbeConfig.C,
                   help="logistic regression inverse regularisation; 0 (default) picks it by 5-fold CV on train+val")
    a = p.parse_args(argv)
    cfg = ProbeConfig(data=a.data, backbone=a.backbone, weights=a.weights, image_size=a.image_size,
                      batch_size=a.batch_size, seed=a.seed, C=a.C)
    return cfg, a.json


def main(argv=None) -> int:
    cfg, out = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    from trashcam.edge.dataset import DatasetError

    try:
        report = run_probe(cfg)
    except (DatasetError, ValueError, FileNotFoundError, RuntimeError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{cfg.backbone} linear probe on {cfg.data}: test accuracy {report['test_accuracy']:.4f} "
          f"({report['n_test']} images), features {report['model_img_per_s']:.1f} img/s "
          f"(with decoding {report['pipeline_img_per_s']:.1f} img/s), skipped {report['skipped_unreadable']}")
    if out:
        from trashcam.edge.bundle import atomic_write_json
        atomic_write_json(Path(out), report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
