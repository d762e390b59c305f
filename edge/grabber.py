"""Reading frames in a thread: the newest frame of a live camera, or every frame of a file source read ahead.

LatestFrameSource: classify what is in front of the camera now, not a backlog.

A camera delivers frames at its own rate. When classifying is slower, reading in the same loop returns the
frames queued in the driver's buffers, so the decision lags the scene by several frames. A reader thread
that keeps only the newest frame fixes that, and overlaps capture (and YUV conversion) with inference.
Frames replaced before they were classified are counted as `dropped`; unreadable frames are never dropped,
so they are still counted as skipped.

A driver call that never returns (a wedged camera) cannot be interrupted from Python; when the reader has
made no progress for `stall_timeout` seconds, iteration raises SourceError so `edge-run` exits non-zero and
the service manager restarts it with a fresh process.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Callable, Iterator

import numpy as np

from .frames import Frame, FrameSource, SourceError


class _ThreadedSource(FrameSource):
    """A source whose inner source is read by a background thread (`_read_all`); reopens are the inner's."""
    thread_prefix = "read"

    def __init__(self, inner: FrameSource):
        super().__init__(inner.stop)
        self.inner, self.name = inner, inner.name
        self.dropped = 0
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def reopens(self) -> int:
        return self.inner.reopens

    @reopens.setter
    def reopens(self, _value: int) -> None:  # FrameSource.__init__ assigns it; the inner source counts
        pass

    def open(self) -> None:
        if self._thread is None:
            self.inner.open()  # errors at start-up surface here, in the caller's thread
            self._thread = threading.Thread(target=self._read_all, name=f"{self.thread_prefix}-{self.name}",
                                            daemon=True)
            self._thread.start()

    def _read_all(self) -> None:
        raise NotImplementedError


class LatestFrameSource(_ThreadedSource):
    thread_prefix = "grab"

    def __init__(self, inner: FrameSource, stall_timeout: float = 60.0):
        super().__init__(inner)
        self.stall_timeout = stall_timeout
        self.stalled = False
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._bad: deque[Frame] = deque(maxlen=1000)
        self._done = False

    def _read_all(self) -> None:
        try:
            for f in self.inner:
                with self._cond:
                    if not f.ok:
                        self._bad.append(f)
                    else:
                        if self._latest is not None:
                            self.dropped += 1
                        self._latest = f
                    self._cond.notify_all()
                if self.stop.is_set():
                    break
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._error = e
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def __iter__(self) -> Iterator[Frame]:
        self.open()
        while True:
            with self._cond:
                while not (self._bad or self._latest is not None or self._done or self.stop.is_set()):
                    self._cond.wait(0.2)
                    beat = getattr(self.inner, "heartbeat", 0.0)
                    if beat and time.monotonic() - beat > self.stall_timeout:
                        self.stalled = True
                        raise SourceError(f"{self.name}: no frame and no progress for {self.stall_timeout:.0f} s "
                                          "(driver stuck); stopping so the service manager restarts edge-run")
                if self._bad:
                    f = self._bad.popleft()
                elif self._latest is not None:
                    f, self._latest = self._latest, None
                elif self._error is not None:
                    raise self._error
                else:
                    return
            yield f

    def close(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=0.5 if self.stalled else 5)
        if not (self._thread and self._thread.is_alive()):
            self.inner.close()  # never while the reader is inside a driver call


_END = object()
DISPLAY_PIXELS = 4_000_000  # what a read-ahead frame keeps for --serve / --save-frames once its model input exists


def for_display(image: np.ndarray, max_pixels: int = DISPLAY_PIXELS) -> np.ndarray:
    """`image`, or one reduced by a whole factor to at most `max_pixels`: frames waiting in the read-ahead queue
    are then never full-size photos (a 40 Mpx one is 120 MB)."""
    h, w = image.shape[:2]
    if h * w <= max_pixels:
        return image
    from PIL import Image
    factor = int(np.ceil(np.sqrt(h * w / max_pixels)))
    return np.asarray(Image.fromarray(image).reduce(factor))


class PrefetchSource(_ThreadedSource):
    """Every frame of `inner`, in order, read `depth` frames ahead by a thread that also runs `prepare` (image ->
    model input, stored as `frame.model_input`).

    For folders, stdin paths and video files, where the loop is limited by how fast frames are processed, not
    by a camera: JPEG decoding and resizing (1.4 ms for a 240x320 JPEG at 288 px, 2-core EPYC) release the GIL
    and run while the interpreter classifies the previous frame, so per-frame time approaches the invoke time
    when a core is free for them. Nothing is dropped; the thread blocks while `depth` frames wait. A frame
    bigger than DISPLAY_PIXELS keeps a reduced image (for the sinks) once its model input is made.
    """

    thread_prefix = "prefetch"

    def __init__(self, inner: FrameSource, prepare: Callable[[np.ndarray], np.ndarray] | None = None,
                 depth: int = 2):
        super().__init__(inner)
        self.prepare = prepare
        self._q: queue.Queue = queue.Queue(max(1, depth))

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _read_all(self) -> None:
        try:
            for f in self.inner:
                if f.ok and self.prepare is not None:
                    f.model_input = self.prepare(f.image)
                    f.image = for_display(f.image)
                if not self._put(f):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._error = e
        finally:
            self._put(_END)

    def __iter__(self) -> Iterator[Frame]:
        self.open()
        while True:
            try:
                item = self._q.get(timeout=0.2)
            except queue.Empty:
                if self.stop.is_set() or not (self._thread and self._thread.is_alive()):
                    return
                continue
            if item is _END:
                if self._error is not None:
                    raise self._error
                return
            yield item

    def close(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not (self._thread and self._thread.is_alive()):
            self.inner.close()
