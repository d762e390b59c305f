"""Presence gate: is an item in front of the camera? Turns a stream of frames into arrivals and departures.

It learns the empty scene (a small colour image) from a few steady frames at start-up, then measures for each
frame the fraction of pixels that differ from it. Arrival and departure use two thresholds (hysteresis) and a
few consecutive frames each, so noise or a flicker at the threshold never makes two items out of one.

Lighting is not an item. Before comparing, the frame is scaled by the median brightness ratio to the scene, so
a lamp or the camera's exposure moving everything at once cancels out (an item covers less than half the view,
so the median is the background's). A big global change (the ratio moves a lot, or most pixels change in one
step) makes the gate learn the scene again instead of reporting an item. Slow drift is followed while empty.

An item that never leaves is decided anyway after `item_timeout` seconds (`timeout`); the gate then waits for
it to go without counting it again, and learns it as the new scene if it is still there after another timeout.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

LEARNING, EMPTY, ITEM, STUCK = "learning", "empty", "item", "stuck"
ARRIVE, LEAVE, TIMEOUT, RELEARN, LEARNED = "arrive", "leave", "timeout", "relearn", "learned"


@dataclass(frozen=True)
class PresenceConfig:
    size: tuple[int, int] = (64, 48)  # (width, height) of the small image compared; small keeps it ~0.1 ms
    pixel_delta: float = 25.0  # levels a pixel (any channel) must differ by to count as changed
    arrive: float = 0.06  # changed fraction that starts an item ...
    leave: float = 0.02  # ... and the fraction under which it has left (hysteresis)
    arrive_frames: int = 2  # consecutive frames above `arrive` before an item is reported
    leave_frames: int = 3  # consecutive frames under `leave` before it has left
    learn_frames: int = 8  # steady frames that make the empty scene
    item_timeout: float = 30.0  # seconds; an item present longer is decided anyway (flagged `timeout`)
    light_ratio: float = 1.3  # a global brightness ratio beyond this (or 1/this) is a lighting change
    light_fraction: float = 0.8  # ... and so is a step that changes this fraction of pixels at once
    drift: float = 0.05  # how fast the empty scene follows slow changes (EMA weight per frame)

    def __post_init__(self):
        if not 0 < self.leave < self.arrive < 1:
            raise ValueError(f"presence thresholds: need 0 < leave ({self.leave}) < arrive ({self.arrive}) < 1")
        if min(self.arrive_frames, self.leave_frames, self.learn_frames) < 1:
            raise ValueError("presence frame counts must be >= 1")
        if self.item_timeout <= 0:
            raise ValueError(f"item timeout {self.item_timeout}: must be > 0 seconds")


def shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> small float32 colour image: a strided sample, then block means, which average sensor
    noise away at a fraction of a full resize's cost (~0.1 ms for 640x480). Colour, not grey: a red can on grey
    cardboard has about the cardboard's brightness."""
    img = np.asarray(image)
    w, h = size
    step = max(1, min(img.shape[0] // (2 * h), img.shape[1] // (2 * w)))
    sub = img[::step, ::step]
    by, bx = sub.shape[0] // h, sub.shape[1] // w
    if by < 1 or bx < 1:  # smaller than the target: let Pillow interpolate
        return np.asarray(Image.fromarray(img.astype(np.uint8)).resize(size, Image.Resampling.BOX), np.float32)
    sub = sub[: by * h, : bx * w]
    acc = np.zeros((h, w, sub.shape[2]), np.float32)
    for i in range(by):  # strided adds: several times faster than a 5-D reshape().mean()
        for j in range(bx):
            acc += sub[i::by, j::bx]
    return acc / (by * bx)


def _level(img: np.ndarray) -> float:
    """Robust brightness: the median of a sample (an item covers less than half the view)."""
    return float(np.median(img.reshape(-1)[::7]))


def _changed_map(a: np.ndarray, b: np.ndarray, delta: float) -> np.ndarray:
    """HxW: True where any channel differs by more than `delta`."""
    return (np.abs(a - b) > delta).any(axis=-1)


def _changed(a: np.ndarray, b: np.ndarray, delta: float) -> float:
    """The fraction of pixels where any channel differs by more than `delta`."""
    return float(np.count_nonzero(_changed_map(a, b, delta))) / (a.shape[0] * a.shape[1])


class PresenceGate:
    """`update(image, t)` per frame; returns an event (`arrive`, `leave`, `timeout`, `relearn`, `learned`)
    or None. `state` is learning | empty | item | stuck. The clock is the caller's (frame timestamps)."""

    def __init__(self, cfg: PresenceConfig | None = None):
        self.cfg = cfg or PresenceConfig()
        self.state = LEARNING
        self.bg: np.ndarray | None = None
        self._bg_level = 0.0
        self.fraction = 0.0  # changed fraction of the last frame (for /status and tests)
        self.relearns = 0
        self._learn: list[np.ndarray] = []
        self._prev: np.ndarray | None = None
        self._above = self._below = 0
        self._since = 0.0  # when the current item (or stuck period) began

    def _relearn(self) -> None:
        self.state, self._learn, self._above, self._below = LEARNING, [], 0, 0
        self.relearns += 1

    def _difference(self, small: np.ndarray) -> tuple[np.ndarray, float]:
        """(changed pixels after brightness compensation, global brightness ratio)."""
        ratio = (_level(small) + 1.0) / (self._bg_level + 1.0)
        return _changed_map(small, self.bg * ratio, self.cfg.pixel_delta), ratio

    def update(self, image: np.ndarray, t: float) -> str | None:
        c = self.cfg
        small = shrink(image, c.size)
        prev, self._prev = self._prev, small
        if self.state == LEARNING:
            return self._learn_step(small, prev)
        changed, ratio = self._difference(small)
        frac = self.fraction = float(np.count_nonzero(changed)) / changed.size
        step = _changed(small, prev, c.pixel_delta) if prev is not None else 0.0
        if max(ratio, 1 / ratio) > c.light_ratio or step >= c.light_fraction:
            # Most of the view changed at once: the light, not an item. An open item keeps its frames and is
            # closed by the caller on `relearn`; nothing new is counted.
            self._relearn()
            return RELEARN
        if self.state == EMPTY:
            if frac >= c.arrive:
                self._above += 1
                if self._above >= c.arrive_frames:
                    self.state, self._below, self._since = ITEM, 0, t
                    return ARRIVE
            else:
                self._above = 0
                # Follow slow drift only where nothing changed: an item sliding in slowly is not absorbed.
                keep = ~changed
                self.bg[keep] = (1 - c.drift) * self.bg[keep] + c.drift * small[keep]
                self._bg_level = _level(self.bg)
            return None
        # ITEM or STUCK: wait for the view to be empty again
        if frac <= c.leave:
            self._below += 1
            if self._below >= c.leave_frames:
                was, self.state, self._above = self.state, EMPTY, 0
                return LEAVE if was == ITEM else None
        else:
            self._below = 0
        if t - self._since >= c.item_timeout:
            if self.state == ITEM:
                self.state, self._since = STUCK, t
                return TIMEOUT
            self._relearn()  # still there after another timeout: it is part of the scene now
            return RELEARN
        return None

    def _learn_step(self, small: np.ndarray, prev: np.ndarray | None) -> str | None:
        c = self.cfg
        if prev is not None and _changed(small, prev, c.pixel_delta) > c.leave:
            self._learn = []  # not steady yet (exposure settling, a hand in view): start over
        self._learn.append(small)
        if len(self._learn) < c.learn_frames:
            return None
        self.bg = np.median(np.stack(self._learn), axis=0).astype(np.float32)
        self._bg_level = _level(self.bg)
        self.state, self._learn, self._above, self._below = EMPTY, [], 0, 0
        return LEARNED
