"""Presence gate and item tracker on synthetic frames: an empty textured scene, items as coloured blocks,
lighting as a global brightness change. Timestamps are the frame index / 10 (a 10 fps camera), no sleeping."""
from __future__ import annotations

import numpy as np
import pytest

from trashcam.edge.items import ItemTracker
from trashcam.edge.presence import ARRIVE, LEARNED, LEAVE, RELEARN, PresenceConfig, PresenceGate

LABELS = ["glass", "paper", "plastic"]
RNG = np.random.default_rng(0)
SCENE = np.clip(RNG.normal(110, 30, (120, 160, 3)), 0, 255).astype(np.float32)


def frame(item: int | None = None, light: float = 1.0, seed: int = 0) -> np.ndarray:
    img = SCENE * light + np.random.default_rng(seed).normal(0, 4, SCENE.shape)  # sensor noise
    if item is not None:
        colour = [(230, 40, 40), (40, 230, 40), (40, 40, 230)][item]
        img[30:90, 40:110] = colour  # ~22 % of the view
    return np.clip(img, 0, 255).astype(np.uint8)


def probs_for(item: int | None, conf: float = 0.9) -> np.ndarray:
    if item is None:
        return np.full(3, 1 / 3)
    p = np.full(3, (1 - conf) / 2)
    p[item] = conf
    return p


def run(gate_or_tracker, script):
    """script: list of (item or None, light). Returns the events (gate) or items (tracker) with frame numbers."""
    out = []
    for n, (item, light) in enumerate(script):
        t = n / 10
        if isinstance(gate_or_tracker, PresenceGate):
            ev = gate_or_tracker.update(frame(item, light, n), t)
            if ev:
                out.append((n, ev))
        else:
            it = gate_or_tracker.update(frame(item, light, n), probs_for(item), t)
            if it:
                out.append(it)
    return out


def scene(*parts):
    s = []
    for item, n, *light in parts:
        s += [(item, light[0] if light else 1.0)] * n
    return s


def test_empty_scene_learned_and_quiet():
    gate = PresenceGate()
    events = run(gate, scene((None, 60)))
    assert events == [(7, LEARNED)]
    assert gate.state == "empty" and gate.fraction < 0.01


def test_item_arrives_and_leaves_once():
    events = run(PresenceGate(), scene((None, 20), (0, 15), (None, 10)))
    assert [e for _, e in events] == [LEARNED, ARRIVE, LEAVE]
    arrive, leave = events[1][0], events[2][0]
    assert 20 <= arrive <= 22 and 35 <= leave <= 38


def test_an_item_sliding_in_slowly_is_not_learned_into_the_scene():
    gate = PresenceGate()
    events = run(gate, scene((None, 12)))
    for k in range(1, 41):  # a block creeping in from the left edge, 2 px a frame
        img = frame(None, 1.0, 100 + k)
        img[30:90, : 2 * k] = (230, 40, 40)
        if ev := gate.update(img, 2 + k / 10):
            events.append((k, ev))
    assert [e for _, e in events] == [LEARNED, ARRIVE]


def test_two_items_back_to_back_are_two_decisions():
    tracker = ItemTracker(LABELS, 0.5, PresenceGate(), bundle_sha256="abc", variant="fp32", run_id="r")
    items = run(tracker, scene((None, 15), (0, 12), (None, 3), (2, 12), (None, 10)))
    assert [i.label for i in items] == ["glass", "plastic"]
    assert [i.id for i in items] == ["r-000001", "r-000002"]
    first = items[0]
    assert first.reason == "left" and not first.timeout
    assert 10 <= first.frames <= 13 and first.frames_used == 5
    assert first.bundle_sha256 == "abc" and first.variant == "fp32"
    assert first.start == pytest.approx(1.5, abs=0.25) and first.end > first.start
    assert tracker.counts == {"glass": 1, "paper": 0, "plastic": 1, "uncertain": 0}
    d = first.to_dict()
    assert d["event"] == "item" and d["probs"]["glass"] == pytest.approx(0.9)


def test_light_change_is_not_an_item():
    gate = PresenceGate()
    # lights on (x1.6), later dimmed a little (x0.9 of that: drift-level, followed silently)
    events = run(gate, scene((None, 20), (None, 30, 1.6), (None, 30, 1.45)))
    kinds = [e for _, e in events]
    assert ARRIVE not in kinds and kinds.count(RELEARN) == 1 and kinds.count(LEARNED) == 2
    assert gate.state == "empty"
    # and after relearning under the new light, items are still seen
    events = run(gate, scene((None, 5, 1.6), (1, 10, 1.6), (None, 10, 1.6)))
    assert [e for _, e in events if e in (ARRIVE, LEAVE)] == [ARRIVE, LEAVE]


def test_item_that_never_leaves_times_out_once_then_becomes_scene():
    cfg = PresenceConfig(item_timeout=2.0)
    tracker = ItemTracker(LABELS, 0.5, PresenceGate(cfg))
    items = run(tracker, scene((None, 10), (1, 70)))  # 6 s with the item in view
    assert len(items) == 1 and items[0].timeout and items[0].label == "paper"
    assert tracker.timeouts == 1 and tracker.gate.state in ("learning", "empty")
    assert tracker.summary()["item_timeouts"] == 1


def test_settled_decides_while_the_item_is_in_view_and_only_once():
    tracker = ItemTracker(LABELS, 0.5, PresenceGate(PresenceConfig(item_timeout=2.0)), best=4, decide="settled")
    script = scene((None, 12), (1, 10), (None, 5), (0, 40), (None, 5))  # the second item stays 4 s: timeout
    decided_at = []
    for n, (item, light) in enumerate(script):
        it = tracker.update(frame(item, light, n), probs_for(item), n / 10)
        if it:
            decided_at.append((n, it.label, it.reason, it.frames))
    assert [(lbl, why, k) for _, lbl, why, k in decided_at] == [("paper", "settled", 4), ("glass", "settled", 4)]
    assert 12 <= decided_at[0][0] <= 16  # a few frames after it arrived, long before it left (frame 22)
    assert tracker.items == 2 and tracker.timeouts == 0
    with pytest.raises(ValueError, match="decide"):
        ItemTracker(LABELS, 0.5, PresenceGate(), decide="soon")


def test_uncertain_when_best_frames_disagree():
    tracker = ItemTracker(LABELS, 0.6, PresenceGate())
    script = scene((None, 12), (0, 12), (None, 5))
    items = []
    for n, (item, _) in enumerate(script):
        p = probs_for(item, conf=0.5) if item is not None else probs_for(None)
        items += [i for i in [tracker.update(frame(item, 1.0, n), p, n / 10)] if i]
    assert [i.label for i in items] == ["uncertain"]
    assert tracker.summary()["uncertain_rate"] == 1.0


def test_per_image_items_and_open_item_at_end():
    tracker = ItemTracker(LABELS, 0.5)  # folder/stdin: no gate, each image one item
    a = tracker.update(None, probs_for(2), 1.0, "a.jpg")
    b = tracker.update(None, probs_for(0, 0.4), 2.0, "b.jpg")
    assert (a.label, a.reason, a.frames, a.source) == ("plastic", "image", 1, "a.jpg")
    assert b.label == "uncertain" and tracker.counts["uncertain"] == 1
    c = tracker.update(None, probs_for(2, 0.95), 3.0, "c.jpg", uncertain=True)  # the classifier's score says no
    assert c.label == "uncertain" and c.probs["plastic"] == pytest.approx(0.95)
    gated = ItemTracker(LABELS, 0.5, PresenceGate())
    assert run(gated, scene((None, 10), (2, 10))) == []
    last = gated.finish(5.0)
    assert last.reason == "end" and last.label == "plastic"


def test_bad_presence_config_is_refused():
    with pytest.raises(ValueError, match="leave"):
        PresenceConfig(arrive=0.01, leave=0.05)
    with pytest.raises(ValueError, match="timeout"):
        PresenceConfig(item_timeout=0)
