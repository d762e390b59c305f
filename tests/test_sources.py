"""Frame sources under bad input: symlink loops, folders of bad files, odd stdin lines, huge images."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from trashcam.edge.file_sources import ImageFolderSource, StdinPathsSource, decode_file, glob_files
from trashcam.edge.grabber import for_display
from trashcam.edge.sources import open_source


def _jpg(path, size=(40, 30), color=(200, 30, 30)):
    Image.new("RGB", size, color).save(path, quality=90)
    return str(path)


def test_glob_sources_do_not_follow_directory_symlink_loops(tmp_path):
    """D8: glob.glob followed `loop -> ..` links: each image came back dozens of times, two loops never ended."""
    d = tmp_path / "shots"
    (d / "sub").mkdir(parents=True)
    _jpg(d / "a.jpg")
    _jpg(d / "sub" / "b.jpg")
    os.symlink(d, d / "sub" / "loop")
    os.symlink(d / "sub", d / "loop2")
    want = [str(d / "a.jpg"), str(d / "sub" / "b.jpg")]
    assert glob_files(str(d / "**" / "*.jpg")) == want
    src = ImageFolderSource(str(d / "**" / "*.jpg"))
    assert [f.name for f in src] == want
    assert ImageFolderSource(str(d)).files == want  # the folder source, as before
    assert glob_files(str(d / "*.jpg")) == [str(d / "a.jpg")]


def test_a_looped_folder_of_only_bad_files_backs_off(tmp_path):
    """D10: a folder of unreadable files with --loop spun through 68 k skip records in 5 s."""
    for i in range(3):
        (tmp_path / f"bad{i}.jpg").write_bytes(b"not a jpeg")
    stop = threading.Event()
    src = ImageFolderSource(str(tmp_path), loop=True, stop=stop)
    threading.Timer(1.2, stop.set).start()
    t0 = time.monotonic()
    frames = list(src)
    assert time.monotonic() - t0 < 3
    assert all(not f.ok for f in frames)
    assert 3 <= len(frames) <= 9  # passes at 0, 0.5 and 1.5 s at most: not thousands


def _stdin(data: bytes):
    r, w = os.pipe()

    def feed():  # a pipe holds 64 KiB: write while the source reads
        with os.fdopen(w, "wb") as f:
            f.write(data)
    threading.Thread(target=feed, daemon=True).start()
    return os.fdopen(r, "rb")


def test_stdin_survives_overlong_lines_and_non_utf8_names(tmp_path):
    """D11: a 300-character line raised 'File name too long' and ended the run; D12: non-UTF-8 names were
    mangled into 'not an image file'."""
    good = _jpg(tmp_path / "ok.jpg")
    odd = os.fsencode(str(tmp_path)) + b"/caf\xe9.jpg"
    _jpg(os.fsdecode(odd))
    data = b"x" * 300 + b"\n" + good.encode() + b"\n" + odd + b"\n" + b"y" * 70000 + b"\n" + good.encode() + b"\n"
    with _stdin(data) as f:
        frames = list(StdinPathsSource(stream=f))
    assert [fr.ok for fr in frames] == [False, True, True, False, True]
    assert "too long" in frames[0].error or "File name" in frames[0].error
    assert frames[2].name == os.fsdecode(odd)
    assert "over 4096 bytes" in frames[3].error


def test_huge_images_are_decoded_reduced_or_skipped(tmp_path):
    """D9: six 144 Mpx PNGs took 3.2 GB of RSS; a pixel cap bounds each frame."""
    big = _jpg(tmp_path / "big.jpg", size=(2000, 1600))
    img = decode_file(big, max_pixels=1_000_000)
    assert img.shape == (800, 1000, 3)  # libjpeg's 1/2 scale: never decoded at 3.2 Mpx
    assert decode_file(big).shape == (1600, 2000, 3)  # under the default cap: untouched
    png = tmp_path / "big.png"
    Image.new("RGB", (1200, 1000)).save(png)
    src = ImageFolderSource([str(png), big], max_pixels=1_000_000)
    frames = list(src)
    assert not frames[0].ok and "over the 1 Mpx cap" in frames[0].error and frames[1].ok
    src = open_source(str(tmp_path), max_pixels=1_000_000, prepare=lambda im: im[:8, :8])
    try:
        kept = [f for f in src if f.ok]
    finally:
        src.close()
    assert len(kept) == 1 and kept[0].model_input.shape == (8, 8, 3)


def test_read_ahead_frames_keep_only_a_display_sized_image():
    img = np.zeros((3000, 2000, 3), np.uint8)
    small = for_display(img, max_pixels=1_000_000)
    assert small.shape == (1000, 667, 3) or small.shape[0] * small.shape[1] <= 1_000_000
    tiny = np.zeros((240, 320, 3), np.uint8)
    assert for_display(tiny) is tiny


@pytest.mark.parametrize("spec", ["nope/*.jpg", "/nonexistent/folder"])
def test_missing_sources_fail_clearly(spec):
    from trashcam.edge.frames import SourceError
    with pytest.raises(SourceError):
        ImageFolderSource(spec)


def test_skip_records_are_rate_limited_but_every_skip_is_counted():
    """D10: a source of nothing but bad frames wrote every skip to the log (9.9 MB in 5 s)."""
    from trashcam.edge.frames import Frame
    from trashcam.edge.live import SkipGate

    gate = SkipGate(burst=3, interval=1.0)
    frames = [Frame(i, 0.0, None, name=f"f{i}", error="bad") for i in range(100)]
    passed = [f for i, f in enumerate(frames) if gate.let_through(f, now=i * 0.01)]  # 100 skips in one second
    assert [f.index for f in passed] == [0, 1, 2]
    late = Frame(100, 0.0, None, name="late", error="bad")
    assert gate.let_through(late, now=1.5) and "(+97 more skipped" in late.error
