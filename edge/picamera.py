"""The Raspberry Pi camera as a frame source (picamera2, imported only when this source is opened).

Two streams from one request, as picamera2's examples do: `lores` (YUV420, at the model's input size, so the
ISP does the resize) is classified, `main` (RGB, 640x480 by default) is what `--serve` and `--save-frames`
show. A camera that times out is closed and reopened with back-off by `ReopeningSource`.
"""
from __future__ import annotations

import threading
import time

import numpy as np

from .frames import Frame, ReopeningSource, SourceError


def yuv420_to_rgb(yuv: np.ndarray, width: int) -> np.ndarray:
    """picamera2's YUV420 array ((h*3/2) x stride, I420 planes) -> h x width x 3 RGB.

    The stream is configured as sYCC (full-range BT.601, as JPEG files are), so this is the JPEG YCbCr
    conversion, not OpenCV's YUV420 one (studio range: it would stretch contrast by 255/219 and the model
    would see different pixels on the Pi than in training). Chroma is upsampled by repetition.
    """
    rows, stride = yuv.shape
    h = rows * 2 // 3
    cw = (width + 1) // 2
    q = (h // 2) * (stride // 2)
    chroma = yuv[h:].reshape(-1)  # U plane then V plane, each (h/2) x (stride/2)
    u = chroma[:q].reshape(h // 2, stride // 2)[:, :cw].repeat(2, 0).repeat(2, 1)[:h, :width]
    v = chroma[q:2 * q].reshape(h // 2, stride // 2)[:, :cw].repeat(2, 0).repeat(2, 1)[:h, :width]
    y = yuv[:h, :width]
    try:
        import cv2
        return cv2.cvtColor(np.dstack([y, v, u]), cv2.COLOR_YCrCb2RGB)  # OpenCV's YCrCb is the JPEG one
    except ImportError:
        pass
    y, u, v = y.astype(np.float32), u.astype(np.float32) - 128.0, v.astype(np.float32) - 128.0
    rgb = np.stack([y + 1.402 * v, y - 0.344136 * u - 0.714136 * v, y + 1.772 * u], axis=-1)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


# picamera2 names formats by their little-endian word order: "RGB888" arrays are B,G,R in memory.
_TO_RGB = {"RGB888": lambda a: a[..., ::-1], "BGR888": lambda a: a,
           "XRGB8888": lambda a: a[..., 2::-1], "XBGR8888": lambda a: a[..., :3]}


class Picamera2Source(ReopeningSource):
    """The Raspberry Pi camera: `lores` (YUV420, the model's input size) for inference, `main` for preview.

    Sizing lores to the model input lets the ISP do the resize for free; like training, the image is squashed,
    not cropped. Both streams come from the same request, so the preview shows the frame that was classified.
    """

    name = "picamera2"

    def __init__(self, lores_size: tuple[int, int], main_size: tuple[int, int] = (640, 480),
                 camera_num: int = 0, stop: threading.Event | None = None):
        super().__init__(stop)
        try:
            from picamera2 import Picamera2  # noqa: F401
        except ImportError as e:
            raise SourceError("the picamera2 source needs `sudo apt install python3-picamera2` and a venv made "
                              "with --system-site-packages (see docs/raspberry-pi.md)") from e
        # The ISP wants even lores sizes no larger than main.
        w, h = (max(2, lores_size[0] // 2 * 2), max(2, lores_size[1] // 2 * 2))
        self.lores_size = (min(w, main_size[0]), min(h, main_size[1]))
        self.main_size, self.camera_num = main_size, camera_num
        self.cam = None

    def _open(self) -> None:
        from picamera2 import Picamera2
        try:
            cam = Picamera2(self.camera_num)
            cfg = cam.create_preview_configuration(main={"size": self.main_size, "format": "RGB888"},
                                                   lores={"size": self.lores_size, "format": "YUV420"},
                                                   buffer_count=4, **_sycc())
            cam.configure(cfg)
            cam.start()
        except Exception as e:  # noqa: BLE001 - libcamera raises bare RuntimeError/IndexError
            raise SourceError(f"cannot start camera {self.camera_num} with picamera2: {e} "
                              "(check the ribbon cable and `rpicam-hello --list-cameras`)") from e
        self.cam = cam
        self.main_format = cam.camera_config["main"]["format"]

    def _read(self):
        req = self.cam.capture_request()
        try:
            lores = req.make_array("lores")
            main = req.make_array("main")
        finally:
            req.release()
        self._preview = np.ascontiguousarray(_TO_RGB.get(self.main_format, lambda a: a[..., :3])(main))
        return yuv420_to_rgb(lores, self.lores_size[0])

    def _frame(self, i: int, img) -> Frame:
        return Frame(i, time.time(), img, name=f"{self.name}#{i}", preview=self._preview)

    def _release(self) -> None:
        if self.cam is not None:
            try:
                self.cam.stop()
                self.cam.close()
            except Exception:  # noqa: BLE001 - closing a lost camera may fail; it is gone either way
                pass
            self.cam = None


def _sycc() -> dict:
    """Ask for full-range sYCC explicitly (picamera2's default with an RGB main stream, but say so)."""
    try:
        from libcamera import ColorSpace
        return {"colour_space": ColorSpace.Sycc()}
    except (ImportError, AttributeError):
        return {}


def picamera2_available() -> bool:
    try:
        import picamera2  # noqa: F401
        return True
    except ImportError:
        return False
