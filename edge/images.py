"""Image decoding and the preprocessing contract, shared by training, conversion checks and the edge runtime.

One function turns any image file (or array, or PIL image) into the uint8 RGB array the model expects, so a
photo is handled identically when it is cached for training, used for INT8 calibration and classified on a Pi.
The resize is the bundle's `Preprocessing.resize`: "linear" (edge.resize, OpenCV's INTER_LINEAR; new bundles) or
a PIL filter name ("bilinear": bundles made before "linear").
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from .bundle import Preprocessing
from .resize import resize_linear

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

ImageLike = Union[str, os.PathLike, bytes, np.ndarray, Image.Image]

# PIL filters by the names bundles record; "linear" (OpenCV's INTER_LINEAR, edge.resize) is not among them.
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}

# Errors that mean "this file is not a usable image": callers skip and count these, never crash.
DecodeErrors = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageDecodeError(ValueError):
    """An image could not be decoded (unreadable, truncated, empty or not an image)."""


# EXIF orientations that move pixels (1 is "as stored"; others are invalid and ImageOps ignores them too).
_TRANSPOSING = frozenset(range(2, 9))


def to_rgb(img: Image.Image) -> Image.Image:
    """EXIF orientation applied; grayscale, palette, CMYK, 16-bit and alpha images converted to plain RGB.

    Transparent pixels are composited on white: TrashNet-style photos have white backgrounds, and black (what a
    bare `convert("RGB")` gives for RGBA) would be an input the model never saw.
    """
    # exif_transpose returns a full copy even when there is nothing to turn (the usual case): 0.1-0.25 ms per
    # frame, mostly page faults of the fresh buffer. Same pixels without it; the test keeps both paths equal.
    img.load()
    if img.getexif().get(ExifTags.Base.Orientation, 1) in _TRANSPOSING:
        img = ImageOps.exif_transpose(img)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGBa"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        img = Image.fromarray((arr * (255.0 / max(hi, 1.0))).astype(np.uint8), mode="L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def open_image(src: ImageLike) -> Image.Image:
    """Decode a path, bytes, PIL image or HxWx3/HxW array into an RGB PIL image. Raises ImageDecodeError."""
    if isinstance(src, Image.Image):
        return to_rgb(src)
    if isinstance(src, np.ndarray):
        arr = src
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4) or arr.size == 0:
            raise ImageDecodeError(f"expected an HxWx3 array, got shape {arr.shape}")
        return to_rgb(Image.fromarray(arr))
    try:
        if isinstance(src, (bytes, bytearray)):
            if not src:
                raise ImageDecodeError("empty image data")
            img = Image.open(io.BytesIO(src))
        else:
            img = Image.open(src)
        # A truncated JPEG must fail here, not decode half-grey: LOAD_TRUNCATED_IMAGES stays False.
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        img.load()
        return to_rgb(img)
    except ImageDecodeError:
        raise
    except DecodeErrors as e:
        if not isinstance(src, (bytes, bytearray)) and _is_empty_file(src):  # asked only on failure: a syscall less
            raise ImageDecodeError(f"{src}: empty file") from e
        raise ImageDecodeError(f"{src if not isinstance(src, bytes) else '<bytes>'}: {e}") from e


def _is_empty_file(path) -> bool:
    try:
        return Path(path).stat().st_size == 0
    except OSError:
        return False


RESIZE_METHODS = ("linear", *_RESAMPLE)


def _check_resize(pre: Preprocessing) -> None:
    if pre.resize not in RESIZE_METHODS:
        raise ValueError(f"unknown preprocessing resize {pre.resize!r}; known: {', '.join(RESIZE_METHODS)}")


def resize_array(img: Image.Image, pre: Preprocessing) -> np.ndarray:
    h, w = pre.input_size
    if pre.resize == "linear":
        arr = np.asarray(img, dtype=np.uint8)
        return arr if arr.shape[:2] == (h, w) else resize_linear(arr, (h, w))
    _check_resize(pre)
    if img.size != (w, h):
        img = img.resize((w, h), _RESAMPLE[pre.resize])
    return np.asarray(img, dtype=np.uint8)


def load_for_model(src: ImageLike, pre: Preprocessing) -> np.ndarray:
    """Any image -> HxWx3 uint8 RGB at the model's input size. The single preprocessing path of trashcam.

    A uint8 HxWx3 array (a decoded camera frame) has no EXIF and needs no mode conversion, so it goes straight
    to the resize: the same pixels as through `open_image`, without its copies. One already at the input size is
    returned as it is (not copied).
    """
    if isinstance(src, np.ndarray) and src.dtype == np.uint8 and src.ndim == 3 and src.shape[2] == 3 and src.size:
        if src.shape[:2] == tuple(pre.input_size):
            return np.ascontiguousarray(src)
        if pre.resize == "linear":  # straight from the array: no PIL image, no copy before the resize
            return resize_linear(src, tuple(pre.input_size))
        return resize_array(Image.fromarray(src), pre)
    return resize_array(open_image(src), pre)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt() parameter numbers (malloc.h)
_FRAME_MEMORY_KEPT = False


def keep_frame_memory(mib: int = 8) -> bool:
    """Let glibc keep freed frame-sized buffers for the next frame instead of handing them back to the OS.

    By default glibc serves allocations of a few hundred KB with mmap (or trims them off the heap top) and
    returns them on free, so every frame's decoded image, resize buffers and arrays come back as fresh pages:
    measured 124 page faults and 0.25 ms of CPU per 240x320 JPEG classified at 288 px (2-core EPYC), with the
    same peak RSS either way. With both thresholds at `mib` MiB the buffers are reused; the process keeps at
    most about that much freed memory. Called once by `open_engine`
    (so by edge-run and edge-bench); a no-op returning False off glibc or when MALLOC_* / GLIBC_TUNABLES
    variables already tune malloc for this process.
    """
    global _FRAME_MEMORY_KEPT
    if _FRAME_MEMORY_KEPT:
        return True
    if any(k.startswith("MALLOC_") for k in os.environ) or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False  # someone tuned malloc for this process on purpose
    try:
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    size = int(mib) << 20
    _FRAME_MEMORY_KEPT = bool(mallopt(_M_MMAP_THRESHOLD, size)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * size))
    return _FRAME_MEMORY_KEPT


def is_image_file(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")
