"""Latest-frame grabbing for live cameras: classify what is in front of the camera now, not a backlog.

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

import threading
import time
from collections import deque
from typing import Iterator

from .sources import Frame, FrameSource, SourceError


class LatestFrameSource(FrameSource):
    def __init__(self, inner: FrameSource, stall_timeout: float = 60.0):
        super().__init__(inner.stop)
        self.stall_timeout = stall_timeout
        self.stalled = False
        self.inner, self.name = inner, inner.name
        self.dropped = 0
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._bad: deque[Frame] = deque(maxlen=1000)
        self._done = False
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
            self._thread = threading.Thread(target=self._read_all, name=f"grab-{self.name}", daemon=True)
            self._thread.start()

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
