"""What a valid `metadata.json` looks like, checked on load so a damaged or hand-edited file fails with one clear
line instead of a traceback deep inside a later stage; and which file names may appear in it at all.

Only the structure every stage relies on is checked (types, required keys, confined file names); stage-specific
sections (`training`, `convert`, `bench`, ...) need only be objects.
"""
from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any


class BundleError(RuntimeError):
    """A bundle is missing, incomplete, from an unknown schema, or a file in it does not match its checksum."""


SHA256 = re.compile(r"[0-9a-f]{64}")
SECTIONS = ("calibration", "training", "convert", "bench", "split", "metrics")  # objects when present


def safe_rel(rel: Any) -> str:
    """A file name relative to the bundle that cannot leave it: not absolute, no `..`, no NUL, not empty."""
    if not isinstance(rel, str) or not rel.strip() or "\x00" in rel:
        raise BundleError(f"bundle file name {rel!r} is not a usable relative path")
    posix, win = PurePosixPath(rel), PureWindowsPath(rel)
    if posix.is_absolute() or win.is_absolute() or win.drive or ".." in posix.parts or ".." in win.parts:
        raise BundleError(f"bundle file name {rel!r} points outside the bundle (absolute or with '..'); "
                          "names in metadata.json must be relative to the bundle folder")
    return rel


def _type(value: Any, kind, what: str, where: str) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise BundleError(f"{where}: {what} must be a JSON {_json_name(name)}, got {type(value).__name__} "
                          f"{str(value)[:60]!r}; the bundle is damaged")


def _json_name(py: str) -> str:
    return {"dict": "object", "list": "array", "str": "string", "int": "integer",
            "int/float": "number"}.get(py, py)


def check_metadata(meta: Any, where: Any, version: int) -> None:
    """Raise BundleError (one line) unless `meta` has the structure every stage relies on."""
    _type(meta, dict, "the metadata", where)
    if meta.get("schema_version") != version:
        raise BundleError(f"{where}: schema_version {meta.get('schema_version')!r} is not supported "
                          f"(this trashcam reads {version})")
    for key in ("labels", "preprocessing", "files"):
        if key not in meta:
            raise BundleError(f"{where}: required key {key!r} is missing")
    labels = meta["labels"]
    _type(labels, list, "labels", where)
    for lab in labels:
        _type(lab, str, "every label", where)
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise BundleError(f"{where}: labels must be at least 2 distinct names, got {labels}")
    _preprocessing(meta["preprocessing"], where)
    files = meta["files"]
    _type(files, dict, "files", where)
    for rel, info in files.items():
        safe_rel(rel)
        _type(info, dict, f"files[{rel!r}]", where)
        if not isinstance(info.get("sha256"), str) or not SHA256.fullmatch(info["sha256"]):
            raise BundleError(f"{where}: files[{rel!r}] has no valid sha256; the bundle is damaged")
        if "size_bytes" not in info:
            raise BundleError(f"{where}: files[{rel!r}] has no size_bytes; the bundle is damaged")
        _type(info["size_bytes"], int, f"files[{rel!r}].size_bytes", where)
    variants = meta.get("variants", {})
    _type(variants, dict, "variants", where)
    for name, info in variants.items():
        _type(info, dict, f"variants[{name!r}]", where)
        if "file" not in info:
            raise BundleError(f"{where}: variants[{name!r}] names no file")
        safe_rel(info["file"])
        if info["file"] not in files:
            raise BundleError(f"{where}: variants[{name!r}] file {info['file']!r} is not listed in files "
                              "(no checksum to verify it by)")
    for key in SECTIONS:
        if key in meta:
            _type(meta[key], dict, key, where)
    cal = meta.get("calibration", {})
    for key in ("temperature", "threshold"):
        if key in cal:
            _type(cal[key], (int, float), f"calibration.{key}", where)
    for key in ("temperature_by_variant", "threshold_by_variant"):
        if key in cal:
            _type(cal[key], dict, f"calibration.{key}", where)
            for v, x in cal[key].items():
                _type(x, (int, float), f"calibration.{key}[{v!r}]", where)


def _preprocessing(pre: Any, where: Any) -> None:
    _type(pre, dict, "preprocessing", where)
    size = pre.get("input_size", [224, 224])
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 8192 for n in size)):
        raise BundleError(f"{where}: preprocessing.input_size must be [height, width] in pixels, got {size!r}")
    vr = pre.get("value_range", [0.0, 255.0])
    if not (isinstance(vr, list) and len(vr) == 2 and all(isinstance(v, (int, float)) for v in vr)):
        raise BundleError(f"{where}: preprocessing.value_range must be [low, high], got {vr!r}")
    for key in ("color", "layout", "dtype", "resize", "normalization"):
        if key in pre:
            _type(pre[key], str, f"preprocessing.{key}", where)
    if "channels" in pre:
        _type(pre["channels"], int, "preprocessing.channels", where)
