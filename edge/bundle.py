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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 1
METADATA = "metadata.json"
LABELS = "labels.txt"


class BundleError(RuntimeError):
    """A bundle is missing, incomplete, from an unknown schema, or a file in it does not match its checksum."""


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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, then rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600: a service user on the Pi must read the bundle
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "Bundle":
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
        version = meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(f"{meta_path}: schema_version {version!r} is not supported "
                              f"(this trashcam reads {SCHEMA_VERSION})")
        for key in ("labels", "preprocessing", "files"):
            if key not in meta:
                raise BundleError(f"{meta_path}: required key {key!r} is missing")
        b = cls(path, meta)
        if verify:
            b.verify()
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

    def file(self, rel: str) -> Path:
        return self.path / rel

    def variant_path(self, name: str) -> Path:
        if name not in self.variants:
            have = ", ".join(sorted(self.variants)) or "none"
            raise BundleError(f"bundle {self.path} has no variant {name!r} (it has: {have}); "
                              f"make it with `edge-convert {self.path}`")
        return self.path / self.variants[name]["file"]

    def verify(self, files: Iterable[str] | None = None) -> None:
        """Check size and sha256 of the listed files (default: all). Raises BundleError on the first mismatch."""
        recorded = self.metadata["files"]
        for rel in (files if files is not None else list(recorded)):
            info = recorded.get(rel)
            p = self.path / rel
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
        p = self.path / rel
        entry = {"sha256": sha256_file(p), "size_bytes": p.stat().st_size, **info}
        self.metadata.setdefault("files", {})[rel] = entry
        return entry

    def remove_file(self, rel: str) -> None:
        self.metadata.get("files", {}).pop(rel, None)
        (self.path / rel).unlink(missing_ok=True)

    def set_variant(self, name: str, rel: str, **info: Any) -> None:
        """Register a model file as a named variant (its checksum recorded too)."""
        self.add_file(rel, role="model", variant=name)
        self.variants[name] = {"file": rel, **info}

    def save(self) -> None:
        self.metadata["updated"] = now_iso()
        atomic_write_json(self.path / METADATA, self.metadata)

    def export_slim(self, dest: str | os.PathLike, variant: str) -> "Bundle":
        """Copy one model variant + labels + metadata to `dest`: what a device needs, nothing else."""
        self.variant_path(variant)  # clear error when the variant is missing
        self.verify([self.variants[variant]["file"], LABELS])
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        meta = copy.deepcopy(self.metadata)
        keep = {self.variants[variant]["file"], LABELS}
        meta["files"] = {k: v for k, v in meta["files"].items() if k in keep}
        meta["variants"] = {variant: meta["variants"][variant]}
        meta["slim_of"] = str(self.path.resolve())
        for rel in keep:
            shutil.copyfile(self.path / rel, dest / rel)
        slim = Bundle(dest, meta)
        slim.save()
        slim.verify()
        return slim
