"""One decision per item: collect an item's frames, pick its best ones, average their calibrated probabilities.

With a presence gate (cameras, videos) an item is the stretch of frames between an arrival and a departure;
without one (folders, stdin paths) every image is one item. The decision comes from the `best` frames with the
most confident top class (an item half in view, or blurred while it falls, is the least sure of itself), and
their calibrated probabilities are averaged: a class is named only when the average clears the calibrated
threshold, otherwise the item is `uncertain`. The decision is made when the item leaves, or with
`decide="settled"` as soon as `best` frames of it are in (a tray that tilts the item away). Each decision is an
`Item`; `ItemTracker.counts` counts them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .presence import ARRIVE, LEAVE, RELEARN, TIMEOUT, PresenceGate
from .smoothing import UNCERTAIN

# When an item in view is decided: when it leaves (a chute, a conveyor: every frame of it counts), or as soon
# as `best` frames of it are in (a tray that tilts: the flap must move while the item is still there).
DECIDE = ("leave", "settled")


@dataclass
class Item:
    id: str
    seq: int
    label: str  # a class or UNCERTAIN
    confidence: float
    probs: dict[str, float]
    frames: int  # frames the item was seen in
    frames_used: int  # best frames the decision was made from
    start: float
    end: float
    reason: str  # left | settled | timeout | light | end | image
    bundle_sha256: str = ""
    variant: str = ""
    source: str = ""
    thumbnail: np.ndarray | None = field(default=None, repr=False)  # the best frame (RGB), for the web page

    @property
    def timeout(self) -> bool:
        return self.reason == "timeout"

    def to_dict(self) -> dict[str, Any]:
        return {"event": "item", "t": self.end, "id": self.id, "seq": self.seq, "label": self.label,
                "confidence": round(self.confidence, 6), "probs": {k: round(v, 6) for k, v in self.probs.items()},
                "frames": self.frames, "frames_used": self.frames_used, "start": self.start, "end": self.end,
                "reason": self.reason, "timeout": self.timeout, "bundle_sha256": self.bundle_sha256,
                "variant": self.variant, "source": self.source}


class ItemTracker:
    """`update(image, probs, t, source)` per classified frame; returns the finished `Item` or None.
    `finish(t)` closes an item still open when the source ends."""

    def __init__(self, labels: list[str], min_confidence: float, gate: PresenceGate | None = None,
                 best: int = 5, bundle_sha256: str = "", variant: str = "", run_id: str | None = None,
                 decide: str = "leave"):
        if best < 1:
            raise ValueError("best frames per item must be >= 1")
        if decide not in DECIDE:
            raise ValueError(f"decide {decide!r}: use one of {', '.join(DECIDE)}")
        self.decide = decide
        self.labels, self.min_confidence, self.gate, self.best = list(labels), float(min_confidence), gate, best
        self.bundle_sha256, self.variant = bundle_sha256, variant
        self.run_id = run_id or time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.counts: dict[str, int] = {k: 0 for k in [*self.labels, UNCERTAIN]}
        self.items = self.timeouts = 0
        # (top confidence, probs, image, the classifier's own per-frame `uncertain` flag)
        self._frames: list[tuple[float, np.ndarray, np.ndarray | None, bool]] = []
        self._start = 0.0
        self._source = ""
        self._dropped = 0  # frames of the open item no longer kept (not among its best)
        self._decided = False  # the item in view was decided already (settled, or timed out)

    @property
    def open(self) -> bool:
        return bool(self._frames) or (self.gate is not None and self.gate.state == "item")

    @property
    def state(self) -> str:
        return self.gate.state if self.gate is not None else "per-image"

    def update(self, image: np.ndarray | None, probs: np.ndarray, t: float, source: str = "",
               uncertain: bool = False) -> Item | None:
        """`uncertain`: the classifier's verdict on this frame (its uncertainty score, when the bundle has
        one); an item whose best frames are mostly uncertain is uncertain, whatever their average says."""
        probs = np.asarray(probs, dtype=np.float64)
        if self.gate is None:
            self._add(probs, image, t, source, uncertain)
            return self._close(t, "image")
        event = self.gate.update(image, t)
        if event == ARRIVE:
            self._frames, self._dropped, self._decided = [], 0, False
        # Frames that already look empty (the gate counting down to `leave`) show the scene, not the item.
        present = self.gate.state in ("item", "stuck") and self.gate.fraction > self.gate.cfg.leave
        if (present or event == ARRIVE) and not self._decided:
            self._add(probs, image, t, source, uncertain)
        if (self.decide == "settled" and present and not self._decided
                and len(self._frames) + self._dropped >= self.best):
            self._decided = True  # decided while the item is still in view; its departure is not a second one
            return self._close(t, "settled")
        if event in (LEAVE, TIMEOUT, RELEARN) and self._decided:
            self._decided = event == TIMEOUT  # a stuck item stays decided until it leaves
            return None
        if event == LEAVE:
            return self._close(t, "left")
        if event == TIMEOUT:
            self._decided = True
            return self._close(t, "timeout")
        if event == RELEARN and self._frames:
            return self._close(t, "light")
        return None

    def finish(self, t: float | None = None) -> Item | None:
        """The source ended: decide an item still in view from the frames it had."""
        return self._close(time.time() if t is None else t, "end") if self._frames else None

    def _add(self, probs: np.ndarray, image: np.ndarray | None, t: float, source: str, uncertain: bool) -> None:
        if not self._frames:
            self._start, self._source = t, source
        # Keep only the best frames' images: a long item must not hold hundreds of frames in memory.
        self._frames.append((float(probs.max()), probs, image, bool(uncertain)))
        if len(self._frames) > self.best:
            self._frames.pop(min(range(len(self._frames)), key=lambda i: self._frames[i][0]))
            self._dropped += 1

    def _close(self, t: float, reason: str) -> Item:
        frames = sorted(self._frames, key=lambda f: -f[0])[: self.best]
        seen = len(self._frames) + self._dropped
        mean = np.mean([f[1] for f in frames], axis=0)
        i = int(np.argmax(mean))
        conf = float(mean[i])
        flagged = sum(f[3] for f in frames) * 2 > len(frames)
        label = self.labels[i] if conf >= self.min_confidence and not flagged else UNCERTAIN
        self.items += 1
        self.timeouts += reason == "timeout"
        self.counts[label] += 1
        item = Item(id=f"{self.run_id}-{self.items:06d}", seq=self.items, label=label, confidence=conf,
                    probs={k: float(p) for k, p in zip(self.labels, mean)}, frames=seen, frames_used=len(frames),
                    start=self._start, end=t, reason=reason, bundle_sha256=self.bundle_sha256,
                    variant=self.variant, source=self._source, thumbnail=frames[0][2])
        self._frames, self._dropped = [], 0
        return item

    def summary(self) -> dict[str, Any]:
        uncertain = self.counts[UNCERTAIN]
        return {"items": self.items, "item_counts": dict(self.counts), "item_timeouts": self.timeouts,
                "uncertain_rate": round(uncertain / self.items, 4) if self.items else 0.0}
