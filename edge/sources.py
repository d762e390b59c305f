"""Frame sources for the live classifier: one small interface, one class per kind of input.

A source is an iterator of `Frame`s (HxWx3 uint8 RGB plus index and timestamp) with `close()`. A frame that
cannot be decoded is still yielded, with `image=None` and an `error`, so the caller counts and skips it in one
place. Cameras and streams that drop out are reopened with back-off; `stop` (a threading.Event) interrupts
every wait so SIGTERM is honoured within a fraction of a second.

OpenCV and picamera2 are optional: they are imported only when a source that needs them is opened.
"""
from __future__ import annotations

import glob
import os
import select
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .images import IMAGE_EXTS, ImageDecodeError, is_image_file, open_image


class SourceError(RuntimeError):
    """A source that cannot be opened at all (missing folder, no camera, OpenCV or picamera2 not installed)."""


@dataclass
class Frame:
    index: int
    timestamp: float
    image: np.ndarray | None  # HxWx3 uint8 RGB for inference; None when the frame was unreadable
    name: str = ""  # file path, or "camera:0#123"
    error: str = ""
    preview: np.ndarray | None = field(default=None, repr=False)  # a larger RGB view for display, if any
    model_input: np.ndarray | None = field(default=None, repr=False)  # `image` already at the model's input size

    @property
    def ok(self) -> bool:
        return self.image is not None


class FrameSource:
    """Iterate to get frames; `close()` releases the device. Usable as a context manager."""

    name = "source"

    def __init__(self, stop: threading.Event | None = None):
        self.stop = stop or threading.Event()
        self.reopens = 0

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def open(self) -> None:
        """Open the device now, so a wrong source fails at start-up rather than at the first frame."""

    def close(self) -> None:
        pass

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _decode(path: str, index: int) -> Frame:
    try:
        img = np.asarray(open_image(path), dtype=np.uint8)
        return Frame(index, time.time(), img, name=path)
    except (ImageDecodeError, OSError) as e:
        return Frame(index, time.time(), None, name=path, error=str(e))


class ImageFolderSource(FrameSource):
    """A folder (recursively, sorted) or a glob pattern of images, or a list of image files (taken as given);
    `loop=True` repeats forever (soak tests)."""

    def __init__(self, spec: str | list[str], loop: bool = False, stop: threading.Event | None = None):
        super().__init__(stop)
        if isinstance(spec, (list, tuple)):
            if not spec:
                raise SourceError("no image files given")
            self.spec, self.loop, self.name, self.files = f"{len(spec)} files", loop, f"{len(spec)} files", list(spec)
            return
        self.spec, self.loop, self.name = spec, loop, spec
        p = Path(spec)
        if p.is_dir():
            files = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS
                           and not f.name.startswith("."))
        else:
            files = sorted(f for f in glob.glob(spec, recursive=True) if Path(f).suffix.lower() in IMAGE_EXTS)
            if not files and not any(c in spec for c in "*?["):
                raise SourceError(f"source {spec!r}: no such folder, image or glob pattern")
        if not files:
            raise SourceError(f"source {spec!r} has no images ({', '.join(IMAGE_EXTS)})")
        self.files = files

    def __iter__(self) -> Iterator[Frame]:
        i = 0
        while not self.stop.is_set():
            for f in self.files:
                if self.stop.is_set():
                    return
                yield _decode(f, i)
                i += 1
            if not self.loop:
                return


class StdinPathsSource(FrameSource):
    """`-`: one image path per line on stdin (e.g. `inotifywait ... | edge-run B --source -`)."""

    name = "stdin"

    def __init__(self, stream=None, stop: threading.Event | None = None):
        super().__init__(stop)
        self.fd = (stream or sys.stdin).fileno()

    def _lines(self) -> Iterator[str]:
        # os.read + select, not sys.stdin.readline: a blocking readline would ignore a stop request.
        buf = b""
        while not self.stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            yield from (ln.decode(errors="replace").strip() for ln in lines)
        if buf.strip() and not self.stop.is_set():
            yield buf.decode(errors="replace").strip()

    def __iter__(self) -> Iterator[Frame]:
        i = 0
        for line in self._lines():
            if not line:
                continue
            if not is_image_file(line):
                yield Frame(i, time.time(), None, name=line, error=f"{line}: not an image file")
            else:
                yield _decode(line, i)
            i += 1


class ReopeningSource(FrameSource):
    """A live device or stream: `_open`, `_read` (None = empty frame, raise = lost), `_release`.

    A lost device is released and reopened with exponential back-off (`initial_backoff` doubling up to
    `max_backoff`).
    The first open must succeed, so a wrong `--source` fails at start instead of retrying forever.
    """

    initial_backoff = 0.5
    max_backoff = 10.0
    heartbeat = 0.0  # monotonic time of the last read or reopen attempt (a stuck driver stops updating it)
    live = True  # False for files: a failed read there is the end of the video

    _opened = False

    def open(self) -> None:
        if not self._opened:
            self._open()
            self._opened = True

    def __iter__(self) -> Iterator[Frame]:
        self.open()
        i, empty_run = 0, 0
        while not self.stop.is_set():
            try:
                self.heartbeat = time.monotonic()
                img = self._read()
                self.heartbeat = time.monotonic()
                empty = img is None or img.size == 0
                empty_run = empty_run + 1 if empty else 0
                if empty_run >= 50 and self.live:  # a stream that only returns garbage is lost too
                    empty_run = 0
                    raise RuntimeError("50 empty frames in a row")
            except EOFError:
                return
            except Exception as e:  # noqa: BLE001 - any driver error means "device lost"
                if not self.live:
                    raise
                if not self._reopen(e, self.initial_backoff):
                    return
                continue
            if empty:
                yield Frame(i, time.time(), None, name=f"{self.name}#{i}", error="empty frame")
            else:
                yield self._frame(i, img)
            i += 1

    def _reopen(self, e: Exception, backoff: float) -> bool:
        """Release and reopen until it works (True) or a stop is requested (False)."""
        print(f"{self.name}: lost ({e}); reopening with back-off", file=sys.stderr, flush=True)
        while not self.stop.wait(backoff):
            self.heartbeat = time.monotonic()
            try:
                self._release()
                self._open()
                self.reopens += 1
                print(f"{self.name}: reopened", file=sys.stderr, flush=True)
                return True
            except Exception as e2:  # noqa: BLE001
                backoff = min(backoff * 2, self.max_backoff)
                print(f"{self.name}: reopen failed ({e2}); next try in {backoff:.1f} s", file=sys.stderr, flush=True)
        return False

    def _frame(self, i: int, img) -> Frame:
        return Frame(i, time.time(), img, name=f"{self.name}#{i}")

    def close(self) -> None:
        self._release()
        self._opened = False

    def _open(self) -> None:
        raise NotImplementedError

    def _read(self):
        raise NotImplementedError

    def _release(self) -> None:
        pass


def import_cv2():
    try:
        import cv2
        return cv2
    except ImportError as e:
        raise SourceError("camera:N and video sources need OpenCV: `pip install opencv-python-headless` "
                          "(or `pip install '.[video]'`)") from e


class OpenCVSource(ReopeningSource):
    """`camera:N` (USB/V4L2), a video file, or a stream URL (rtsp://, http://), read with OpenCV."""

    def __init__(self, spec: str, loop: bool = False, size: tuple[int, int] | None = None,
                 stop: threading.Event | None = None):
        super().__init__(stop)
        self.cv2 = import_cv2()
        self.spec, self.loop, self.size, self.name = spec, loop, size, spec
        self.cap = None
        if spec.startswith("camera:"):
            try:
                self.target: int | str = int(spec.split(":", 1)[1])
            except ValueError as e:
                raise SourceError(f"source {spec!r}: expected camera:N with N a number, e.g. camera:0") from e
        else:
            self.target = spec
            is_url = "://" in spec
            if not is_url and not Path(spec).is_file():
                raise SourceError(f"source {spec!r}: no such file, folder, camera or URL")
            self.live = is_url
        self.is_file = not self.live

    def _open(self) -> None:
        cap = self.cv2.VideoCapture(self.target)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.spec!r} with OpenCV"
                              + (" (is the camera connected? try `v4l2-ctl --list-devices`)"
                                 if isinstance(self.target, int) else ""))
        if self.size and isinstance(self.target, int):
            cap.set(self.cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
            cap.set(self.cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        self.cap = cap
        self._fails = 0

    def _read(self):
        ok, bgr = self.cap.read()
        if ok and bgr is not None and bgr.size:
            self._fails = 0
            if bgr.ndim == 2:
                return np.repeat(bgr[..., None], 3, axis=-1)
            return np.ascontiguousarray(bgr[..., 2::-1] if bgr.shape[-1] >= 3 else bgr)
        if self.is_file:
            pos = self.cap.get(self.cv2.CAP_PROP_POS_FRAMES)
            count = self.cap.get(self.cv2.CAP_PROP_FRAME_COUNT)
            self._fails += 1
            at_end = count <= 0 or pos >= count - 1 or self._fails > 5
            if at_end:
                if not self.loop:
                    raise EOFError
                if self._fails > 100:  # rewinding yields nothing readable: the file is unusable
                    raise EOFError
                self.cap.set(self.cv2.CAP_PROP_POS_FRAMES, 0)
                return self._read()
            return None  # a bad frame in the middle: counted and skipped
        raise RuntimeError("read failed")

    def _release(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


def open_source(spec: str, *, input_size: tuple[int, int] = (224, 224), loop: bool = False,
                size: tuple[int, int] | None = None, stop: threading.Event | None = None,
                latest: bool = True, prepare: Callable[[np.ndarray], np.ndarray] | None = None) -> FrameSource:
    """`auto` | `picamera2[:N]` | `camera:N` | video file | URL | image folder | glob | `-` (paths on stdin).

    `input_size` is the model's (height, width); `size` is the camera capture (width, height) for preview.
    `auto` means the Pi camera when picamera2 is installed, else `camera:0`. Cameras and streams are read in a
    thread that keeps only the newest frame (`latest=False`: every frame, in order, e.g. for a recorded stream).
    With `prepare` (image -> model input), folders, stdin paths and video files are read ahead in a thread that
    also runs `prepare`, so decoding and resizing the next frames overlap the current one's inference
    (grabber.PrefetchSource); cameras are not: a camera paces the loop, and resizing frames the grabber then
    drops would only take CPU from the interpreter.
    """
    from .picamera import Picamera2Source, picamera2_available
    if spec == "auto":
        spec = "picamera2" if picamera2_available() else "camera:0"
    if spec == "-":
        return _read_ahead(StdinPathsSource(stop=stop), prepare)
    if is_live_source(spec):
        if spec.startswith("picamera2"):
            try:
                num = int(spec.split(":", 1)[1]) if ":" in spec else 0
            except ValueError as e:
                raise SourceError(f"source {spec!r}: expected picamera2 or picamera2:N") from e
            cam: FrameSource = Picamera2Source((input_size[1], input_size[0]), size or (640, 480), num, stop=stop)
        else:
            cam = OpenCVSource(spec, loop=loop, size=size, stop=stop)
        if not latest:
            return cam
        from .grabber import LatestFrameSource
        return LatestFrameSource(cam)
    p = Path(spec)
    if p.is_dir() or (p.is_file() and p.suffix.lower() in IMAGE_EXTS) or any(c in spec for c in "*?["):
        return _read_ahead(ImageFolderSource(spec, loop=loop, stop=stop), prepare)
    if p.is_file():
        return _read_ahead(OpenCVSource(spec, loop=loop, stop=stop), prepare)
    raise SourceError(f"source {spec!r}: no such file or folder (expected auto, picamera2, camera:N, a video "
                      "file, a URL, an image folder, a glob or -)")


def is_live_source(spec: str) -> bool:
    """A camera or network stream (paced by its own frame rate), as opposed to files read as fast as they go."""
    return spec == "auto" or spec.startswith(("picamera2", "camera:")) or "://" in spec


def _read_ahead(source: FrameSource, prepare) -> FrameSource:
    if prepare is None:
        return source
    from .grabber import PrefetchSource
    return PrefetchSource(source, prepare)
