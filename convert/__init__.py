"""trashcam.convert: deployable variants of a bundle's Keras model, each checked before it is installed.

Library entry: `convert_bundle(bundle_dir, ConvertConfig(...)) -> report dict` (TensorFlow is imported only
when it runs).
"""
from .config import ConvertConfig
from .pipeline import convert_bundle
from .variants import VARIANTS

__all__ = ["ConvertConfig", "convert_bundle", "VARIANTS"]
