"""edge-run end to end: the CLI over folders, a video and stdin agrees with the Python API; JSONL, the HTTP
view, SIGTERM, skipped frames, flat RSS, and clear failures at start. Parts are tested in test_edge_parts.py."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import flat_image_folder, read_jsonl, run_cli, serving_url, synth_image
from trashcam.edge.bundle import Bundle
from trashcam.edge.runtime import Classifier

CLI = ("-m", "trashcam.edge.cli")


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory, synthetic_dataset) -> Path:
    """12 good images (4 per class) plus a corrupt and an empty .jpg, which must be skipped and counted."""
    d = flat_image_folder(tmp_path_factory.mktemp("frames"), synthetic_dataset, 4)
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 3)
    (d / "empty.jpg").write_bytes(b"")
    return d


@pytest.fixture(scope="module")
def clf(tiny_tflite_bundle):
    return Classifier(tiny_tflite_bundle, "tflite-fp32", threads=1)


def test_folder_predictions_match_python_api_and_skips_are_counted(tiny_tflite_bundle, frames_dir, clf, tmp_path):
    log = tmp_path / "frames.jsonl"
    p = run_cli(*CLI, str(tiny_tflite_bundle), "--source", str(frames_dir), "--threads", "1", "--quiet",
                "--smooth", "none", "--stable", "1", "--log", str(log), "--log-mode", "frames",
                "--save-frames", str(tmp_path / "shots"), check=True)
    assert "summary: 12 frames classified, 2 skipped" in p.stdout
    events = read_jsonl(log)
    assert events[0]["event"] == "start" and events[0]["config"]["variant"] == "tflite-fp32"
    frames = [e for e in events if e["event"] == "frame"]
    skips = [e for e in events if e["event"] == "skip"]
    assert {Path(s["source"]).name for s in skips} == {"corrupt.jpg", "empty.jpg"}
    assert len(frames) == 12
    for e in frames:
        ref = clf.classify(e["source"])
        assert e["label"] == ref.label
        assert abs(e["confidence"] - ref.confidence) < 1e-5
        assert e["decision"] == ref.label  # no smoothing, stable=1: the decision is the frame's label
        assert e["label"] == Path(e["source"]).name.split("_")[0]  # and the tiny model is right
        assert e["invoke_ms"] > 0 and e["e2e_ms"] >= e["invoke_ms"]
    summary = events[-1]
    assert summary["event"] == "summary" and summary["frames"] == 12 and summary["skipped"] == 2
    assert summary["stopped_by"] == "end" and summary["overhead_ratio_p50"] >= 1.0
    saved = sorted(f.name for f in (tmp_path / "shots").glob("*.jpg"))
    assert len(saved) == 3 and json.loads((tmp_path / "shots" / "run_config.json").read_text())["variant"]


def write_video(path: Path, n_per_class: int = 8, size=(64, 48)) -> list[int]:
    cv2 = pytest.importorskip("cv2")
    w, h = size
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h))
    assert vw.isOpened()
    rng, classes = np.random.default_rng(3), []
    for cls in (0, 1, 2):  # red, green, blue blocks of frames
        for _ in range(n_per_class):
            vw.write(np.ascontiguousarray(synth_image(cls, rng, (h, w))[..., ::-1]))
            classes.append(cls)
    vw.release()
    return classes


def test_video_file_matches_python_api_with_decision_changes(tiny_tflite_bundle, clf, tmp_path):
    cv2 = pytest.importorskip("cv2")
    video = tmp_path / "clip.avi"
    truth = write_video(video)
    log = tmp_path / "v.jsonl"
    run_cli(*CLI, str(tiny_tflite_bundle), "--source", str(video), "--threads", "1", "--quiet",
            "--log", str(log), "--log-mode", "frames", "--smooth", "majority", "--window", "3", "--stable", "2",
            check=True)
    frames = [e for e in read_jsonl(log) if e["event"] == "frame"]
    assert len(frames) == len(truth)
    cap = cv2.VideoCapture(str(video))
    for e in frames:
        ok, bgr = cap.read()
        assert ok
        ref = clf.classify(np.ascontiguousarray(bgr[..., ::-1]))
        assert e["label"] == ref.label and abs(e["confidence"] - ref.confidence) < 1e-5
    names = {0: "red", 1: "green", 2: "blue"}
    assert [e["label"] for e in frames] == [names[c] for c in truth]
    # Majority of 3 flips one frame after a class boundary (8, 16), then must hold 2 frames: shown 2 late.
    changes = [(e["frame"], e["decision"]) for e in frames if e["changed"]]
    assert changes == [(1, "red"), (10, "green"), (18, "blue")]


def test_stdin_paths(tiny_tflite_bundle, frames_dir, clf, tmp_path):
    log = tmp_path / "s.jsonl"
    files = sorted(str(f) for f in frames_dir.glob("*.jpg") if f.stat().st_size > 100)[:5]
    p = run_cli(*CLI, str(tiny_tflite_bundle), "--source", "-", "--quiet", "--log", str(log),
                "--log-mode", "frames", input="\n".join(files + ["/nonexistent.jpg"]) + "\n", check=True)
    frames = [e for e in read_jsonl(log) if e["event"] == "frame"]
    assert [e["label"] for e in frames] == [clf.classify(f).label for f in files]
    assert "5 frames classified, 1 skipped" in p.stdout


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def test_http_status_and_mjpeg_then_clean_sigterm(tiny_tflite_bundle, frames_dir, tmp_path):
    log = tmp_path / "events.jsonl"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, *CLI, str(tiny_tflite_bundle), "--source", str(frames_dir), "--loop",
                             "--serve", "0", "--max-fps", "40", "--quiet", "--log", str(log), "--duration", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url, t_end = serving_url(proc), time.time() + 60
        status = {}
        # until the corrupt and empty files (5th and 6th) have gone by: SIGTERM before them was a race
        while (status.get("state") != "running" or status.get("frames", 0) < 2 or status.get("skipped", 0) < 2) \
                and time.time() < t_end:
            status = json.loads(_get(url + "status"))  # fps needs two frames: 0.0 until the second one
            time.sleep(0.05)
        assert status["variant"] == "tflite-fp32" and status["last"]["label"] in ("red", "green", "blue")
        assert status["fps"] > 0 and status["frames"] >= 1 and "skipped" in status
        assert b"/stream.mjpg" in _get(url)
        with urllib.request.urlopen(url + "stream.mjpg", timeout=5) as r:
            assert "multipart/x-mixed-replace" in r.headers["Content-Type"]
            buf = b""
            while buf.count(b"--trashcamframe") < 3:
                buf += r.read1(65536)
        part = buf.split(b"--trashcamframe")[1]
        jpeg = part[part.index(b"\r\n\r\n") + 4:].rstrip(b"\r\n")
        img = Image.open(BytesIO(jpeg))
        img.load()
        assert img.format == "JPEG" and img.width >= 160  # tiny frames are enlarged so the label is legible
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "summary:" in out and "stopped by signal" in out
    events = read_jsonl(log)
    assert events[-1]["event"] == "summary" and events[-1]["stopped_by"] == "signal"
    assert events[-1]["skipped"] >= 2  # the corrupt and empty files, once per loop


def test_rss_flat_over_looping_folder_and_duration(tiny_tflite_bundle, frames_dir, tmp_path):
    log = tmp_path / "soak.jsonl"
    run_cli(*CLI, str(tiny_tflite_bundle), "--source", str(frames_dir), "--loop", "--max-frames", "4000",
            "--quiet", "--log", str(log), "--save-frames", str(tmp_path / "shots"), check=True)
    s = read_jsonl(log)[-1]
    assert s["read"] == 4000 and s["stopped_by"] == "max_frames"
    order = sorted(f.name for f in frames_dir.iterdir())  # the source's order, repeated
    assert s["skipped"] == sum(order[i % len(order)] in ("corrupt.jpg", "empty.jpg") for i in range(4000))
    growth_mib = (s["rss_end_kb"] - s["rss_start_kb"]) / 1024
    assert growth_mib < 16, f"RSS grew {growth_mib:.1f} MiB over 4000 frames"

    p = run_cli(*CLI, str(tiny_tflite_bundle), "--source", str(frames_dir), "--loop", "--duration", "1.5",
                "--quiet", "--max-fps", "100", check=True)
    m = re.search(r"(\d+) frames classified.*?([\d.]+) s, .*stopped by duration", p.stdout)
    assert m and 1.3 <= float(m.group(2)) <= 4.0, p.stdout


@pytest.mark.parametrize("args, message", [
    (("{missing}", "--source", "{src}"), "no bundle at"),
    (("{bundle}", "--source", "{src}", "--variant", "tflite-int8"), "has no variant 'tflite-int8'"),
    (("{bundle}", "--source", "{src}", "--variant", "keras"), "cannot run on the edge runtime"),
    (("{bundle}", "--source", "/nonexistent/folder"), "no such file"),
    (("{bundle}", "--source", "camera:x"), "camera:N"),
    (("{bundle}", "--source", "camera:97"), "cannot open 'camera:97'"),
    (("{bundle}", "--source", "{src}", "--serve", "localhost:notaport"), "[HOST:]PORT"),
    (("{bundle}", "--source", "{src}", "--window", "0"), "--window must be >= 1"),
])
def test_bad_bundle_source_or_arguments_fail_at_start(tiny_tflite_bundle, frames_dir, tmp_path, args, message):
    args = [a.format(bundle=tiny_tflite_bundle, missing=tmp_path / "nope", src=frames_dir) for a in args]
    p = run_cli(*CLI, *args, "--quiet", timeout=120)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert message in p.stderr
    assert "Traceback" not in p.stderr


def test_labels_that_do_not_match_the_model_are_refused(tiny_tflite_bundle, frames_dir, tmp_path):
    bad = tmp_path / "b"
    shutil.copytree(tiny_tflite_bundle, bad)
    b = Bundle.load(bad)
    b.metadata["labels"] = ["red", "green"]
    b.save()
    p = run_cli(*CLI, str(bad), "--source", str(frames_dir), timeout=120)
    assert p.returncode == 2 and "outputs 3 classes but the bundle has 2 labels" in p.stderr


def test_corrupted_model_file_is_refused(tiny_tflite_bundle, tmp_path):
    bad = tmp_path / "b"
    shutil.copytree(tiny_tflite_bundle, bad)
    with open(bad / "model_fp32.tflite", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    p = run_cli(*CLI, str(bad), "--source", str(tmp_path), "--variant", "tflite-fp32", timeout=120)
    assert p.returncode == 2 and "sha256" in p.stderr


def test_sigterm_while_waiting_on_stdin_exits_cleanly(tiny_tflite_bundle, tmp_path):
    log = tmp_path / "idle.jsonl"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, *CLI, str(tiny_tflite_bundle), "--source", "-", "--log", str(log)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        t_end = time.time() + 60
        while not log.exists() and time.time() < t_end:  # the start record: the loop is waiting on stdin
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "0 frames classified" in out and "stopped by signal" in out
    assert read_jsonl(log)[-1]["event"] == "summary"
