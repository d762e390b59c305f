"""The review's reliability findings (issue 16), each reproduced first: sinks on a full disk, a log that must not
fill the card, bundles with hostile or broken metadata, concurrent writers, unreadable classes, odd names."""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

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


# -- bundles: confinement (D2), schema (D3), partial verification (D4), locking and merging (D5) ---------------

def _bundle(path):
    from trashcam.edge.bundle import Bundle, Preprocessing
    b = Bundle.create(path, ["a", "b"], Preprocessing(input_size=(8, 8)), backbone="none")
    (path / "m.tflite").write_bytes(b"model-bytes")
    b.set_variant("tflite-fp32", "m.tflite", format="tflite")
    b.save()
    return b


def _edit(path, fn):
    meta = json.loads((path / "metadata.json").read_text())
    fn(meta)
    (path / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("name", ["../B/evil.sh", "/etc/passwd", "../../etc/passwd", "sub/../../x", "", "C:\\x"])
def test_file_names_outside_the_bundle_are_refused(tmp_path, name):
    """D2: `variants.*.file = "../B/evil.sh"` made edge-export write outside its destination."""
    from trashcam.edge.bundle import Bundle, BundleError
    a = tmp_path / "A"
    _bundle(a)

    def evil(meta):
        meta["variants"]["tflite-fp32"]["file"] = name
        meta["files"][name] = meta["files"].pop("m.tflite")
    _edit(a, evil)
    with pytest.raises(BundleError, match="outside|usable"):
        Bundle.load(a, verify=False)


def test_a_symlink_out_of_the_bundle_is_refused(tmp_path):
    from trashcam.edge.bundle import Bundle, BundleError, sha256_file
    from trashcam.edge.export import export_edge_bundle
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"do not read")
    a = tmp_path / "A"
    _bundle(a)
    (a / "m.tflite").unlink()
    (a / "m.tflite").symlink_to(secret)

    def relink(meta):
        meta["files"]["m.tflite"].update(sha256=sha256_file(secret), size_bytes=secret.stat().st_size)
    _edit(a, relink)
    b = Bundle.load(a, verify=False)
    for read in (lambda: b.variant_path("tflite-fp32"), lambda: b.verify(), lambda: Bundle.load(a)):
        with pytest.raises(BundleError, match="outside the bundle"):
            read()
    with pytest.raises(BundleError, match="outside the bundle"):
        export_edge_bundle(a, tmp_path / "slim", "tflite-fp32", check=False)
    assert not (tmp_path / "slim").exists()
    # writing through a symlinked folder is refused too
    (a / "out").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(BundleError, match="outside the bundle"):
        b.file("out/evil.sh")


def test_export_cannot_write_outside_its_destination(tmp_path):
    from trashcam.edge.bundle import BundleError
    a = tmp_path / "A"
    b = _bundle(a)
    b.metadata["variants"]["tflite-fp32"]["file"] = "../B/evil.sh"  # in memory: load would refuse it
    b.metadata["files"]["../B/evil.sh"] = b.metadata["files"]["m.tflite"]
    with pytest.raises(BundleError):
        b.export_slim(tmp_path / "dest" / "slim", "tflite-fp32")
    assert not (tmp_path / "dest" / "B").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.clear() or m.update({"__list__": True}), "must be a JSON object"),
    (lambda m: m.update(labels="ab"), "labels must be a JSON array"),
    (lambda m: m.update(labels=["a"]), "at least 2"),
    (lambda m: m["variants"].update({"tflite-fp32": "m.tflite"}), r"variants\['tflite-fp32'\] must be"),
    (lambda m: m["files"]["m.tflite"].pop("size_bytes"), "no size_bytes"),
    (lambda m: m["files"]["m.tflite"].update(size_bytes="11"), "size_bytes must be a JSON integer"),
    (lambda m: m.update(preprocessing={"input_size": "big"}), "input_size"),
    (lambda m: m.update(calibration={"temperature": "hot"}), "calibration.temperature"),
    (lambda m: m["variants"]["tflite-fp32"].update(file="other.tflite"), "not listed in files"),
])
def test_structurally_wrong_metadata_is_one_clear_error(tmp_path, edit, message):
    """D3: these raised TypeError/AttributeError/KeyError tracebacks from deep inside later stages."""
    from trashcam.edge.bundle import Bundle, BundleError
    a = tmp_path / "A"
    _bundle(a)
    _edit(a, edit)
    if "__list__" in json.loads((a / "metadata.json").read_text()):
        (a / "metadata.json").write_text("[1, 2, 3]")
    with pytest.raises(BundleError, match=message) as e:
        Bundle.load(a)
    assert "\n" not in str(e.value)


def test_load_verifies_only_the_files_asked_for(tmp_path):
    """D4: one corrupt variant blocked every stage, its own repair included."""
    from trashcam.edge.bundle import Bundle, BundleError
    a = tmp_path / "A"
    _bundle(a)
    (a / "m.tflite").write_bytes(b"corrupt!!!!")
    with pytest.raises(BundleError, match="sha256"):
        Bundle.load(a)
    b = Bundle.load(a, verify=["labels.txt"])
    with pytest.raises(BundleError, match="sha256"):
        b.verify(["m.tflite"])


@contextmanager
def _held_by_another_process(bundle_dir):
    import subprocess
    import sys
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from trashcam.edge.bundle import bundle_lock\n"
        f"with bundle_lock({str(bundle_dir)!r}, holder='edge-convert'):\n"
        "    print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_a_writer_lock_refuses_a_second_writer(tmp_path):
    """D5: two edge-convert runs on one bundle both went ahead and left a sha256 mismatch."""
    from trashcam.edge.bundle import BundleError, bundle_lock
    a = tmp_path / "A"
    _bundle(a)
    with _held_by_another_process(a):
        t0 = time.monotonic()
        with pytest.raises(BundleError, match=r"being changed by pid \d+ \(edge-convert\)"):
            with bundle_lock(a, timeout=0.3):
                pass
        assert time.monotonic() - t0 >= 0.3
    with bundle_lock(a, timeout=5):  # released when its holder dies
        with bundle_lock(a):  # re-entrant within a process
            pass


def test_save_merges_what_another_process_saved(tmp_path):
    """D5: edge-bench recording during edge-convert was silently overwritten by convert's save."""
    from trashcam.edge.bundle import Bundle
    a = tmp_path / "A"
    _bundle(a)
    convert = Bundle.load(a)
    bench = Bundle.load(a)
    bench.metadata["bench"] = {"p50_ms": {"1": {"tflite-fp32": 3.0}}}
    bench.variants["tflite-fp32"]["note"] = "bench saw it"
    bench.save()
    (a / "m8.tflite").write_bytes(b"int8")
    convert.set_variant("tflite-int8", "m8.tflite", format="tflite")
    convert.metadata["convert"] = {"last_status": {"tflite-int8": "PASS"}}
    convert.save()
    meta = Bundle.load(a).metadata
    assert meta["bench"] == {"p50_ms": {"1": {"tflite-fp32": 3.0}}}
    assert set(meta["variants"]) == {"tflite-fp32", "tflite-int8"}
    assert meta["variants"]["tflite-fp32"]["note"] == "bench saw it"
    assert meta["convert"]["last_status"] == {"tflite-int8": "PASS"}


def test_edge_convert_repairs_its_own_broken_variant(tiny_tflite_bundle, tmp_path):
    """D4: `edge-convert B` refused because the variant it was asked to rebuild failed verification."""
    import shutil

    from trashcam.convert.config import ConvertConfig
    from trashcam.convert.pipeline import convert_bundle
    from trashcam.edge.bundle import Bundle, BundleError
    d = tmp_path / "b"
    shutil.copytree(tiny_tflite_bundle, d)
    (d / "model_fp32.tflite").write_bytes(b"garbage")
    with pytest.raises(BundleError):
        Bundle.load(d)
    with _held_by_another_process(d):  # D5 on the real stage: a second edge-convert is refused
        with pytest.raises(BundleError, match="being changed by"):
            convert_bundle(d, ConvertConfig(variants=("tflite-fp32",), threads=1))
    report = convert_bundle(d, ConvertConfig(variants=("tflite-fp32",), threads=1))
    assert report["variants"]["tflite-fp32"]["installed"], report
    Bundle.load(d)  # every checksum good again


# -- training data: odd file names (D6) and classes with nothing readable (D7) ------------------------------

def _copy_dataset(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_an_unreadable_image_with_a_non_utf8_name_is_reported_not_fatal(tmp_path):
    """D6: the whole edge-train failed at report time (UnicodeEncodeError), leaving no bundle."""
    from trashcam.edge.bundle import Preprocessing, atomic_write_bytes, atomic_write_json
    from trashcam.train.data import decode_images
    from trashcam.train.evaluate import classification_metrics, report_markdown
    bad = os.path.join(os.fsencode(tmp_path), b"bad\xff name.jpg")
    with open(bad, "wb") as f:
        f.write(b"not a jpeg")
    d = decode_images([Path(os.fsdecode(bad))], np.array([0]), Preprocessing(input_size=(8, 8)),
                      str(tmp_path / "cache"), desc="t", progress=False)
    assert len(d.skipped) == 1
    y = np.array([0, 1])
    summary = {"recipe": "quick", "backbone": "tiny", "labels": ["a", "b"], "monitor": "val_loss",
               "evaluation": {"plain": classification_metrics(y, y, ["a", "b"]), "tta_passes": ["identity"]},
               "stages": [], "seconds": {"total": 1, "decode": 0, "train": 1, "evaluate": 0}, "skipped": d.skipped}
    atomic_write_json(tmp_path / "metrics.json", summary)
    atomic_write_bytes(tmp_path / "report.md", report_markdown(summary).encode())
    report = (tmp_path / "report.md").read_text()
    assert "Unreadable images skipped: 1" in report and "bad\\xff name.jpg" in report


def test_report_escapes_names_that_are_not_utf8():
    from trashcam.train.evaluate import printable
    name = os.fsdecode(b"/data/bad\xff.jpg")
    assert printable(name) == "/data/bad\\xff.jpg"
    assert printable(f"cannot identify image file {name!r}").encode()
    assert printable("caf\u00e9 \ud800") == "caf\u00e9 \\ud800"


def test_a_class_with_no_readable_image_is_an_error_naming_it(tiny_backbone, synthetic_dataset, tmp_path):
    """D7: the class trained silently (a label with 0 images) and the report said 100 %."""
    from trashcam.edge.dataset import DatasetError
    from trashcam.train.config import resolve
    from trashcam.train.pipeline import train
    data = _copy_dataset(synthetic_dataset, tmp_path / "data")
    for p in (data / "green").iterdir():
        p.write_bytes(b"broken")
    cfg = resolve("quick", data=str(data), out=str(tmp_path / "b"), backbone="tiny", weights="none", image_size=32,
                  cache_dir=str(tmp_path / "cache"), verbose=0)
    with pytest.raises(DatasetError, match="'green' have no readable images in the training split"):
        train(cfg)
    assert not (tmp_path / "b").exists()


def test_locking_a_missing_bundle_is_the_usual_clear_error(tmp_path):
    from trashcam.edge.bundle import BundleError, bundle_lock
    with pytest.raises(BundleError, match="no bundle at"):
        with bundle_lock(tmp_path / "nope"):
            pass
