"""The camera side of edge-run: picamera2's YUV420 conversion and source (against a fake camera), latest-frame
grabbing that drops stale frames, and stall detection for a wedged driver."""
from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from conftest import read_jsonl, synth_image


def to_padded_i420(rgb: np.ndarray, stride: int) -> np.ndarray:
    """RGB -> full-range (sYCC/JPEG) YUV420 laid out as picamera2 returns it: (h*3/2) x stride, I420 planes."""
    import cv2
    h, w = rgb.shape[:2]
    ycrcb = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    y = ycrcb[..., 0]
    v, u = (cv2.resize(ycrcb[..., k], (w // 2, h // 2), interpolation=cv2.INTER_AREA) for k in (1, 2))
    out = np.zeros((h * 3 // 2, stride), np.uint8)
    out[:h, :w] = y
    planes = out[h:].reshape(-1)
    q = (h // 2) * (stride // 2)
    for k, plane in enumerate((u, v)):
        padded = np.zeros((h // 2, stride // 2), np.uint8)
        padded[:, : w // 2] = plane
        planes[k * q:(k + 1) * q] = padded.reshape(-1)
    return out


def test_yuv420_full_range_conversion_with_and_without_opencv(monkeypatch):
    cv2 = pytest.importorskip("cv2")
    from trashcam.edge import picamera
    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    rgb = cv2.resize(cv2.resize(rgb, (16, 12)), (64, 48))  # smooth, so chroma subsampling loses little
    rgb[:8] = 0
    rgb[8:16] = 255  # full black and white must survive: a studio-range decode would clip or grey them
    yuv = to_padded_i420(rgb, stride=96)  # stride > width, as the ISP pads rows
    with_cv = picamera.yuv420_to_rgb(yuv, 64)
    monkeypatch.setitem(sys.modules, "cv2", None)
    without = picamera.yuv420_to_rgb(yuv, 64)
    assert with_cv.shape == without.shape == (48, 64, 3)
    assert np.abs(with_cv.astype(int) - rgb).mean() < 6  # what is left is chroma subsampling
    assert np.abs(with_cv[:8].astype(int)).max() <= 1 and with_cv[8:16].min() >= 254
    assert np.abs(without.astype(int) - with_cv).max() <= 2
class FakePicamera2:
    """Just enough of picamera2's API: a configured lores YUV420 + main RGB888 ("BGR in memory") stream pair,
    capture_request().make_array(name), and a camera that drops out on the 3rd capture (and once on reopen)."""

    scene: np.ndarray = None  # RGB, what the camera sees
    opens = 0
    captures = 0

    def __init__(self, num=0):
        FakePicamera2.opens += 1
        if FakePicamera2.opens == 2:
            raise RuntimeError("Camera frontend has timed out!")  # the first reopen fails too
        self.camera_config = None

    def create_preview_configuration(self, main, lores, buffer_count=4, **kw):
        return {"main": dict(main), "lores": dict(lores)}

    def configure(self, cfg):
        assert cfg["lores"]["format"] == "YUV420"
        cfg["lores"]["stride"] = cfg["lores"]["size"][0] + 32  # padded rows, as on the real ISP
        self.camera_config = cfg

    def start(self):
        pass

    def stop(self):
        pass

    def close(self):
        pass

    def capture_request(self):
        FakePicamera2.captures += 1
        if FakePicamera2.captures == 3:
            raise RuntimeError("Camera frontend has timed out!")
        return _FakeRequest(self.camera_config, self.scene)


class _FakeRequest:
    def __init__(self, cfg, scene):
        self.cfg, self.scene, self.released = cfg, scene, False

    def make_array(self, name):
        import cv2
        w, h = self.cfg[name]["size"]
        img = cv2.resize(self.scene, (w, h), interpolation=cv2.INTER_AREA)
        if name == "main":
            return np.ascontiguousarray(img[..., ::-1])  # RGB888 is B, G, R in memory
        return to_padded_i420(img, self.cfg[name]["stride"])

    def release(self):
        self.released = True


def test_picamera2_source_with_a_fake_camera_reopens_and_classifies(tiny_tflite_bundle, monkeypatch, tmp_path):
    pytest.importorskip("cv2")
    import types
    from trashcam.edge import picamera, sources
    from trashcam.edge.config import RunConfig
    from trashcam.edge.live import LiveRunner
    scene = np.kron(synth_image(0, np.random.default_rng(1), (24, 32)), np.ones((20, 20, 1), np.uint8))  # red
    FakePicamera2.scene, FakePicamera2.opens, FakePicamera2.captures = scene, 0, 0
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakePicamera2))
    monkeypatch.setattr(sources.ReopeningSource, "initial_backoff", 0.01)
    log = tmp_path / "cam.jsonl"
    runner = LiveRunner(RunConfig(bundle=str(tiny_tflite_bundle), source="auto", max_frames=6, quiet=True,
                                  log=str(log), log_mode="frames", stable=1))
    from trashcam.edge.grabber import LatestFrameSource
    assert isinstance(runner.source, LatestFrameSource)  # a live camera: classify the newest frame
    assert isinstance(runner.source.inner, picamera.Picamera2Source)
    assert runner.source.inner.lores_size == (32, 32)  # the model's input size: the ISP does the resize
    previews = []
    runner.sinks.append(type("Grab", (), {"frame": lambda s, f, r: previews.append(f.preview),
                                          "skip": lambda s, f: None, "close": lambda s, x: None})())
    summary = runner.run()
    assert summary["frames"] == 6 and summary["reopens"] == 1 and FakePicamera2.opens == 3
    frames = [e for e in read_jsonl(log) if e["event"] == "frame"]
    assert {e["label"] for e in frames} == {"red"} and frames[-1]["decision"] == "red"
    assert previews[0].shape == (480, 640, 3)
    assert np.abs(previews[0].astype(int).mean((0, 1)) - scene.mean((0, 1))).max() < 3  # RGB, not BGR


def test_latest_frame_grabber_drops_stale_frames_but_never_bad_ones():
    import threading
    from trashcam.edge.grabber import LatestFrameSource
    from trashcam.edge.sources import ReopeningSource

    class Ticker(ReopeningSource):  # a 200 fps camera whose every 10th frame is empty
        name = "ticker"

        def _open(self):
            self.n = 0

        def _read(self):
            time.sleep(0.005)
            self.n += 1
            return None if self.n % 10 == 0 else np.full((4, 4, 3), self.n % 256, np.uint8)

    src = LatestFrameSource(Ticker(threading.Event()))
    got = []
    for f in src:
        got.append(f)
        time.sleep(0.03)  # a classifier 6x slower than the camera
        if len(got) == 12:
            break
    src.close()
    good = [f.index for f in got if f.ok]
    assert good == sorted(good) and min(b - a for a, b in zip(good, good[1:])) >= 2  # always the newest
    assert src.dropped >= 20
    bad = [f.index for f in got if not f.ok]
    assert bad and all((i + 1) % 10 == 0 for i in bad)  # empty frames are all reported, in order
    assert bad == list(range(9, bad[-1] + 1, 10))
    assert not src._thread.is_alive()


def test_a_wedged_camera_driver_raises_instead_of_hanging():
    import threading
    from trashcam.edge.grabber import LatestFrameSource
    from trashcam.edge.sources import ReopeningSource, SourceError

    class Wedged(ReopeningSource):
        name = "wedged"

        def _open(self):
            self.n = 0

        def _read(self):
            self.n += 1
            if self.n > 3:
                time.sleep(3)  # a driver call that does not come back
            return np.zeros((4, 4, 3), np.uint8)

    src = LatestFrameSource(Wedged(threading.Event()), stall_timeout=0.5)
    got, t0 = [], time.monotonic()
    with pytest.raises(SourceError, match="no progress"):
        for f in src:
            got.append(f)
    assert 1 <= len(got) <= 3 and time.monotonic() - t0 < 2.5
    src.close()
