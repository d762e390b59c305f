"""A slim edge bundle: one model variant + metadata + labels, i.e. only what `edge-run` on a device reads.

Built in a temp folder beside the destination, checked (checksums, and the model loads and classifies), then
renamed into place, so a failed export never leaves a half bundle where a good one was.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .bundle import Bundle, BundleError, current_umask
from .interpreters import open_engine
from .runtime import choose_variant


def export_edge_bundle(src: str | os.PathLike, dest: str | os.PathLike, variant: str = "auto",
                       force: bool = False, check: bool = True) -> Bundle:
    """Copy `variant` of the bundle at `src` to `dest` (slim). `auto` = what `edge-run --variant auto` would
    pick here, which may not be the fastest on the device: name the variant when the device differs."""
    bundle = Bundle.load(src, verify=False)
    chosen = choose_variant(bundle, variant)
    if chosen not in bundle.variants:
        bundle.variant_path(chosen)  # raises, naming the variants the bundle has
    status = bundle.variants[chosen].get("check", {}).get("status")
    if status == "FAIL" and not force:
        raise BundleError(f"variant {chosen!r} failed its accuracy check in {src}; export it anyway with --force")
    dest = Path(dest)
    if dest.resolve() == Path(src).resolve():
        raise BundleError("the slim bundle must go to a different folder than the source bundle")
    if dest.exists() and any(dest.iterdir()) and not force:
        raise BundleError(f"{dest} exists and is not empty; pass --force to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 would lock out a service running as another user
    try:
        slim = bundle.export_slim(tmp, chosen)
        if check:
            h, w = slim.preprocessing.input_size
            eng = open_engine(slim, chosen, threads=1)
            probs = eng.postprocess(eng.invoke_raw(eng.prepare(np.full((h, w, 3), 128, np.uint8))))
            if probs.shape[-1] != len(slim.labels) or not np.all(np.isfinite(probs)):
                raise BundleError(f"exported {chosen} gives {probs.shape[-1]} outputs for "
                                  f"{len(slim.labels)} labels (or non-finite values)")
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Bundle.load(dest)


def bundle_size(path: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
