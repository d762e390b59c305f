"""Which frame source a `--source` spec means: `open_source` (the factory) and `is_live_source`.

The kinds of source: file_sources.py (image folders, globs, stdin paths), opencv_source.py (cameras, video
files, URLs), picamera.py (the Pi camera), all on the base types of frames.py, re-exported here. OpenCV and
picamera2 are optional: they are imported only when a source that needs them is opened.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import numpy as np

from .file_sources import MAX_PIXELS, ImageFolderSource, StdinPathsSource
from .frames import Frame, FrameSource, ReopeningSource, SourceError
from .images import IMAGE_EXTS

__all__ = ["open_source", "is_live_source", "Frame", "FrameSource", "ReopeningSource", "SourceError",
           "ImageFolderSource", "StdinPathsSource", "MAX_PIXELS"]


def open_source(spec: str, *, input_size: tuple[int, int] = (224, 224), loop: bool = False,
                size: tuple[int, int] | None = None, stop: threading.Event | None = None,
                latest: bool = True, prepare: Callable[[np.ndarray], np.ndarray] | None = None,
                max_pixels: int = MAX_PIXELS) -> FrameSource:
    """`auto` | `picamera2[:N]` | `camera:N` | video file | URL | image folder | glob | `-` (paths on stdin).

    `input_size` is the model's (height, width); `size` is the camera capture (width, height) for preview.
    `auto` means the Pi camera when picamera2 is installed, else `camera:0`. Cameras and streams are read in a
    thread that keeps only the newest frame (`latest=False`: every frame, in order, e.g. for a recorded stream).
    With `prepare` (image -> model input), folders, stdin paths and video files are read ahead in a thread that
    also runs `prepare`, so decoding and resizing the next frames overlap the current one's inference
    (grabber.PrefetchSource); cameras are not: a camera paces the loop, and resizing frames the grabber then
    drops would only take CPU from the interpreter. Image files are decoded to at most `max_pixels`.
    """
    from .picamera import Picamera2Source, picamera2_available
    if spec == "auto":
        spec = "picamera2" if picamera2_available() else "camera:0"
    if spec == "-":
        return _read_ahead(StdinPathsSource(stop=stop, max_pixels=max_pixels), prepare)
    if is_live_source(spec):
        if spec.startswith("picamera2"):
            try:
                num = int(spec.split(":", 1)[1]) if ":" in spec else 0
            except ValueError as e:
                raise SourceError(f"source {spec!r}: expected picamera2 or picamera2:N") from e
            cam: FrameSource = Picamera2Source((input_size[1], input_size[0]), size or (640, 480), num, stop=stop)
        else:
            from .opencv_source import OpenCVSource
            cam = OpenCVSource(spec, loop=loop, size=size, stop=stop)
        if not latest:
            return cam
        from .grabber import LatestFrameSource
        return LatestFrameSource(cam)
    p = Path(spec)
    if p.is_dir() or (p.is_file() and p.suffix.lower() in IMAGE_EXTS) or any(c in spec for c in "*?["):
        return _read_ahead(ImageFolderSource(spec, loop=loop, stop=stop, max_pixels=max_pixels), prepare)
    if p.is_file():
        from .opencv_source import OpenCVSource
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
