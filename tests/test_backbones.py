"""Backbone registry, the torch-free state_dict reader, the Lite0 ImageNet port, B0's offline error, the probe."""
from __future__ import annotations

import io
import pickle
import struct
import subprocess
import sys
import urllib.error
import zipfile

import numpy as np
import pytest

from conftest import SHARED, run_cli
from trashcam.train.backbones import BackboneSpec, UnknownBackbone, get, names, register
from trashcam.train.backbones import efficientnet_lite0 as lite0
from trashcam.train.backbones.torch_legacy import LEGACY_MAGIC, TorchFileError, load_state_dict

# ---------------------------------------------------------------------------------------------- registry


def test_registry_names_and_lookup():
    assert {"efficientnet_b0", "efficientnet_lite0"} <= set(names())
    spec = get("EfficientNet-Lite0")
    assert spec.name == "efficientnet_lite0" and spec.input_size == 224
    assert spec.offline_weights and get("efficientnet_b0").stage2_from == "60"


def test_registry_errors():
    with pytest.raises(UnknownBackbone) as e:
        get("resnet9000")
    assert "efficientnet_b0" in str(e.value) and "efficientnet_lite0" in str(e.value)
    with pytest.raises(ValueError, match="already registered"):
        register(BackboneSpec(name="efficientnet_b0", build=lambda **kw: None))
    with pytest.raises(TypeError):
        register({"name": "x"})


def test_import_is_light():
    code = "import sys, trashcam.train.backbones; print(any(m in sys.modules for m in ('tensorflow', 'keras')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

# ------------------------------------------------------------------------------ torch-free reader


def _s(text: str) -> bytes:
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _i(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _tuple(*parts: bytes) -> bytes:
    return b"(" + b"".join(parts) + b"t"


def _tensor(storage_pid: bytes, offset: int, size, stride) -> bytes:
    """Opcodes of torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""
    return (b"ctorch._utils\n_rebuild_tensor_v2\n"
            + _tuple(storage_pid + b"Q", _i(offset), _tuple(*map(_i, size)), _tuple(*map(_i, stride)),
                     b"\x89", b"ccollections\nOrderedDict\n)R") + b"R")


def _state_dict_pickle(pid) -> bytes:
    """{'w': float (2,3) non-contiguous view at offset 1, 'n': int64 (3,), 'v': strided view of w's storage}."""
    return (b"\x80\x02ccollections\nOrderedDict\n)R("
            + _s("w") + _tensor(pid("torch\nFloatStorage", "0", 7), 1, (2, 3), (1, 2))
            + _s("n") + _tensor(pid("torch\nLongStorage", "1", 3), 0, (3,), (1,))
            + _s("v") + _tensor(pid("torch\nFloatStorage", "0", 7), 3, (2,), (3,))
            + b"u.")


STORAGE0 = np.arange(7, dtype="<f4") * 1.5
STORAGE1 = np.array([3, -1, 7], dtype="<i8")


def _check(sd):
    assert sorted(sd) == ["n", "v", "w"]
    # w[i, j] = storage[1 + i + 2j]
    np.testing.assert_array_equal(sd["w"], STORAGE0[[[1, 3, 5], [2, 4, 6]]])
    assert sd["w"].flags["C_CONTIGUOUS"] and sd["w"].flags["OWNDATA"] and sd["w"].dtype == np.float32
    np.testing.assert_array_equal(sd["n"], STORAGE1)
    np.testing.assert_array_equal(sd["v"], STORAGE0[[3, 6]])  # a second view of storage "0"


def legacy_bytes() -> bytes:
    def pid(storage_global, key, numel):
        return _tuple(_s("storage"), b"c" + storage_global.encode() + b"\n", _s(key), _s("cpu"), _i(numel), b"N")

    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    out = io.BytesIO()
    for header in (LEGACY_MAGIC, 1001, sys_info):
        out.write(pickle.dumps(header, protocol=2))
    out.write(_state_dict_pickle(pid))
    out.write(pickle.dumps(["0", "1"], protocol=2))
    for arr in (STORAGE0, STORAGE1):
        out.write(struct.pack("<q", arr.size) + arr.tobytes())
    return out.getvalue()


def test_legacy_reader_non_contiguous(tmp_path):
    p = tmp_path / "tiny.pth"
    p.write_bytes(legacy_bytes())
    _check(load_state_dict(p))


def test_zip_reader(tmp_path):
    def pid(storage_global, key, numel):
        return _tuple(_s("storage"), b"c" + storage_global.encode() + b"\n", _s(key), _s("cpu"), _i(numel))

    p = tmp_path / "tiny_zip.pth"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("tiny/data.pkl", _state_dict_pickle(pid))
        zf.writestr("tiny/data/0", STORAGE0.tobytes())
        zf.writestr("tiny/data/1", STORAGE1.tobytes())
    _check(load_state_dict(p))


def test_reader_refuses_other_globals_and_truncation(tmp_path):
    evil = tmp_path / "evil.pth"
    body = b"\x80\x02cos\nsystem\n" + _s("echo pwned") + b"\x85R."
    evil.write_bytes(b"".join(pickle.dumps(h, protocol=2) for h in (LEGACY_MAGIC, 1001, {})) + body)
    with pytest.raises(TorchFileError, match="refusing to load global os.system"):
        load_state_dict(evil)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(legacy_bytes()[:-5])
    with pytest.raises(TorchFileError, match="truncated"):
        load_state_dict(cut)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(TorchFileError):
        load_state_dict(junk)

# --------------------------------------------------------------------------------------- Lite0 port


@pytest.fixture(scope="module")
def lite0_state_dict():
    return load_state_dict(lite0.imagenet_weights_path())


def test_every_tensor_maps_to_a_layer(lite0_state_dict):
    converted = lite0.convert_state_dict(lite0_state_dict)
    weights = [k for k in lite0_state_dict if not k.endswith(".num_batches_tracked")]
    assert sum(len(v) for v in converted.values()) == len(weights) == 247
    assert converted["stem_conv"][0].shape == (3, 3, 3, 32)
    assert converted["block2a_dwconv"][0].shape == (3, 3, 96, 1)
    assert converted["block6a_dwconv"][0].shape == (5, 5, 672, 1)
    assert converted["predictions"][0].shape == (1280, 1000)
    bad = dict(lite0_state_dict)
    del bad["_blocks.3._bn1.running_var"]
    with pytest.raises(lite0.Lite0WeightsError, match="missing"):
        lite0.convert_state_dict(bad)
    with pytest.raises(lite0.Lite0WeightsError, match="map to no layer"):
        lite0.convert_state_dict({**lite0_state_dict, "_blocks.16._se_reduce.weight": np.zeros(3)})


@pytest.fixture(scope="module")
def lite0_with_top(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("cache")
    mp.setenv("TRASHCAM_CACHE", str(cache))
    try:
        model = lite0.build(weights="imagenet", include_top=True)
    finally:
        mp.undo()
    return model, cache


def test_port_ranks_sample_images_like_the_reference(lite0_with_top):
    from PIL import Image
    from sklearn.datasets import load_sample_image

    model, _ = lite0_with_top
    x = np.stack([np.asarray(Image.fromarray(load_sample_image(n)).resize((224, 224), Image.BICUBIC), np.float32)
                  for n in ("china.jpg", "flower.jpg")])
    probs = np.asarray(model(x, training=False))
    china, flower = (np.argsort(-p)[:5] for p in probs)
    # bell cote, boathouse, monastery, palace; daisy
    assert list(china[:4]) == [442, 449, 663, 698], china
    assert flower[0] == 985, flower
    assert np.allclose(probs.sum(1), 1, atol=1e-4)


def test_all_layers_assigned_and_cache_reused(lite0_with_top, monkeypatch):
    model, cache = lite0_with_top
    files = list(cache.glob("efficientnet_lite0-*.npz"))
    assert len(files) == 1
    monkeypatch.setenv("TRASHCAM_CACHE", str(cache))
    import trashcam.train.backbones.torch_legacy as tl

    def no_parse(path):
        raise AssertionError("the cached conversion should have been used")

    monkeypatch.setattr(tl, "load_state_dict", no_parse)
    weights, path = lite0.converted_weights(lite0.imagenet_weights_path())
    assert path == files[0]
    assigned = lite0.assign_weights(model, weights)
    # 2 stem + 4 (block1a) + 15 * 6 blocks + 2 top + dense
    assert len(assigned) == sum(1 for layer in model.layers if layer.weights) == 99
    with pytest.raises(lite0.Lite0WeightsError, match="shapes"):
        lite0.assign_weights(model, {**weights, "top_conv": [np.zeros((1, 1, 320, 10), np.float32)]})


def test_lite0_backbone_names_shape_and_stage2():
    import keras

    backbone = get("efficientnet_lite0").build(input_shape=(96, 128, 3), weights=None)
    assert tuple(backbone.output.shape) == (None, 3, 4, 1280)
    names_lite = [layer.name for layer in backbone.layers]
    b0 = keras.applications.EfficientNetB0(include_top=False, weights=None)
    names_b0 = [layer.name for layer in b0.layers]
    inputs = {layer.name for m in (backbone, b0) for layer in m.layers if isinstance(layer, keras.layers.InputLayer)}
    # same naming scheme, so code can cut either by name (input layers take Keras' session-wide counter)
    assert set(names_lite) - inputs <= set(names_b0)
    assert names_b0[60] == "block3b_expand_conv"
    from trashcam.train.model import ClassifierParts, stage2_index
    parts = ClassifierParts(backbone, list(backbone.layers), [], 1280)
    i = stage2_index(parts, get("efficientnet_lite0").stage2_from)
    assert (i, names_lite[i]) == (36, "block3b_expand_conv")
    for name in ("block5c_add", "block6a_expand_conv", "top_activation"):
        assert name in names_lite

# ------------------------------------------------------------------------------------ Lite1 / Lite2

# ImageNet classes a photo of a bottle or jar lands in (beer/pop/water/wine/pill bottle, whiskey jug, water jug,
# vase, jar-like containers): what a correct port answers for TrashNet glass and plastic.
BOTTLE_LIKE = {440, 720, 737, 898, 907, 901, 899, 883, 418, 849, 504, 968, 692}


@pytest.mark.parametrize("variant, blocks, layers", [(lite0.LITE1, 21, 201), (lite0.LITE2, 21, 201)])
def test_lite1_lite2_weights_match_and_classify(variant, blocks, layers, tmp_path, monkeypatch):
    from PIL import Image
    from sklearn.datasets import load_sample_image

    from conftest import SAMPLE

    monkeypatch.setenv("TRASHCAM_CACHE", str(tmp_path))
    sd = load_state_dict(lite0.imagenet_weights_path(variant))
    converted = lite0.convert_state_dict(sd, variant)  # raises if any tensor is missing or left over
    assert sum(len(v) for v in converted.values()) == sum(not k.endswith(".num_batches_tracked") for k in sd)
    assert len(lite0.block_names(variant)) == blocks
    spec = get(variant.name)
    assert spec.input_size == variant.resolution and spec.offline_weights
    size = variant.resolution
    model = lite0.build(input_shape=(size, size, 3), weights="imagenet", include_top=True, variant=variant)
    assert len(model.layers) - 3 == layers  # without avg_pool, top_dropout, predictions
    # every weighted layer got its tensors from the file (assign_weights checked each shape)
    assert len(lite0.assign_weights(model, converted)) == sum(1 for layer in model.layers if layer.weights)
    assert list(tmp_path.glob(f"{variant.name}-*.npz"))  # converted once, cached under the variant's name
    sample = [p for c in ("glass", "plastic") for p in sorted((SAMPLE / c).iterdir())[:3]]
    photos = [load_sample_image("china.jpg")] + [np.asarray(Image.open(p).convert("RGB")) for p in sample]
    x = np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC), np.float32) for a in photos])
    top5 = np.argsort(-np.asarray(model(x, training=False)), axis=1)[:, :5]
    assert top5[0, 0] in (442, 449, 663, 698), top5[0]  # bell cote, boathouse, monastery, palace
    bottles = sum(bool(BOTTLE_LIKE & set(t.tolist())) for t in top5[1:])
    assert bottles >= 5, top5[1:]


def test_lite_variants_scale_as_the_reference():
    assert [a[4:] for a in lite0.scaled_blocks_args(lite0.LITE0)] == [a[4:] for a in lite0.BLOCKS_ARGS]
    lite2 = lite0.scaled_blocks_args(lite0.LITE2)
    assert [a[0] for a in lite2] == [1, 3, 3, 4, 4, 5, 1]  # first/last stages keep their repeats
    assert [a[5] for a in lite2] == [16, 24, 48, 88, 120, 208, 352]
    with pytest.raises(lite0.LiteWeightsError, match="missing"):
        lite0.convert_state_dict({"_conv_stem.weight": np.zeros((32, 3, 3, 3))}, lite0.LITE1)


# ----------------------------------------------------------------------------------- B0 offline


def test_b0_offline_error_says_what_to_do(monkeypatch):
    from keras.src.utils import file_utils

    from trashcam.train.backbones.efficientnet_b0 import B0WeightsUnavailable

    def offline(*a, **kw):
        try:
            raise urllib.error.URLError("Name or service not known")
        except urllib.error.URLError as e:
            raise Exception(f"URL fetch failure on {a[1] if len(a) > 1 else kw.get('origin')}: {e}") from e

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(B0WeightsUnavailable) as e:
        get("efficientnet_b0").build(input_shape=(224, 224, 3), weights="imagenet")
    msg = str(e.value)
    assert "--weights PATH" in msg and "--weights none" in msg and "--backbone efficientnet_lite0" in msg
    with pytest.raises(FileNotFoundError, match="efficientnet_lite0"):
        get("efficientnet_b0").build(weights="/nonexistent/b0.h5")

# --------------------------------------------------------------------------------------- probe


def test_linear_probe_cli(synthetic_dataset, tmp_path):
    import json

    out = tmp_path / "probe.json"
    p = run_cli("-m", "trashcam.benchmarks.linear_probe", "--data", str(synthetic_dataset), "--image-size", "64",
                "--json", str(out), check=True)
    report = json.loads(out.read_text())
    assert report["n_test"] == 9 and report["n_fit"] == 51 and report["feature_dim"] == 1280
    assert report["test_accuracy"] >= 0.88 and report["model_img_per_s"] > 0
    assert report["config"]["weights"] == "imagenet" and "test accuracy" in p.stdout
    bad = run_cli("-m", "trashcam.benchmarks.linear_probe", "--data", str(tmp_path / "missing"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr


@pytest.mark.slow
def test_linear_probe_full_trashnet5(tmp_path):
    from trashcam.benchmarks.linear_probe import ProbeConfig, run_probe

    report = run_probe(ProbeConfig(data=str(SHARED)))
    assert report["n_fit"] + report["n_test"] == 2025
    assert report["test_accuracy"] >= 0.90, report
