"""What every frame source is: a `Frame` (HxWx3 uint8 RGB plus index and timestamp), the `FrameSource`
interface, and `ReopeningSource`, the base of live devices that drop out and come back.

A source is an iterator of `Frame`s with `close()`. A frame that cannot be decoded is still yielded, with
`image=None` and an `error`, so the caller counts and skips it in one place. Cameras and streams that drop out
are reopened with back-off; `stop` (a threading.Event) interrupts every wait so SIGTERM is honoured within a
fraction of a second. The kinds of source live in file_sources.py, opencv_source.py and picamera.py; sources.py
picks one for a `--source` spec.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np


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
