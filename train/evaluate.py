"""Evaluation on the saved test split: plain and TTA predictions, metrics, report.md and plots.

Metrics are computed with NumPy here (no scikit-learn needed) so the same function serves edge-bench and the
convert check, and a test can verify them on a hand-made confusion matrix.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from . import augment
from .measured import band_text


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    k = len(labels)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    n = max(1, int(support.sum()))
    return {
        "accuracy": float(tp.sum() / n),
        "macro_f1": float(f1[support > 0].mean()) if (support > 0).any() else 0.0,
        "weighted_f1": float((f1 * support).sum() / n),
        "per_class": {lab: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                            "support": int(support[i])} for i, lab in enumerate(labels)},
        "confusion_matrix": cm.tolist(),
        "images": int(n),
    }


def predict_tta(model, x_u8: np.ndarray, passes: tuple[str, ...], batch: int = 32, verbose: int = 1) -> np.ndarray:
    """Probabilities per TTA pass, shape (P, N, C); the TTA prediction is their mean over P."""
    from tqdm.auto import tqdm
    out = []
    for i in tqdm(range(0, len(x_u8), batch), desc="evaluate (TTA)", unit="batch", disable=verbose < 1, leave=False):
        views = augment.tta_views(x_u8[i:i + batch], passes)
        out.append(np.stack([np.asarray(model.predict(v, batch_size=batch, verbose=0)) for v in views]))
    return np.concatenate(out, axis=1)


def evaluation_passes(passes: tuple[str, ...], tta: bool = True) -> tuple[str, ...]:
    """The passes `evaluate` runs: the TTA passes (or none) with the plain "identity" pass always among them."""
    passes = tuple(passes) if tta else ("identity",)
    return passes if "identity" in passes else ("identity",) + passes


def evaluate(model, x_u8: np.ndarray, y: np.ndarray, labels: list[str], passes: tuple[str, ...], tta: bool = True,
             verbose: int = 1) -> dict[str, Any]:
    passes = evaluation_passes(passes, tta)
    probs = predict_tta(model, x_u8, passes, verbose=verbose)
    plain = probs[passes.index("identity")]
    res = {"plain": classification_metrics(y, plain.argmax(1), labels), "tta_passes": list(passes)}
    if tta and len(passes) > 1:
        res["tta"] = classification_metrics(y, probs.mean(0).argmax(1), labels)
    res["nll_plain"] = float(-np.mean(np.log(np.clip(plain[np.arange(len(y)), y], 1e-7, 1))))
    return res


def plot_history(stages: list, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    offset = 0
    for st in stages:
        h = st.history
        ep = np.arange(offset, offset + len(h["loss"])) + 1
        axes[0].plot(ep, h["loss"], label=f"{st.name} train")
        axes[1].plot(ep, h["accuracy"], label=f"{st.name} train")
        if h.get("val_loss"):  # a stage that trains on the validation images (the refit) is not validated
            axes[0].plot(ep, h["val_loss"], "--", label=f"{st.name} val")
            axes[1].plot(ep, h["val_accuracy"], "--", label=f"{st.name} val")
        offset += len(h["loss"])
    for ax, t in zip(axes, ("loss (train: MixUp + smoothed targets)", "accuracy")):
        ax.set_title(t)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(cm: list[list[int]], labels: list[str], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def printable(text: Any) -> str:
    """A file name (or a message quoting one) as text that encodes anywhere: bytes that are not UTF-8 arrive
    as surrogate escapes (os.fsdecode) and would fail the report's write; they are shown as \\xNN instead."""
    s = str(text)
    try:
        raw = s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file name produced
        raw = s.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % interval of a proportion k/n (Wilson): what the test split's size alone leaves open."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _one_draw(summary: dict[str, Any]) -> str:
    """The caveat every single run's accuracy needs (issue 12): which draw it is, and how wide its interval is."""
    plain = summary["evaluation"]["plain"]
    lo, hi = wilson_interval(round(plain["accuracy"] * plain["images"]), plain["images"])
    num = summary.get("numerics", {})
    how = ", ".join(f"{k} {num[k]}" for k in ("seed", "split_seed", "fold", "TF_ENABLE_ONEDNN_OPTS", "threads")
                    if num.get(k) is not None)
    return (f"This is one training run ({how or 'settings in train_config.json'}): one draw, not the recipe's "
            f"accuracy. The test split's size alone leaves the plain accuracy's 95 % interval at {lo:.1%}-{hi:.1%} "
            "(Wilson); other seeds, another CPU's float rounding (oneDNN, threads) and another split move it "
            "further. `edge-spread` measures the recipe as a distribution (README, \"How accuracy is measured\").")


def report_markdown(summary: dict[str, Any]) -> str:
    ev, labels = summary["evaluation"], summary["labels"]
    best = ev.get("tta", ev["plain"])
    lines = [f"# Training report: {summary['recipe']} ({summary['backbone']})", "",
             f"Test split: {ev['plain']['images']} images. Accuracy plain {ev['plain']['accuracy']:.2%}"
             + (f", TTA ({len(ev['tta_passes'])} passes) {ev['tta']['accuracy']:.2%}" if "tta" in ev else "")
             + f"; weighted F1 {best['weighted_f1']:.3f}, macro F1 {best['macro_f1']:.3f}.", "",
             _one_draw(summary), ""]
    band = band_text(summary)
    lines += ([band, ""] if band else []) + [
        f"| stage | epochs | best epoch | best {summary.get('monitor', 'val_loss')} | seconds | img/s |",
        "|---|---|---|---|---|---|"]
    for st in summary["stages"]:
        monitored = "-" if st["best_val_loss"] is None else f"{st['best_val_loss']:.4f}"
        lines.append(f"| {st['name']} | {st['epochs_run']} | {st['best_epoch'] + 1} | {monitored} "
                     f"| {st['seconds']:.1f} | {st['images_per_s']:.1f} |")
    if any(st.get("info", {}).get("kept") is False for st in summary["stages"]):
        lines += ["", "Stage 2 never beat stage 1's validation loss, so stage 1's weights were kept."]
    if any(st.get("info", {}).get("fixed_length") for st in summary["stages"]):
        lines += ["", "Stage 2 has a fixed length: its last epoch is the model (\"best epoch\" is the last)."]
    if any(st.get("info", {}).get("trained_on") == "train+val" for st in summary["stages"]):
        lines += ["", "Stage 2 also trained on the validation images (--stage2-data train+val), so it was not "
                      "validated, and calibration belongs on images the model never saw."]
    lines += ["", f"Wall time: {summary['seconds']['total']:.1f} s "
                  f"(decode {summary['seconds']['decode']:.1f}, train {summary['seconds']['train']:.1f}, "
                  f"evaluate {summary['seconds']['evaluate']:.1f}).", "",
              "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for lab in labels:
        c = best["per_class"][lab]
        lines.append(f"| {lab} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |")
    skipped = summary.get("skipped", [])
    lines += ["", f"Unreadable images skipped: {len(skipped)}"] + [f"- `{printable(p)}`: {printable(why)}"
                                                                   for p, why in skipped[:50]]
    lines += ["", "![curves](training_curves.png)", "", "![confusion](confusion_matrix.png)", ""]
    return "\n".join(lines)
