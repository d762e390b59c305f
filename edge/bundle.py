"""The model bundle: the one directory that every stage reads and extends.

`metadata.json` is the contract. It says what the model expects (`preprocessing`), what it says (`labels`,
`calibration`), where it came from (`training`) and that its files are intact (`files`: sha256 + size of every
artefact). Stages add artefacts with `Bundle.add_file` and persist with `Bundle.save`, which writes atomically so
a crash never leaves a half-written metadata file behind.
"""
from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .bundle_schema import BundleError, check_metadata, safe_rel

SCHEMA_VERSION = 1
METADATA = "metadata.json"
LABELS = "labels.txt"
LOCK = ".lock"


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input. Every runtime follows this; nothing re-guesses it.

    The models take RGB pixels in `value_range` (0..255) as `dtype`; normalisation happens inside the model,
    so float and quantised variants share the same decoding and resizing. Quantised inputs carry their own
    scale/zero-point per variant (see `variants`).
    """

    input_size: tuple[int, int] = (224, 224)  # (height, width)
    channels: int = 3
    color: str = "RGB"
    layout: str = "NHWC"
    dtype: str = "float32"
    value_range: tuple[float, float] = (0.0, 255.0)
    # images are squashed to input_size (no crop), as in training: "linear" is OpenCV's INTER_LINEAR (edge.resize),
    # "bilinear" PIL's antialiased filter, what earlier bundles were made with (and read when metadata has no resize)
    resize: str = "linear"
    normalization: str = "in_model"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        d = dict(d)
        d["input_size"] = tuple(d.get("input_size", cls.input_size))
        d["value_range"] = tuple(d.get("value_range", cls.value_range))
        d.setdefault("resize", "bilinear")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["value_range"] = list(self.value_range)
        return d


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write to a temp file beside `path`, fsync, then rename: readers see the old file or the new one.
    `durable=False` skips the fsyncs: still all-or-nothing for readers and on a full disk, but a power cut may
    lose the newest file; for frequent, expendable files such as saved frames."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600: a service user on the Pi must read the bundle
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def install_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move a finished artefact into place atomically (same filesystem: rename; else copy to temp, rename)."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError:
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
        os.close(fd)
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, dst)
    _fsync_dir(dst.parent)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class Bundle:
    """A bundle directory and its metadata. Create with `Bundle.create`, open with `Bundle.load`."""

    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    # metadata as last read or written: `save` merges with what other processes saved since
    _base: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, labels: Iterable[str], preprocessing: Preprocessing,
               backbone: str, **extra: Any) -> "Bundle":
        labels = [str(x) for x in labels]
        if len(labels) < 2:
            raise BundleError(f"a classifier needs at least 2 labels, got {labels}")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        b = cls(path, {
            "schema_version": SCHEMA_VERSION,
            "created": now_iso(),
            "backbone": backbone,
            "labels": labels,
            "preprocessing": preprocessing.to_dict(),
            "variants": {},
            "files": {},
            **extra,
        })
        atomic_write_bytes(path / LABELS, ("\n".join(labels) + "\n").encode())
        b.add_file(LABELS)
        return b

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool | Iterable[str] = True) -> "Bundle":
        """Open and validate a bundle. `verify`: True checks every file's size and sha256, False none, a list
        only those files (what a stage reads: a broken variant it is about to rebuild must not block it)."""
        path = Path(path)
        meta_path = path / METADATA
        if not path.is_dir():
            raise BundleError(f"no bundle at {path}: not a directory (train one with `edge-train`)")
        if not meta_path.is_file():
            raise BundleError(f"{path} is not a bundle: {METADATA} is missing")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{meta_path} is not valid JSON ({e}); the bundle is damaged") from e
        check_metadata(meta, meta_path, SCHEMA_VERSION)
        b = cls(path, meta)
        b._base = copy.deepcopy(meta)
        if verify is True:
            b.verify()
        elif verify:
            b.verify(list(verify))
        return b

    # -- reading ------------------------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return list(self.metadata["labels"])

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.metadata["preprocessing"])

    @property
    def variants(self) -> dict[str, dict[str, Any]]:
        return self.metadata.setdefault("variants", {})

    @property
    def calibration(self) -> dict[str, Any]:
        return self.metadata.get("calibration", {})

    @property
    def calibrated_on(self) -> str:
        """The split edge-calibrate fitted on: "val", or "test" for a bundle whose stage 2 trained on val
        (then test-split calibration numbers are in-sample)."""
        return self.calibration.get("split", "val")

    def file(self, rel: str) -> Path:
        """`rel` inside the bundle. Names come from metadata a user may have edited (or been sent): an absolute
        path, `..`, or a symlink whose real path lies outside the bundle is refused, for reading and writing."""
        p = self.path / safe_rel(rel)
        root = os.path.realpath(self.path)
        if os.path.commonpath([root, os.path.realpath(p)]) != root:
            raise BundleError(f"bundle file {rel!r} resolves to {os.path.realpath(p)}, outside the bundle "
                              f"{self.path}; refusing to read or write it")
        return p

    def variant_path(self, name: str) -> Path:
        if name not in self.variants:
            have = ", ".join(sorted(self.variants)) or "none"
            raise BundleError(f"bundle {self.path} has no variant {name!r} (it has: {have}); "
                              f"make it with `edge-convert {self.path}`")
        return self.file(self.variants[name]["file"])

    def verify(self, files: Iterable[str] | None = None) -> None:
        """Check size and sha256 of the listed files (default: all). Raises BundleError on the first mismatch."""
        recorded = self.metadata["files"]
        for rel in (files if files is not None else list(recorded)):
            info = recorded.get(rel)
            p = self.file(rel)
            if info is None:
                raise BundleError(f"{rel} is not recorded in {self.path / METADATA}")
            if not p.is_file():
                raise BundleError(f"bundle file {p} is missing")
            size = p.stat().st_size
            if size != info["size_bytes"]:
                raise BundleError(f"bundle file {p} is {size} bytes, metadata says {info['size_bytes']}: "
                                  "truncated or replaced; re-copy the bundle or re-run the stage that made it")
            if sha256_file(p) != info["sha256"]:
                raise BundleError(f"bundle file {p} does not match its sha256 in metadata: "
                                  "corrupted or edited; re-copy the bundle or re-run the stage that made it")

    # -- writing ------------------------------------------------------------------------------------------
    def add_file(self, rel: str, **info: Any) -> dict[str, Any]:
        """Record size + sha256 of a file already in the bundle directory (call after it is in place)."""
        p = self.file(rel)
        entry = {"sha256": sha256_file(p), "size_bytes": p.stat().st_size, **info}
        self.metadata.setdefault("files", {})[rel] = entry
        return entry

    def set_variant(self, name: str, rel: str, **info: Any) -> None:
        """Register a model file as a named variant (its checksum recorded too)."""
        self.add_file(rel, role="model", variant=name)
        self.variants[name] = {"file": rel, **info}

    def save(self) -> None:
        """Write metadata atomically, first merging what another process saved since this one read it: per
        top-level key, and per entry of `variants` and `files` (a key this process changed wins)."""
        meta_path = self.path / METADATA
        if self._base is not None:
            try:
                disk = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                disk = None
            if isinstance(disk, dict) and disk != self._base:
                self.metadata = merge_metadata(self._base, self.metadata, disk)
        self.metadata["updated"] = now_iso()
        atomic_write_json(meta_path, self.metadata)
        self._base = copy.deepcopy(self.metadata)

    def lock(self, timeout: float = 0.0, holder: str = ""):
        """`with bundle.lock(): ...` -- see `bundle_lock`."""
        return bundle_lock(self.path, timeout, holder)

    def export_slim(self, dest: str | os.PathLike, variant: str) -> "Bundle":
        """Copy one model variant + labels + metadata to `dest`: what a device needs, nothing else."""
        self.variant_path(variant)  # clear error when the variant is missing
        self.verify([self.variants[variant]["file"], LABELS])
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        meta = copy.deepcopy(self.metadata)
        keep = {self.variants[variant]["file"], LABELS}
        ood = self.calibration.get("ood_by_variant", {}).get(variant, {}).get("file")
        if ood:  # the variant's uncertainty-score arrays (edge/ood.py) travel with it
            keep.add(ood)
            self.verify([ood])
            (dest / ood).parent.mkdir(parents=True, exist_ok=True)
        meta["files"] = {k: v for k, v in meta["files"].items() if k in keep}
        meta["variants"] = {variant: meta["variants"][variant]}
        meta["slim_of"] = str(self.path.resolve())
        slim = Bundle(dest, meta)
        for rel in keep:
            target = slim.file(rel)  # confined to dest: a crafted name cannot overwrite anything else
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.file(rel), target)
        slim.save()
        slim.verify()
        return slim


def merge_metadata(base: dict[str, Any], ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Three-way merge of metadata: what this process changed since `base` wins, what another process changed
    (`theirs`, on disk now) is kept. Per top-level key, and per entry of `variants` and `files`."""
    def merge(b: dict, o: dict, t: dict, nested: tuple[str, ...]) -> dict:
        out = {}
        for k in list(t) + [k for k in o if k not in t]:
            if k in nested and isinstance(o.get(k), dict) and isinstance(t.get(k), dict):
                out[k] = merge(b.get(k) if isinstance(b.get(k), dict) else {}, o[k], t[k], ())
            elif k in o and (k not in b or o[k] != b[k]):
                out[k] = o[k]  # changed (or added) here
            elif k not in o and k in b:
                continue  # deleted here
            elif k in t:
                out[k] = t[k]
        return out
    return merge(base, ours, theirs, ("variants", "files"))


_HELD: dict[str, int] = {}  # re-entrant within a process: a stage may call another that locks too


@contextmanager
def bundle_lock(path: str | os.PathLike, timeout: float = 0.0, holder: str = "") -> Iterator[None]:
    """Advisory lock on BUNDLE/.lock for writers (edge-convert, edge-calibrate, edge-bench --record), so two of
    them cannot interleave installs and metadata saves. Waits up to `timeout` seconds, then BundleError naming
    who holds it. Readers need no lock: every write is atomic."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks; save()'s merge still keeps both writers' metadata
        yield
        return
    import time
    key = os.path.realpath(path)
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    if not Path(path).is_dir():
        raise BundleError(f"no bundle at {path}: not a directory (train one with `edge-train`)")
    try:
        f = open(Path(path) / LOCK, "a+")
    except OSError as e:
        raise BundleError(f"cannot lock bundle {path} for writing: {e}") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.seek(0)
                    who = f.read().strip() or "another process"
                    raise BundleError(f"bundle {path} is being changed by {who}; wait for it to finish "
                                      "and run this again") from None
                time.sleep(0.1)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}{' (' + holder + ')' if holder else ''}\n")
        f.flush()
        _HELD[key] = 1
        try:
            yield
        finally:
            _HELD.pop(key, None)
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        f.close()
