import numpy as np

from trashcam.edge.bundle import Bundle
from trashcam.edge.runtime import Classifier


def test_tiny_tflite_bundle_classifies_synthetic_images(tiny_tflite_bundle, synthetic_dataset):
    clf = Classifier(tiny_tflite_bundle, variant="tflite-fp32", threads=1)
    b = Bundle.load(tiny_tflite_bundle)
    from trashcam.edge.dataset import Split
    split = Split.load(tiny_tflite_bundle / "split.json")
    preds = [clf.classify(p).index for p in split.paths("test")]
    acc = float(np.mean(np.array(preds) == split.labels("test")))
    assert acc >= 0.9, acc
    assert b.labels == ["blue", "green", "red"]
