"""Temporal smoothing: turn a jittery per-frame prediction into a decision a person (or a flap) can act on.

Two steps. First the last N frames are combined (`ema` of probabilities, `majority` vote, or `none`). Then the
combined top class becomes the *candidate* ("uncertain" when its confidence is under the calibrated threshold),
and the shown decision only switches to a candidate that has held for `stable` consecutive frames.
With a bundle's uncertainty score (edge/ood.py), `score_threshold` is set and the candidate is "uncertain" when
the score, smoothed like the probabilities, is above it instead.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

UNCERTAIN = "uncertain"
MODES = ("ema", "majority", "none")


@dataclass(frozen=True)
class Decision:
    label: str | None  # the shown decision: a class, UNCERTAIN, or None while warming up
    confidence: float  # smoothed confidence of `label` (0 while warming up)
    candidate: str  # what the smoothed frames say now (may not be stable yet)
    candidate_confidence: float
    changed: bool  # True on the frame where `label` switched
    streak: int  # frames the candidate has held

    def to_dict(self) -> dict:
        return {"decision": self.label, "decision_confidence": round(self.confidence, 4),
                "candidate": self.candidate, "candidate_confidence": round(self.candidate_confidence, 4),
                "changed": self.changed, "streak": self.streak}


class Smoother:
    def __init__(self, labels: list[str], mode: str = "ema", window: int = 5, stable: int = 3,
                 min_confidence: float = 0.0):
        if mode not in MODES:
            raise ValueError(f"smoothing mode {mode!r}: use one of {', '.join(MODES)}")
        if window < 1 or stable < 1:
            raise ValueError("smoothing window and stable frames must be >= 1")
        self.labels, self.mode, self.window, self.stable = list(labels), mode, window, stable
        self.min_confidence = float(min_confidence)
        self.alpha = 2.0 / (window + 1)  # the EMA whose centre of mass matches an N-frame average
        self._ema: np.ndarray | None = None
        self._hist: deque[np.ndarray] = deque(maxlen=window)
        self._candidate: str | None = None
        self._streak = 0
        self.label: str | None = None
        self.confidence = 0.0
        self.score_threshold: float | None = None
        self._score: deque[float] = deque(maxlen=1 if mode == "none" else window)
        self._score_ema: float | None = None

    def _smoothed_score(self, score: float) -> float:
        if self.mode == "ema":
            e = self._score_ema
            self._score_ema = score if e is None else self.alpha * score + (1 - self.alpha) * e
            return self._score_ema
        self._score.append(score)
        return float(np.mean(self._score))

    def combine(self, probs: np.ndarray) -> tuple[int, float]:
        """Add one frame's probabilities; return (class index, confidence) over the window."""
        probs = np.asarray(probs, dtype=np.float64)
        if self.mode == "none":
            i = int(np.argmax(probs))
            return i, float(probs[i])
        if self.mode == "ema":
            self._ema = probs.copy() if self._ema is None else self.alpha * probs + (1 - self.alpha) * self._ema
            i = int(np.argmax(self._ema))
            return i, float(self._ema[i])
        self._hist.append(probs)
        votes = Counter(int(np.argmax(p)) for p in self._hist)
        top = max(votes.values())
        # Ties go to the class with more probability mass in the window, not to whichever came first.
        mean = np.mean(self._hist, axis=0)
        i = max((c for c, n in votes.items() if n == top), key=lambda c: mean[c])
        return i, float(mean[i])

    def update(self, probs: np.ndarray, score: float | None = None) -> Decision:
        i, conf = self.combine(probs)
        if self.score_threshold is not None and score is not None:
            uncertain = self._smoothed_score(score) > self.score_threshold
        else:
            uncertain = conf < self.min_confidence
        cand = UNCERTAIN if uncertain else self.labels[i]
        self._streak = self._streak + 1 if cand == self._candidate else 1
        self._candidate = cand
        changed = False
        if self._streak >= self.stable and cand != self.label:
            self.label, changed = cand, True
        if self.label == cand:
            self.confidence = conf
        return Decision(self.label, self.confidence if self.label is not None else 0.0, cand, conf, changed,
                        self._streak)
