"""Throughput mode (edge/streams.py): several interpreters at once, results in order, the same answers."""
from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest

from trashcam.edge.sources import Frame, ImageFolderSource
from trashcam.edge.streams import StreamPool, plan_streams


def test_plan_streams_one_single_thread_interpreter_per_thread_except_for_cameras():
    assert plan_streams(None, 4, paced=False) == (4, 1)
    assert plan_streams(None, 4, paced=True) == (1, 4)
    assert plan_streams(None, 1, paced=False) == (1, 1)
    assert plan_streams(2, 4, paced=False) == (2, 2) and plan_streams(2, 4, paced=True) == (2, 2)
    assert plan_streams(8, 2, paced=False) == (2, 1)  # never more interpreters than threads
    assert plan_streams(1, 4, paced=False) == (1, 4)


class SlowEngine:
    """Answers with its own id after a pause that releases the GIL, and records how many ran at once."""

    def __init__(self, i: int, state: dict):
        self.i, self.state = i, state

    def __call__(self, frame):
        with self.state["lock"]:
            self.state["running"] += 1
            self.state["peak"] = max(self.state["peak"], self.state["running"])
        time.sleep(0.01 if frame.index % 3 else 0.03)  # uneven work: later frames finish first
        with self.state["lock"]:
            self.state["running"] -= 1
        return frame.index, self.i


def _frames(n: int, bad=()):
    return [Frame(i, 0.0, None if i in bad else np.zeros((2, 2, 3), np.uint8), error="bad" if i in bad else "")
            for i in range(n)]


def test_pool_keeps_order_passes_unreadable_frames_and_runs_engines_at_once():
    state = {"lock": threading.Lock(), "running": 0, "peak": 0}
    engines = [SlowEngine(i, state) for i in range(3)]
    pool = StreamPool(engines, lambda eng, f: eng(f))
    got = list(pool.map(_frames(20, bad={4, 11})))
    assert [f.index for f, _ in got] == list(range(20))
    assert [r is None for _, r in got] == [i in (4, 11) for i in range(20)]
    assert all(r[0] == f.index for f, r in got if r is not None)  # each result belongs to its frame
    assert state["peak"] == 3 and {r[1] for _, r in got if r} == {0, 1, 2}  # every engine used, all at once


def test_pool_raises_a_workers_error_and_stops_when_the_consumer_does():
    def work(_eng, f):
        if f.index == 5:
            raise OSError("model file gone")
        return f.index

    with pytest.raises(OSError, match="model file gone"):
        list(StreamPool([object(), object()], work).map(_frames(10)))
    seen = []

    def endless():
        i = 0
        while True:
            seen.append(i)
            yield Frame(i, 0.0, np.zeros((2, 2, 3), np.uint8))
            i += 1

    it = StreamPool([object(), object()], lambda _e, f: f.index).map(endless())
    assert [r for _, r in (next(it) for _ in range(3))] == [0, 1, 2]
    it.close()
    assert len(seen) <= 3 + 4  # read at most `depth` (2 x engines) frames ahead


def test_streamed_edge_run_gives_the_serial_answers_in_order(tiny_tflite_bundle, synthetic_dataset, clf):
    from trashcam.edge.config import RunConfig
    from trashcam.edge.live import LiveRunner, format_summary

    files = sorted(str(p) for p in synthetic_dataset.rglob("*.*"))
    seen: list[dict] = []
    runner = LiveRunner(RunConfig(bundle=str(tiny_tflite_bundle), variant="tflite-fp32", source=str(synthetic_dataset),
                                  threads=2, quiet=True, smooth="none"), out=io.StringIO(), err=io.StringIO())
    assert runner.pool is not None and len(runner.pool.engines) == 2 and runner.engine.threads == 1
    assert isinstance(runner.source, ImageFolderSource)  # streams resize themselves: no read-ahead thread
    summary = runner.run(on_frame=seen.append)
    assert summary["streams"] == 2 and summary["frames"] == len(files) == len(seen)
    assert [e["source"] for e in seen] == files
    assert [e["class_index"] for e in seen] == [clf.classify(f).index for f in files]
    assert summary["frame_ratio_mean"] > 0 and "2 streams x 1 thread(s)" in format_summary(summary)

    # a camera keeps one interpreter with every thread, and --streams 1 the read-ahead path
    from trashcam.edge.sources import is_live_source
    assert is_live_source("camera:0") and is_live_source("picamera2") and is_live_source("rtsp://x/y")
    assert not is_live_source(str(synthetic_dataset)) and not is_live_source("-")
    one = LiveRunner(RunConfig(bundle=str(tiny_tflite_bundle), variant="tflite-fp32", source=str(synthetic_dataset),
                               threads=2, streams=1, quiet=True), out=io.StringIO(), err=io.StringIO())
    assert one.pool is None and one.engine.threads == 2
    one.source.close()


@pytest.fixture(scope="module")
def clf(tiny_tflite_bundle):
    from trashcam.edge.runtime import Classifier
    return Classifier(tiny_tflite_bundle, "tflite-fp32", threads=1)
