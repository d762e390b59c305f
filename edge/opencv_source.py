"""`camera:N` (USB/V4L2), video files and stream URLs through OpenCV (imported only when such a source opens)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .frames import ReopeningSource, SourceError


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
