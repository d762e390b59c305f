"""Read a PyTorch `state_dict` file into numpy arrays without torch, and without running arbitrary pickle code.

The offline Lite0 weights ship as a `torch.save` file. Installing torch (~700 MB) to read 18 MB of floats is
not worth it, and plain `pickle.load` would execute whatever globals the file names. So this is a restricted
unpickler: it knows the handful of globals a state_dict needs (OrderedDict, the tensor rebuild helpers, the
typed storage classes) and refuses everything else.

Two container formats are understood:
- legacy (torch < 1.6, and `_use_new_zipfile_serialization=False`): a stream of pickles — magic number,
  protocol version, sys info, the object itself (storages as persistent ids), then the list of storage keys,
  then each storage's raw bytes as an 8-byte little-endian element count followed by the data;
- zip (torch >= 1.6): `<root>/data.pkl` plus one member `<root>/data/<key>` of raw bytes per storage.

Tensors are rebuilt from (storage, offset, size, stride): saved tensors may be views or non-contiguous
(the Lite0 file stores its conv kernels channels-last), so the strides are honoured and the result copied.
The file is untrusted input: every view is checked against its storage before memory is touched (no negative
strides, no reads past either end, no more elements than the storage holds), and sizes are capped before
anything is allocated, so a crafted file fails with a TorchFileError instead of a crash or a 2 GB allocation.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
# A backbone's weights are tens of MB (Lite0: 18, B0: 21); a file asking for more is damaged or hostile.
MAX_BYTES = 1 << 30
MAX_PICKLE_BYTES = 64 << 20

# Typed storage class name -> numpy dtype. BFloat16 has no numpy dtype: it is widened to float32 on read.
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchFileError(ValueError):
    """The file is not a torch state_dict this reader understands, or it asks for a forbidden global."""


class _StorageType:
    """Stands in for `torch.FloatStorage` etc.: only its element type matters."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Storage:
    """A storage whose bytes arrive later (legacy) or on demand (zip)."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel = dtype, numel
        self.data: np.ndarray | None = None


class _PendingTensor:
    """A tensor whose storage may not be filled yet; made into an ndarray once every storage is read."""

    def __init__(self, storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def materialise(self) -> np.ndarray:
        storage, offset = self.storage, self.offset
        if isinstance(storage, tuple):  # legacy view of a larger storage: (root storage, view offset)
            storage, view_offset = storage
            offset += view_offset
        if not isinstance(storage, _Storage):
            raise TorchFileError(f"a tensor's storage is {type(storage).__name__}, not a storage")
        base = storage.data
        if base is None:
            raise TorchFileError("a tensor refers to a storage whose data was never read")
        check_view(self.size, self.stride, offset, base.size)
        if 0 in self.size:
            return np.zeros(self.size, base.dtype)
        item = base.itemsize
        view = np.lib.stride_tricks.as_strided(base[offset:], shape=self.size,
                                               strides=tuple(s * item for s in self.stride), writeable=False)
        out = np.array(view, copy=True, order="C")  # contiguous, owns its memory
        if storage.dtype == STORAGE_DTYPES["BFloat16Storage"] and base.dtype == np.dtype("<u2"):
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def check_view(size: tuple, stride: tuple, offset: int, storage_numel: int) -> None:
    """Refuse any view that as_strided could not read safely: negative or zero strides (zero only where the size
    is 1), an offset or extent past the storage, more elements than the storage has (no state_dict tensor does).
    Python ints throughout, so huge values cannot overflow into something that passes."""
    what = f"tensor of size {size} stride {stride} offset {offset}"
    if len(size) != len(stride) or not all(type(v) is int for v in (*size, *stride, offset)):
        raise TorchFileError(f"{what}: size and stride must be integers of the same length")
    if offset < 0 or any(n < 0 for n in size):
        raise TorchFileError(f"{what}: negative size or offset")
    if any(s < 0 or (s == 0 and n > 1) for n, s in zip(size, stride)):
        raise TorchFileError(f"{what}: negative or zero strides are not a saved state_dict tensor")
    numel = 1
    for n in size:
        numel *= n
    if numel == 0:
        return
    need = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if need > storage_numel or numel > storage_numel:
        raise TorchFileError(f"{what} overruns its storage of {storage_numel} elements")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, persistent_load):
        super().__init__(file, encoding="utf-8")
        self._persistent = persistent_load

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise TorchFileError(f"refusing to load global {module}.{name}: not part of a plain state_dict")

    def persistent_load(self, pid):
        return self._persistent(pid)


def _storage_dtype(storage_type) -> np.dtype:
    if not isinstance(storage_type, _StorageType):
        raise TorchFileError(f"unsupported storage type {storage_type!r}")
    return storage_type.dtype


def _load_legacy(f) -> tuple[object, dict]:
    def unpickle(persistent=None):
        return _RestrictedUnpickler(f, persistent or (lambda pid: (_ for _ in ()).throw(
            TorchFileError(f"unexpected persistent id {pid!r} in a header record")))).load()

    try:
        magic = unpickle()
    except Exception as e:  # noqa: BLE001 - not a pickle at all
        raise TorchFileError(f"not a torch file: {e}") from e
    if magic != LEGACY_MAGIC:
        raise TorchFileError("not a legacy torch file (wrong magic number)")
    protocol = unpickle()
    if protocol != LEGACY_PROTOCOL:
        raise TorchFileError(f"unsupported legacy torch protocol {protocol}")
    sys_info = unpickle()
    if not sys_info.get("little_endian", True):
        raise TorchFileError("big-endian torch files are not supported")

    storages: dict[str, _Storage] = {}

    def persistent(pid):
        # ('storage', storage_type, root_key, location, numel, view_metadata)
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise TorchFileError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel, view_meta = (tuple(pid) + (None,))[:6]
        dtype = _storage_dtype(storage_type)
        root = storages.setdefault(str(key), _Storage(dtype, _numel(numel, dtype)))
        if view_meta is not None:
            _view_key, view_offset, _view_size = view_meta
            return (root, int(view_offset))
        return root

    obj = unpickle(persistent)
    keys = unpickle()
    if not isinstance(keys, list):
        raise TorchFileError("the storage key list is missing")
    left = _remaining(f)
    for key in keys:
        key = str(key)
        if key not in storages:
            raise TorchFileError(f"storage {key} is listed but no tensor uses it")
        st = storages[key]
        head = f.read(8)
        left -= len(head)
        if len(head) != 8:
            raise TorchFileError(f"file truncated before storage {key}")
        (numel,) = struct.unpack("<q", head)
        if numel != st.numel:
            raise TorchFileError(f"storage {key} holds {numel} elements, its tensors said {st.numel}")
        nbytes = numel * st.dtype.itemsize
        if nbytes > left:
            raise TorchFileError(f"file truncated inside storage {key} ({left} of {nbytes} bytes left)")
        left -= nbytes
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise TorchFileError(f"file truncated inside storage {key} ({len(raw)} of {nbytes} bytes)")
        st.data = np.frombuffer(raw, dtype=st.dtype)
    return obj, storages


def _load_zip(path: Path) -> tuple[object, dict]:
    with zipfile.ZipFile(path) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise TorchFileError(f"{path}: zip file without a single data.pkl")
        prefix = pkl[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        total = [0]

        def member(name: str, expected: int | None, cap: int) -> bytes:
            # sizes from the zip directory, before decompressing: a 1.5 MB zip can claim a 1.5 GB member
            try:
                info = zf.getinfo(name)
            except KeyError:
                raise TorchFileError(f"{path}: member {name} is missing") from None
            if expected is not None and info.file_size != expected:
                raise TorchFileError(f"{path}: member {name} is {info.file_size} bytes, its tensors need {expected}")
            total[0] += info.file_size
            if info.file_size > cap or total[0] > MAX_BYTES:
                raise TorchFileError(f"{path}: member {name} ({info.file_size} bytes) exceeds the size limit "
                                     f"for a weights file ({MAX_BYTES >> 20} MB in all)")
            return zf.read(name)

        def persistent(pid):
            # ('storage', storage_type, key, location, numel)
            if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
                raise TorchFileError(f"unsupported persistent id {pid!r}")
            _, storage_type, key, _location, numel = pid[:5]
            key = str(key)
            if key not in storages:
                dtype = _storage_dtype(storage_type)
                st = _Storage(dtype, _numel(numel, dtype))
                st.data = np.frombuffer(member(f"{prefix}data/{key}", st.numel * dtype.itemsize, MAX_BYTES),
                                        dtype=st.dtype)
                storages[key] = st
            return storages[key]

        obj = _RestrictedUnpickler(io.BytesIO(member(pkl[0], None, MAX_PICKLE_BYTES)), persistent).load()
    return obj, storages


def _numel(numel, dtype: np.dtype) -> int:
    if type(numel) is not int or numel < 0 or numel * dtype.itemsize > MAX_BYTES:
        raise TorchFileError(f"a storage of {numel!r} elements is not plausible in a weights file "
                             f"(limit {MAX_BYTES >> 20} MB)")
    return numel


def _remaining(f) -> int:
    here = f.tell()
    end = f.seek(0, os.SEEK_END)
    f.seek(here)
    return end - here


def _resolve(obj):
    if isinstance(obj, _PendingTensor):
        return obj.materialise()
    if isinstance(obj, dict):
        return {k: _resolve(v) for k, v in obj.items()}
    return obj


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A torch `state_dict` file (legacy or zip) -> {name: contiguous np.ndarray}, torch not needed.

    Non-tensor entries are dropped; a nested {"state_dict": {...}} checkpoint is unwrapped.
    Raises TorchFileError for anything that is not a plain state_dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise TorchFileError(f"{path}: no such file")
    try:
        if zipfile.is_zipfile(path):
            obj, _ = _load_zip(path)
        else:
            with open(path, "rb") as f:
                obj, _ = _load_legacy(f)
        obj = _resolve(obj)
    except TorchFileError:
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, zipfile.BadZipFile, KeyError, IndexError, TypeError,
            ValueError, AttributeError, OverflowError, MemoryError, RecursionError) as e:
        # a damaged or crafted file: one clear error, never a traceback from deep inside the unpickler
        raise TorchFileError(f"{path}: not a readable torch state_dict ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise TorchFileError(f"{path}: expected a state_dict (a dict of tensors), got {type(obj).__name__}")
    out = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if not out:
        raise TorchFileError(f"{path}: no tensors found")
    return out
