"""Decoding every odd image mode the same way, skipping broken files, and a reproducible stratified split."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trashcam.edge.bundle import Preprocessing
from trashcam.edge.dataset import DatasetError, Split, make_split, scan_classes, stratified_split
from trashcam.edge.images import ImageDecodeError, load_for_model, open_image
from trashcam.train.data import class_weights, decode_images

PRE = Preprocessing(input_size=(16, 20))


def _rgb(h=12, w=10):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "LA", "I;16", "1", "RGB"])
def test_every_mode_becomes_rgb_uint8(tmp_path, mode):
    img = Image.fromarray(_rgb()).convert(mode) if mode != "I;16" else \
        Image.fromarray((np.arange(120).reshape(12, 10) * 500).astype(np.uint16))
    ext = ".tiff" if mode in ("I;16", "CMYK") else ".png"
    if mode == "CMYK":
        ext = ".jpg"
    p = tmp_path / f"x{ext}"
    img.save(p)
    arr = load_for_model(p, PRE)
    assert arr.shape == (16, 20, 3) and arr.dtype == np.uint8


def test_alpha_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    out = np.asarray(open_image(Image.fromarray(rgba, "RGBA")))
    assert (out == 255).all()


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :10] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif, quality=100)
    out = np.asarray(open_image(p))
    assert out.shape[:2] == (20, 10)  # portrait after transpose
    assert out[:10].mean() > 200 and out[10:].mean() < 50  # white half is now on top


def test_broken_files_raise_decode_error(tmp_path):
    good = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(good, "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("trunc.jpg", "empty.jpg", "text.jpg"):
        with pytest.raises(ImageDecodeError):
            open_image(tmp_path / name)


def test_decode_skips_and_counts_unreadable_and_uses_cache(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    paths = []
    for i in range(3):
        p = d / f"{i}.png"
        Image.fromarray(_rgb()).save(p)
        paths.append(p)
    (d / "bad.jpg").write_text("nope")
    paths.append(d / "bad.jpg")
    y = np.array([0, 1, 0, 1])
    out = decode_images(paths, y, PRE, tmp_path / "cache", progress=False)
    assert out.x.shape == (3, 16, 20, 3) and list(out.y) == [0, 1, 0]
    assert len(out.skipped) == 1 and out.skipped[0][0].endswith("bad.jpg")
    # second run: served from the cache, identical arrays; an edited file is decoded again
    again = decode_images(paths, y, PRE, tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(again.x, out.x)
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(paths[0])
    edited = decode_images(paths, y, PRE, tmp_path / "cache", progress=False)
    assert edited.x[0].max() == 0 and edited.x[1].max() > 0


def _dataset(root: Path, counts: dict[str, int]) -> Path:
    for c, n in counts.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(_rgb()).save(root / c / f"{i}.png")
    return root


def test_split_is_stratified_and_reproducible(tmp_path):
    root = _dataset(tmp_path / "d", {"a": 40, "b": 20, "c": 27})
    s1, s2 = make_split(root, seed=7), make_split(root, seed=7)
    assert s1.files == s2.files
    assert make_split(root, seed=8).files != s1.files
    for name, frac in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        counts = np.bincount(s1.labels(name), minlength=3)
        np.testing.assert_allclose(counts, np.array([40, 20, 27]) * frac, atol=1.0)
    all_files = [f for v in s1.files.values() for f, _ in v]
    assert len(all_files) == len(set(all_files)) == 87  # disjoint and complete
    s1.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json").files == s1.files


def test_presplit_layout_is_respected(tmp_path):
    root = tmp_path / "pre"
    _dataset(root / "train", {"a": 12, "b": 12})
    _dataset(root / "test", {"a": 3, "b": 3})
    s = make_split(root)
    assert s.presplit and s.counts()["test"] == 6 and s.counts()["val"] > 0
    assert all(f.startswith("test/") for f, _ in s.files["test"])


def test_dataset_errors_are_clear(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_classes(tmp_path / "missing")
    _dataset(tmp_path / "one", {"a": 3})
    with pytest.raises(DatasetError, match="at least 2"):
        scan_classes(tmp_path / "one")
    _dataset(tmp_path / "emp", {"a": 3})
    (tmp_path / "emp" / "b").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        scan_classes(tmp_path / "emp")
    _dataset(tmp_path / "unk", {"a": 3, "zzz": 2})
    with pytest.raises(DatasetError, match="does not know"):
        scan_classes(tmp_path / "unk", classes=["a", "b"])


def test_tiny_classes_still_get_every_split():
    items = [(f"a/{i}", 0) for i in range(3)] + [(f"b/{i}", 1) for i in range(30)]
    s = stratified_split(items, seed=0)
    assert all({y for _, y in s[k]} == {0, 1} for k in ("train", "val", "test"))


def test_class_weights_balanced_and_clipped():
    y = np.array([0] * 80 + [1] * 10 + [2] * 30)
    w = class_weights(y, 3, (0.7, 1.6))
    raw = len(y) / (3 * np.array([80, 10, 30]))
    np.testing.assert_allclose(w, np.clip(raw, 0.7, 1.6), rtol=1e-6)
    assert w[1] == pytest.approx(1.6) and w[0] == pytest.approx(0.7)


def _reference_load_for_model(src, pre: Preprocessing) -> np.ndarray:
    """The preprocessing contract as first written (exif_transpose copy on every image, every array through PIL).

    Kept verbatim so the faster path in edge.images is checked pixel for pixel: training's decode cache, INT8
    calibration and the device must keep seeing the same input for the same image.
    """
    from PIL import ImageOps

    from trashcam.edge.images import _RESAMPLE

    def to_rgb(img):
        img = ImageOps.exif_transpose(img)
        if img.mode == "P":
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGBa"):
            img = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float64)
            hi = arr.max() if arr.size else 1.0
            img = Image.fromarray((arr * (255.0 / max(hi, 1.0))).astype(np.uint8), mode="L")
        if img.mode == "F":
            img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float64), 0, 255).astype(np.uint8), mode="L")
        return img.convert("RGB") if img.mode != "RGB" else img

    if isinstance(src, Image.Image):
        img = to_rgb(src)
    elif isinstance(src, np.ndarray):
        arr = src if src.dtype == np.uint8 else np.clip(src, 0, 255).astype(np.uint8)
        arr = np.stack([arr] * 3, axis=-1) if arr.ndim == 2 else arr
        img = to_rgb(Image.fromarray(arr))
    else:
        img = Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
        img.load()
        img = to_rgb(img)
    h, w = pre.input_size
    if pre.resize == "linear":  # OpenCV's INTER_LINEAR by definition (edge.resize)
        import cv2
        arr = np.asarray(img, dtype=np.uint8)
        return arr if arr.shape[:2] == (h, w) else cv2.resize(arr, (w, h), interpolation=cv2.INTER_LINEAR)
    if img.size != (w, h):
        img = img.resize((w, h), _RESAMPLE[pre.resize])
    return np.asarray(img, dtype=np.uint8)


def _reference_inputs(tmp_path: Path) -> list:
    """Files, bytes, PIL images and arrays covering every branch of edge.images: EXIF orientations 1-8 and none,
    alpha, palette, grey, 16-bit, CMYK, up- and downscaling, arrays at and off the input size, views, floats."""
    rng = np.random.default_rng(7)
    out: list = []
    for orient in (None, 1, 2, 3, 4, 5, 6, 7, 8):
        img = Image.fromarray(rng.integers(0, 255, (30, 44, 3), dtype=np.uint8))
        exif = img.getexif()
        if orient:
            exif[0x0112] = orient
        p = tmp_path / f"o{orient}.jpg"
        img.save(p, exif=exif, quality=90)
        out += [p, str(p), p.read_bytes()]
        pil = Image.open(p)
        out.append(pil)
    base = rng.integers(0, 255, (13, 9, 4), dtype=np.uint8)
    for mode in ("RGBA", "LA", "L", "P", "CMYK", "1"):
        img = Image.fromarray(base, "RGBA").convert(mode)
        p = tmp_path / f"m_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        img.save(p)
        out += [p, img]
    p = tmp_path / "i16.png"
    Image.fromarray((rng.integers(0, 4000, (11, 7))).astype(np.uint16)).save(p)
    out += [p, Image.fromarray(rng.normal(120, 90, (9, 12)).astype(np.float32))]  # mode F
    big = rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)
    out += [big, big[::2, ::3], big[..., ::-1], big[:16, :20], np.ascontiguousarray(big[:16, :20]),
            big.astype(np.float32) * 1.2, big[..., 0], base, rng.integers(0, 255, (16, 20, 3), dtype=np.uint8)]
    out += sorted((SAMPLE_DIR).glob("*/*.jpg"))[::10]
    return out


SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "sample"


@pytest.mark.parametrize("size,resize", [((16, 20), "bilinear"), ((288, 288), "bilinear"), ((24, 24), "bicubic"),
                                         ((20, 16), "area"), ((16, 20), "linear"), ((288, 288), "linear")])
def test_preprocessing_is_pixel_identical_to_the_reference(tmp_path, size, resize):
    pre = Preprocessing(input_size=size, resize=resize)
    for src in _reference_inputs(tmp_path):
        want = _reference_load_for_model(src, pre)
        got = load_for_model(src, pre)
        assert got.shape == (*size, 3) and got.dtype == np.uint8 and got.flags.c_contiguous
        assert np.array_equal(got, want), f"{type(src).__name__} {getattr(src, 'shape', src)!s:.80}"


def test_frame_at_input_size_is_not_copied_and_the_caller_image_is_untouched(tmp_path):
    frame = np.random.default_rng(0).integers(0, 255, (16, 20, 3), dtype=np.uint8)
    assert load_for_model(frame, PRE) is frame  # already what the model takes: no copy per frame
    arr = np.zeros((10, 20, 3), np.uint8)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif)
    pil = Image.open(p)
    open_image(pil)
    assert pil.size == (20, 10)  # a turned copy is returned; the caller's image is left as it was
