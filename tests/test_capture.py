"""Field capture (edge/capture.py): raw frames + sidecars, the rules, the rate limit, the quota, a full disk."""
from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest

from trashcam.edge.capture import CaptureError, CaptureSink

LABELS = ("glass", "metal")


def rec(label="glass", p=0.9, uncertain=False, score=0.1):
    return {"label": label, "probs": {"glass": p, "metal": 1 - p} if label == "glass" else {"glass": 1 - p, "metal": p},
            "confidence": p, "uncertain": uncertain, "score": score}


def img(v=100):
    return np.full((24, 32, 3), v, np.uint8)


class Clock:
    def __init__(self):
        self.t = 1_700_000_000.0

    def __call__(self):
        self.t += 0.5
        return self.t


def test_uncertain_rule_saves_raw_frame_and_sidecar(tmp_path):
    cap = CaptureSink(tmp_path / "cap", "uncertain", bundle_sha256="abc", variant="tflite-int8", clock=Clock())
    assert cap.capture(img(), rec(uncertain=False)) is None
    p = cap.capture(img(200), rec(label="metal", p=0.55, uncertain=True, score=7.5))
    assert p.parent.name == "metal" and p.is_file()
    side = json.loads(p.with_suffix(".json").read_text())
    assert side["score"] == 7.5 and side["probs"]["metal"] == 0.55 and side["bundle_sha256"] == "abc"
    assert side["variant"] == "tflite-int8" and side["label"] == "metal" and "time" in side
    from PIL import Image
    saved = np.asarray(Image.open(p))
    assert saved.shape == (24, 32, 3) and abs(int(saved.mean()) - 200) <= 2  # the raw frame, no banner
    assert not [f for f in (tmp_path / "cap").rglob(".*")]  # no temp files left


def test_low_margin_flip_and_all(tmp_path):
    lm = CaptureSink(tmp_path / "a", "low-margin", margin=0.2, clock=Clock())
    assert lm.capture(img(), rec(p=0.95)) is None and lm.capture(img(), rec(p=0.55)) is not None
    fl = CaptureSink(tmp_path / "b", "flip", clock=Clock())
    got = [fl.capture(img(), rec(label=lab)) is not None for lab in ("glass", "glass", "metal", "metal", "glass")]
    assert got == [False, False, True, False, True]
    al = CaptureSink(tmp_path / "c", "all", clock=Clock())
    assert all(al.capture(img(), rec()) for _ in range(3))


def test_rate_limit_and_quota_delete_oldest_first(tmp_path):
    clock = Clock()
    cap = CaptureSink(tmp_path / "cap", "all", rate=3, clock=clock)
    saved = [cap.capture(img(), rec()) for _ in range(5)]
    assert sum(p is not None for p in saved) == 3 and cap.counts["rate_limited"] == 2
    clock.t += 61
    assert cap.capture(img(), rec()) is not None  # the minute has passed

    noise = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)  # ~20 kB a JPEG
    q = CaptureSink(tmp_path / "q", "all", quota_mb=0.05, rate=1000, clock=Clock())
    paths = [q.capture(noise, rec()) for _ in range(6)]
    left = sorted(p.name for p in (tmp_path / "q").rglob("*.jpg"))
    assert q.counts["deleted_for_quota"] >= 3
    assert left == sorted(p.name for p in paths[-len(left):])  # the newest survive
    assert sum(f.stat().st_size for f in (tmp_path / "q").rglob("*") if f.is_file()) <= 0.05 * 2**20


def test_full_disk_warns_once_and_stops(tmp_path, monkeypatch, capsys):
    import trashcam.edge.capture as capture_mod
    cap = CaptureSink(tmp_path / "cap", "all", clock=Clock())

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(capture_mod, "atomic_write_bytes", full)
    assert cap.capture(img(), rec()) is None and cap.capture(img(), rec()) is None
    err = capsys.readouterr().err
    assert err.count("capture stopped") == 1 and "No space left" in err
    assert cap.stopped and cap.counts["failed"] == 1
    summary = {}
    cap.close(summary)
    assert summary["capture"]["stopped"] is True


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_unwritable_folder_is_a_startup_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(CaptureError, match="not writable"):
            CaptureSink(ro / "cap")
    finally:
        ro.chmod(0o700)


def test_folder_under_a_file_is_a_startup_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CaptureError, match="not writable"):
        CaptureSink(tmp_path / "file" / "cap")
    with pytest.raises(CaptureError, match="capture-when"):
        CaptureSink(tmp_path / "ok", "sometimes")


def test_labels_become_safe_folder_names(tmp_path):
    cap = CaptureSink(tmp_path / "cap", "all", clock=Clock())
    p = cap.capture(img(), rec(label="../evil"))
    assert p.parent.parent == (tmp_path / "cap").resolve()


def test_edge_run_refuses_an_unwritable_capture_folder_at_start(tiny_tflite_bundle, tmp_path, capsys):
    from trashcam.edge.cli import main
    frames = tmp_path / "frames"
    frames.mkdir()
    from PIL import Image
    Image.fromarray(img()).save(frames / "a.jpg")
    (tmp_path / "file").write_text("x")
    rc = main([str(tiny_tflite_bundle), "--source", str(frames), "--capture", str(tmp_path / "file" / "cap"),
               "--quiet"])
    assert rc == 2 and "not writable" in capsys.readouterr().err
