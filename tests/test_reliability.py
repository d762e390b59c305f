"""The review's reliability findings (issue 16), each reproduced first: sinks on a full disk, a log that must not
fill the card, bundles with hostile or broken metadata, concurrent writers, unreadable classes, odd names."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from trashcam.edge.sinks import FrameSaver, JsonlSink
from trashcam.edge.sources import Frame

REC = {"frame": 7, "label": "paper", "confidence": 0.9, "decision": "paper", "decision_confidence": 0.9,
       "fps": 10.0, "frames": 1, "skipped": 0, "changed": True}


def _frame(i: int = 0) -> Frame:
    return Frame(index=i, timestamp=time.time(), image=np.full((24, 32, 3), 100, np.uint8), name=f"f{i}")


class _FullDisk:
    """A file object whose writes fail like a full SD card."""
    closed = False

    def write(self, s):
        raise OSError(28, "No space left on device")

    def flush(self):
        pass

    def fileno(self):
        raise OSError(28, "No space left on device")

    def close(self):
        self.closed = True


def test_jsonl_log_rotates_at_its_size_cap(tmp_path):
    log = tmp_path / "events.jsonl"
    sink = JsonlSink(log, "frames", {"config": {"x": 1}}, max_mb=0.01, keep=2)  # ~10 kB per file
    for i in range(400):
        sink.frame(_frame(i), {**REC, "frame": i})
    sink.close({"frames": 400})
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]  # two old files kept, no more
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 0.01 * 2**20 + 400
        first = json.loads(p.read_text().splitlines()[0])
        assert first["event"] == "start" and first["config"] == {"x": 1}  # each file names the run
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["event"] == "summary" and last["log_rotations"] == sink.rotations > 2


def test_jsonl_write_error_stops_logging_not_classifying(tmp_path):
    warnings = []
    sink = JsonlSink(tmp_path / "e.jsonl", "frames", warn=warnings.append)
    sink.f.close()
    sink.f = _FullDisk()
    for i in range(5):
        sink.frame(_frame(i), REC)  # must not raise
    sink.skip(Frame(index=9, timestamp=0.0, image=None, name="x", error="bad"))
    sink.close({"frames": 5})
    assert sink.errors == 7 and len(warnings) == 1 and "No space left" in warnings[0]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_jsonl_on_dev_full():
    sink = JsonlSink("/dev/full", "frames", warn=lambda m: None)
    sink.frame(_frame(), REC)
    sink.close({})
    assert sink.failed and sink.errors >= 1


def test_frame_saver_leaves_no_truncated_jpeg_on_a_full_disk(tmp_path, monkeypatch):
    """D17: the JPEG was written straight to its final name; a full disk left half of it there."""
    import trashcam.edge.bundle as bundle_mod

    saver = FrameSaver(tmp_path, "frames", warn=lambda m: None)
    saver.frame(_frame(0), {**REC, "frame": 0})
    real_fdopen = os.fdopen

    class Half:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(28, "No space left on device")

        def flush(self):
            pass

    monkeypatch.setattr(bundle_mod.os, "fdopen", lambda fd, mode: Half(real_fdopen(fd, mode)))
    saver.frame(_frame(1), {**REC, "frame": 1})  # must not raise
    monkeypatch.undo()
    assert saver.saved == 1 and saver.errors == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000000_paper.jpg"]  # no partial, no temp file
