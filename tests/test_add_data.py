"""Field images back into training (edge-train --add-data) and the whole loop on the sample data:
edge-run --capture --serve -> relabel through HTTP on /review -> retrain (quick, tiny backbone) -> the relabelled
images are in the new bundle's split (train/val + a field-only test split; _foreign as negatives)."""
from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import SAMPLE, add_plain_tflite

TINY_ARGS = ["--recipe", "quick", "--backbone", "tiny", "--weights", "none", "--image-size", "32",
             "--stage2-from", "block2a", "--stage1-epochs", "4", "--stage2-epochs", "1", "--views", "1",
             "--no-tta", "--quiet"]


def test_field_split_uses_reviewed_images_only(tmp_path):
    from trashcam.train.data import field_split
    root = tmp_path / "field"
    src = sorted((SAMPLE / "glass").glob("*.jpg"))
    for i, f in enumerate(src[:5]):
        (root / "glass").mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / "glass" / f"g{i}.jpg")
        (root / "glass" / f"g{i}.json").write_text(json.dumps({"reviewed": i != 4}))  # the 5th: model's guess
    (root / "_foreign").mkdir()
    shutil.copy(src[5], root / "_foreign" / "f.jpg")  # no sidecar: sorted by hand
    (root / "uncertain").mkdir()
    shutil.copy(src[6], root / "uncertain" / "u.jpg")
    (root / "metal").mkdir()
    (root / "metal" / "link.jpg").symlink_to(src[7])  # a real path outside the folder
    fd = field_split(root, ["glass", "metal"], seed=1)
    assert fd.counts["unreviewed"] == 1 and fd.counts["unknown_class_folder"] == 1
    assert fd.counts["outside_folder"] == 1
    used = [Path(p).name for k in ("train", "val", "field_test") for p, _ in fd.files[k]]
    assert sorted(used) == ["g0.jpg", "g1.jpg", "g2.jpg", "g3.jpg"] and len(fd.files["field_test"]) == 1
    assert [Path(p).name for p, y in fd.files["foreign"]] == ["f.jpg"]


def test_classes_makes_foreign_images_a_class_of_their_own(tmp_path):
    from trashcam.edge.dataset import DatasetError
    from trashcam.train.config import resolve
    from trashcam.train.pipeline import _split

    field = tmp_path / "field"
    (field / "_foreign").mkdir(parents=True)
    for i, f in enumerate(sorted((SAMPLE / "paper").glob("*.jpg"))[:6]):
        shutil.copy(f, field / "_foreign" / f"x{i}.jpg")
    classes = ("plastic", "glass", "other")  # a subset, reordered, plus the foreign class
    cfg = resolve("quick", data=str(SAMPLE), add_data=str(field), classes=classes)
    split = _split(cfg, tmp_path / "partial")
    assert split.classes == list(classes) and not split.files["foreign"]
    other = [p for k in ("train", "val", "field_test") for p, y in split.files[k] if y == 2]
    assert sorted(Path(p).name for p in other) == [f"x{i}.jpg" for i in range(6)]
    names = {Path(p).parent.name for k in ("train", "val", "test") for p, y in split.files[k] if y < 2}
    assert names == {"plastic", "glass"}
    assert all(Path(p).parent.name == ["plastic", "glass"][y] for p, y in split.files["train"] if y < 2)
    # without --add-data a name the data lacks is a mistake, not a class
    with pytest.raises(DatasetError, match="not among the data's classes"):
        _split(resolve("quick", data=str(SAMPLE), classes=("glass", "other")), tmp_path / "p2")
    with pytest.raises(DatasetError, match="listed twice"):
        _split(resolve("quick", data=str(SAMPLE), classes=("glass", "glass")), tmp_path / "p3")
    (field / "_foreign").rename(field / "elsewhere")
    with pytest.raises(DatasetError, match="no reviewed images"):
        _split(cfg, tmp_path / "p4")


def _http(url, body=None):
    req = urllib.request.Request(url, json.dumps(body).encode() if body is not None else None,
                                 {"Content-Type": "application/json"}, "POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_capture_relabel_retrain_loop(tiny_backbone, tmp_path):
    from trashcam.edge.bundle import Bundle
    from trashcam.edge.config import RunConfig
    from trashcam.edge.live import LiveRunner
    from trashcam.train.cli import main as train_main

    cache = ["--cache-dir", str(tmp_path / "cache")]
    first = tmp_path / "b1"
    assert train_main(["--data", str(SAMPLE), "--out", str(first), *TINY_ARGS, *cache]) == 0
    add_plain_tflite(first)

    frames = tmp_path / "frames"
    frames.mkdir()
    for f in sorted((SAMPLE / "metal").glob("*.jpg"))[:6]:
        shutil.copy(f, frames / f.name)
    cap = tmp_path / "capture"
    cfg = RunConfig(bundle=str(first), variant="tflite-fp32", source=str(frames), loop=True, threads=1,
                    capture=str(cap), capture_when="all", capture_rate=6, serve="127.0.0.1:0", quiet=True)
    stop = threading.Event()
    runner = LiveRunner(cfg, stop)
    t = threading.Thread(target=runner.run, daemon=True)
    t.start()
    try:
        deadline = time.time() + 60
        while len(list(cap.rglob("*.json"))) < 6 and time.time() < deadline:
            time.sleep(0.2)
        items = _http(runner.server.url + "review/items")["items"]
        assert len(items) == 6  # the rate limit holds the loop to 6 a minute
        side = json.loads((cap / items[0]["id"]).with_suffix(".json").read_text())
        assert side["variant"] == "tflite-fp32" and side["bundle_sha256"] and "score" in side
        for it in items[:4]:
            assert _http(runner.server.url + "review/relabel", {"id": it["id"], "label": "metal"})["ok"]
        assert _http(runner.server.url + "review/relabel", {"id": items[4]["id"], "label": "_foreign"})["ok"]
    finally:
        stop.set()
        t.join(30)
    assert runner.summary["capture"]["captured"] == 6

    second = tmp_path / "b2"
    assert train_main(["--data", str(SAMPLE), "--out", str(second), "--add-data", str(cap), *TINY_ARGS,
                       *cache]) == 0
    split = json.loads((second / "split.json").read_text())["files"]
    field = {Path(p).name for k in ("train", "val", "field_test") for p, _ in split[k] if str(cap) in p}
    relabelled = {Path(it["id"]).name for it in items[:4]}
    assert field == relabelled  # the unreviewed capture stays out
    assert all(y == split_labels_index(second, "metal") for k in ("train", "val", "field_test")
               for p, y in split[k] if str(cap) in p)
    assert [Path(p).name for p, _ in split["foreign"]] == [Path(items[4]["id"]).name]
    metrics = json.loads((second / "metrics.json").read_text())
    assert metrics["counts"]["field_test"] == len(split["field_test"]) == 1
    assert "field_evaluation" in metrics and "Field test split" in (second / "report.md").read_text()
    assert "field_test_accuracy" in Bundle.load(second).metadata["metrics"]


def split_labels_index(bundle: Path, name: str) -> int:
    return json.loads((bundle / "split.json").read_text())["classes"].index(name)
