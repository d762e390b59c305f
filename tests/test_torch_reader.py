"""The torch-free state_dict reader against crafted files (D15, D16): every one fails with a TorchFileError
before memory is touched or allocated, never a segfault, an out-of-bounds read, a MemoryError or a traceback."""
from __future__ import annotations

import io
import pickle
import struct
import zipfile

import numpy as np
import pytest

from test_backbones import _s, _tuple
from trashcam.train.backbones.torch_legacy import LEGACY_MAGIC, TorchFileError, check_view, load_state_dict


def _i(n: int) -> bytes:
    """An int opcode of any size (LONG1 beyond 32 bits): crafted files use huge numbers."""
    if -2**31 <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _tensor(storage_pid: bytes, offset: int, size, stride) -> bytes:
    return (b"ctorch._utils\n_rebuild_tensor_v2\n"
            + _tuple(storage_pid + b"Q", _i(offset), _tuple(*map(_i, size)), _tuple(*map(_i, stride)),
                     b"\x89", b"ccollections\nOrderedDict\n)R") + b"R")


def _legacy(size, stride, offset=0, numel=8, data_numel=None) -> bytes:
    pid = _tuple(_s("storage"), b"ctorch\nFloatStorage\n", _s("0"), _s("cpu"), _i(numel), b"N")
    body = b"\x80\x02ccollections\nOrderedDict\n)R(" + _s("w") + _tensor(pid, offset, size, stride) + b"u."
    out = io.BytesIO()
    for h in (LEGACY_MAGIC, 1001, {"little_endian": True}):
        out.write(pickle.dumps(h, protocol=2))
    out.write(body + pickle.dumps(["0"], protocol=2))
    n = numel if data_numel is None else data_numel
    out.write(struct.pack("<q", n) + np.arange(min(n, 64), dtype="<f4").tobytes())
    return out.getvalue()


@pytest.mark.parametrize("size, stride, offset, why", [
    ((4,), (-1,), 3, "negative"),  # read 3,2,1,0: inside the buffer, but the reader ignored the sign
    ((60,), (-1,), 0, "negative"),  # 60 floats before the buffer
    ((4_000_000,), (-1,), 0, "negative"),  # the segfault
    ((100_000_000_000,), (0,), 0, "zero"),  # the MemoryError: 1e11 elements from one
    ((3, 3), (1, 1), 0, "overruns"),  # overlapping: reads only 5 elements, but makes 9 from a storage of 8
    ((9,), (1,), 0, "overruns"),
    ((2,), (1,), 7, "overruns"),
    ((2,), (1,), -1, "negative size or offset"),
])
def test_crafted_views_are_refused_before_reading(tmp_path, size, stride, offset, why):
    p = tmp_path / "w.pth"
    p.write_bytes(_legacy(size, stride, offset))
    with pytest.raises(TorchFileError, match=why):
        load_state_dict(p)


def test_valid_views_still_load(tmp_path):
    p = tmp_path / "w.pth"
    p.write_bytes(_legacy((2, 2), (1, 2), 1))
    np.testing.assert_array_equal(load_state_dict(p)["w"], [[1, 3], [2, 4]])
    check_view((1, 4), (0, 1), 0, 4)  # a zero stride on a size-1 dim is what torch writes for unsqueeze
    check_view((0, 5), (5, 1), 0, 0)  # empty


def test_storage_sizes_are_capped_before_allocation(tmp_path):
    p = tmp_path / "huge.pth"
    p.write_bytes(_legacy((1,), (1,), numel=10**11))
    with pytest.raises(TorchFileError, match="not plausible"):
        load_state_dict(p)
    lying = tmp_path / "lying.pth"  # the pickle says 8 elements, the data header says 2**40
    lying.write_bytes(_legacy((1,), (1,), data_numel=2**40))
    with pytest.raises(TorchFileError, match="holds"):
        load_state_dict(lying)


def test_a_zip_bomb_member_is_refused_from_the_directory(tmp_path):
    """D16: a 1.5 MB zip with a 1.5 GB member took 2 GB of RSS before failing."""
    pid = _tuple(_s("storage"), b"ctorch\nFloatStorage\n", _s("0"), _s("cpu"), _i(8))
    pkl = b"\x80\x02ccollections\nOrderedDict\n)R(" + _s("w") + _tensor(pid, 0, (8,), (1,)) + b"u."
    p = tmp_path / "bomb.pth"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m/data.pkl", pkl)
        with zf.open("m/data/0", "w", force_zip64=True) as f:
            block = bytes(1 << 20)
            for _ in range(64):  # 64 MB of zeros, ~64 kB compressed; a larger claim than 8 floats
                f.write(block)
    assert p.stat().st_size < 1 << 20
    with pytest.raises(TorchFileError, match="is 67108864 bytes, its tensors need 32"):
        load_state_dict(p)


@pytest.mark.parametrize("data", [
    b"\x80\x02ccollections\nOrderedDict\n)R(" + b"X\x01\x00\x00\x00w" + b"K\x01",  # cut off
    pickle.dumps(LEGACY_MAGIC, protocol=2) + b"\x80\x02}q\x00.",  # no protocol record
    pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2) + b"\x80\x02K\x01.",  # sys_info int
])
def test_damaged_files_are_one_clear_error(tmp_path, data):
    p = tmp_path / "d.pth"
    p.write_bytes(data)
    with pytest.raises(TorchFileError):
        load_state_dict(p)


def test_edge_train_reports_a_refused_weights_file_as_one_line(synthetic_dataset, tmp_path, monkeypatch):
    """D16: a pickle asking for os.system surfaced from edge-train --weights as a traceback."""
    import trashcam.train.model as model
    from trashcam.train.backbones.efficientnet_lite0 import Lite0WeightsError, converted_weights
    from trashcam.train.config import resolve
    from trashcam.train.pipeline import TrainError, train

    evil = tmp_path / "evil.pth"
    evil.write_bytes(b"".join(pickle.dumps(h, protocol=2) for h in (LEGACY_MAGIC, 1001, {}))
                     + b"\x80\x02cos\nsystem\n" + _s("echo pwned") + b"\x85R.")
    with pytest.raises(Lite0WeightsError, match="refusing to load global os.system") as e:
        converted_weights(evil)

    def build(cfg, n):  # what build_classifier does with that file, without building Lite0 first
        raise e.value

    monkeypatch.setattr(model, "build_classifier", build)
    cfg = resolve("quick", data=str(synthetic_dataset), out=str(tmp_path / "b"), weights=str(evil), image_size=32,
                  cache_dir=str(tmp_path / "cache"), verbose=0)
    with pytest.raises(TrainError, match="refusing to load global os.system") as err:
        train(cfg)
    assert "\n" not in str(err.value)
