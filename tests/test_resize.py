"""The "linear" resize: OpenCV's INTER_LINEAR pixels with or without OpenCV, chosen through the bundle contract."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from trashcam.edge import resize
from trashcam.edge.bundle import Preprocessing
from trashcam.edge.images import load_for_model
from trashcam.train.data import DecodeCache

cv2 = pytest.importorskip("cv2")

# up, down, both, 2x (OpenCV's special cases live there), 1 px, the camera frame to the default model size
SHAPES = [(240, 320, 288, 288), (320, 240, 288, 288), (480, 640, 224, 224), (100, 100, 50, 50), (7, 9, 16, 20),
          (5, 5, 288, 288), (1, 1, 3, 4), (3, 1, 5, 2), (16, 20, 16, 40), (400, 300, 12, 9)]


def test_numpy_path_gives_opencv_inter_linear_pixel_for_pixel():
    rng = np.random.default_rng(0)
    shapes = SHAPES + [tuple(int(v) for v in rng.integers(1, 200, 4)) for _ in range(40)]
    for h, w, oh, ow in shapes:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = cv2.resize(img, (ow, oh), interpolation=cv2.INTER_LINEAR).reshape(oh, ow, 3)
        got = resize.resize_linear_numpy(img, (oh, ow))
        assert got.dtype == np.uint8 and np.array_equal(got, want), (h, w, oh, ow)


def test_without_opencv_the_same_pixels(monkeypatch):
    img = np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    with_cv2 = resize.resize_linear(img, (288, 288))
    monkeypatch.setattr(resize, "_cv2", False)  # as on a device with only the [edge] extra
    assert resize.backend() == "numpy"
    assert np.array_equal(resize.resize_linear(img, (288, 288)), with_cv2)


def test_views_and_strided_frames_are_resized_as_their_pixels():
    big = np.random.default_rng(2).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    for view in (big[::2, ::3], big[..., ::-1], big[5:40, 7:70]):
        want = resize.resize_linear_numpy(np.ascontiguousarray(view), (24, 24))
        assert np.array_equal(resize.resize_linear(view, (24, 24)), want)
        assert np.array_equal(resize.resize_linear_numpy(view, (24, 24)), want)


def test_bundles_without_a_resize_field_keep_pils_filter_and_new_ones_are_linear():
    d = Preprocessing(input_size=(8, 8)).to_dict()
    assert d["resize"] == "linear" and Preprocessing.from_dict(d).resize == "linear"
    del d["resize"]
    assert Preprocessing.from_dict(d).resize == "bilinear"  # what every bundle before "linear" was made with
    assert Preprocessing.from_dict(json.loads(json.dumps({"resize": "bilinear"}))).resize == "bilinear"


def test_load_for_model_dispatches_on_the_bundle_resize(tmp_path):
    frame = np.random.default_rng(3).integers(0, 256, (30, 44, 3), dtype=np.uint8)
    p = tmp_path / "f.png"
    Image.fromarray(frame).save(p)
    lin, pil = Preprocessing(input_size=(16, 20)), Preprocessing(input_size=(16, 20), resize="bilinear")
    want_lin = cv2.resize(frame, (20, 16), interpolation=cv2.INTER_LINEAR)
    want_pil = np.asarray(Image.fromarray(frame).resize((20, 16), Image.Resampling.BILINEAR))
    for src in (frame, p, Image.fromarray(frame), p.read_bytes()):
        assert np.array_equal(load_for_model(src, lin), want_lin)
        assert np.array_equal(load_for_model(src, pil), want_pil)
    assert not np.array_equal(want_lin, want_pil)  # a downscale: PIL's filter is wider
    with pytest.raises(ValueError, match="unknown preprocessing resize"):
        load_for_model(frame, Preprocessing(input_size=(16, 20), resize="wobbly"))


def test_training_cache_is_kept_apart_per_resize(tmp_path):
    lin = DecodeCache(tmp_path, Preprocessing(input_size=(16, 16)))
    pil = DecodeCache(tmp_path, Preprocessing(input_size=(16, 16), resize="bilinear"))
    assert lin.dir != pil.dir  # decoded pixels of one resize are never served for the other


def test_frames_resized_straight_into_the_input_tensor_give_the_same_probabilities(scored_bundle, monkeypatch):
    """classify_timed (edge-run's per-frame path) writes a decoded frame into the INT8 model's uint8 input tensor
    instead of resizing to a new array and copying it in: same pixels, same output; frames of every size, frames
    already at the model's size, and a failed resize leave the interpreter able to run."""
    from trashcam.edge.bundle import Bundle
    from trashcam.edge.images import load_for_model
    from trashcam.edge.interpreters import open_engine
    from trashcam.edge.runtime import calibrated_probs, classify_timed

    d, _ = scored_bundle
    b = Bundle.load(d)
    pre = b.preprocessing
    assert pre.resize == "linear"
    eng = open_engine(b, "tflite-int8", 1)
    assert eng.input_array() is not None  # uint8 pixels as they are
    rng = np.random.default_rng(7)
    h, w = pre.input_size
    for shape in ((240, 320, 3), (h, w, 3), (31, 97, 3), (h * 3, w, 3)):
        frame = rng.integers(0, 256, shape, dtype=np.uint8)
        want = calibrated_probs(eng, load_for_model(frame, pre), 0.7)
        got = classify_timed(eng, pre, 0.7, frame)[0]
        np.testing.assert_array_equal(got, want)
    from trashcam.edge import runtime

    def broken(*a, **k):
        raise MemoryError("resize failed while the input view was live")
    monkeypatch.setattr(runtime, "resize_linear", broken)
    kept = []
    try:
        classify_timed(eng, pre, 0.7, rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    except MemoryError as e:
        kept.append(e)  # a caller that keeps the error keeps its traceback, and its frames
    monkeypatch.undo()
    assert kept
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    np.testing.assert_array_equal(classify_timed(eng, pre, 0.7, frame)[0],
                                  calibrated_probs(eng, load_for_model(frame, pre), 0.7))
    fp32 = open_engine(b, "tflite-fp32", 1)
    assert fp32.input_array() is None  # float input: the copy path
