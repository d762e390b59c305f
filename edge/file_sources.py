"""Image files as frames: a folder, a glob pattern or a list of files, and image paths arriving on stdin.

Both decode with a pixel cap (`max_pixels`): a JPEG above it is decoded reduced (libjpeg's DCT scaling, 1/2 to
1/8, so the full-size bitmap never exists), any other image above it is skipped and counted. A Pi has a few GB;
one 144 Mpx PNG is 432 MB as RGB.
"""
from __future__ import annotations

import math
import os
import select
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from .frames import Frame, FrameSource, SourceError
from .images import IMAGE_EXTS, DecodeErrors, ImageDecodeError, is_image_file, open_image

MAX_PIXELS = 40_000_000  # a 7000x5700 photo; the default of edge-run's --max-pixels
MAX_LINE = 4096  # PATH_MAX on Linux: a longer stdin line cannot name a file
GLOB_CHARS = "*?["


def decode_file(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """HxWx3 uint8 RGB of an image file, at most `max_pixels` (JPEGs reduced by a power of 2 while decoding)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                scale = 2 ** math.ceil(math.log2(math.sqrt(w * h / max_pixels)))
                if im.format != "JPEG" or scale > 8:
                    raise ImageDecodeError(f"{path}: {w}x{h} is {w * h / 1e6:.0f} Mpx, over the "
                                           f"{max_pixels / 1e6:g} Mpx cap (--max-pixels); only a JPEG up to 8x "
                                           "the cap is decoded reduced")
                im.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
            return np.asarray(open_image(im), dtype=np.uint8)
    except ImageDecodeError:
        raise
    except DecodeErrors as e:
        raise ImageDecodeError(f"{path}: {e}") from e


def decode_frame(path: str, index: int, max_pixels: int = MAX_PIXELS) -> Frame:
    try:
        return Frame(index, time.time(), decode_file(path, max_pixels), name=path)
    except (ImageDecodeError, OSError) as e:
        return Frame(index, time.time(), None, name=path, error=str(e))


def glob_files(pattern: str) -> list[str]:
    """Image files matching `pattern` ('dir/**/*.jpg'), never through a symlinked directory: glob.glob follows
    them, so a link back to a parent made each image appear dozens of times, and two made the walk endless."""
    parts = Path(pattern).parts
    k = next(i for i, p in enumerate(parts) if any(c in p for c in GLOB_CHARS))
    root = Path(*parts[:k]) if k else Path(".")
    rest = str(Path(*parts[k:]))
    # pathlib's ** does not descend into symlinked directories (as rglob, the folder source's walk)
    return sorted(str(f) for f in root.glob(rest) if f.suffix.lower() in IMAGE_EXTS
                  and not any(p.startswith(".") for p in f.relative_to(root).parts) and f.is_file())


class ImageFolderSource(FrameSource):
    """A folder (recursively, sorted) or a glob pattern of images, or a list of image files (taken as given);
    `loop=True` repeats forever (soak tests). A looped pass in which no file decodes waits before the next,
    doubling up to `max_backoff` seconds, instead of spinning through the same bad files."""

    initial_backoff, max_backoff = 0.5, 30.0

    def __init__(self, spec: str | list[str], loop: bool = False, stop: threading.Event | None = None,
                 max_pixels: int = MAX_PIXELS):
        super().__init__(stop)
        self.loop, self.max_pixels = loop, max_pixels
        if isinstance(spec, (list, tuple)):
            if not spec:
                raise SourceError("no image files given")
            self.spec, self.name, self.files = f"{len(spec)} files", f"{len(spec)} files", list(spec)
            return
        self.spec, self.name = spec, spec
        p = Path(spec)
        if p.is_dir():
            files = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS
                           and not f.name.startswith("."))
        elif any(c in spec for c in GLOB_CHARS):
            files = glob_files(spec)
        elif p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            files = [spec]
        else:
            raise SourceError(f"source {spec!r}: no such folder, image or glob pattern")
        if not files:
            raise SourceError(f"source {spec!r} has no images ({', '.join(IMAGE_EXTS)})")
        self.files = files

    def __iter__(self) -> Iterator[Frame]:
        i, backoff = 0, self.initial_backoff
        while not self.stop.is_set():
            good = 0
            for f in self.files:
                if self.stop.is_set():
                    return
                frame = decode_frame(f, i, self.max_pixels)
                good += frame.ok
                yield frame
                i += 1
            if not self.loop:
                return
            if good:
                backoff = self.initial_backoff
            elif self.stop.wait(backoff):
                return
            else:
                backoff = min(2 * backoff, self.max_backoff)


class StdinPathsSource(FrameSource):
    """`-`: one image path per line on stdin (e.g. `inotifywait ... | edge-run B --source -`).

    Lines are bytes turned into paths as the OS does (os.fsdecode: undecodable bytes survive as surrogates, so
    any file name works); a line that cannot be a path (longer than PATH_MAX) is a skipped frame, not an end."""

    name = "stdin"

    def __init__(self, stream=None, stop: threading.Event | None = None, max_pixels: int = MAX_PIXELS):
        super().__init__(stop)
        self.fd = (stream or sys.stdin).fileno()
        self.max_pixels = max_pixels

    def _lines(self) -> Iterator[bytes]:
        # os.read + select, not sys.stdin.readline: a blocking readline would ignore a stop request.
        buf, overlong = b"", False
        while not self.stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for ln in lines:
                yield b"\0" * (MAX_LINE + 1) if overlong else ln
                overlong = False
            if len(buf) > MAX_LINE:  # a line with no end in sight: keep memory flat, report it once it ends
                buf, overlong = b"", True
        if (buf.strip() or overlong) and not self.stop.is_set():
            yield b"\0" * (MAX_LINE + 1) if overlong else buf

    def __iter__(self) -> Iterator[Frame]:
        i = 0
        for raw in self._lines():
            raw = raw.strip()
            if not raw:
                continue
            if len(raw) > MAX_LINE:
                yield Frame(i, time.time(), None, name=f"stdin line {i}",
                            error=f"a line of over {MAX_LINE} bytes is no file name; skipped")
                i += 1
                continue
            line = os.fsdecode(raw)
            try:
                ok = is_image_file(line)
                error = "" if ok else f"{line}: not an image file"
            except (OSError, ValueError) as e:  # e.g. a name component over NAME_MAX, a NUL byte
                ok, error = False, f"{line}: {e}"
            yield decode_frame(line, i, self.max_pixels) if ok else Frame(i, time.time(), None, name=line,
                                                                          error=error)
            i += 1
