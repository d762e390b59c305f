"""`convert_bundle`: make each requested variant, check it, and install only what passed.

Every file is written to a temp name inside the bundle, loaded with the edge runtime engine, checked against
the Keras float model on the test images (decoded once, shared by all variants) and only then moved over the
old file with `install_file`. A variant that fails leaves the bundle exactly as it was; the others still run.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from trashcam.edge.bundle import Bundle, atomic_write_json, bundle_lock, install_file, now_iso
from trashcam.edge.interpreters import ENGINES

from .check import ERROR, FAIL, PASS, UNCHECKED, run_check
from .config import ConvertConfig
from .variants import VariantSpec, resolve

REPORT = "convert_report.json"


class _Context:
    """What convert functions may need; the representative set is decoded only if INT8 asks for it."""

    def __init__(self, bundle: Bundle, config: ConvertConfig):
        self.bundle, self.config = bundle, config
        self._rep = None

    def representative(self):
        if self._rep is None:
            from .representative import representative_images
            c = self.config
            self._rep = representative_images(self.bundle, c.calib_size, c.seed, c.calib_data, c.data_root)
        return self._rep


def _io_details(engine) -> dict[str, Any]:
    d = {"input_dtype": str(engine.input_dtype)}
    if hasattr(engine, "input_quant"):
        d["input_quant"] = {"scale": float(engine.input_quant[0]), "zero_point": int(engine.input_quant[1])}
        d["output_quant"] = {"scale": float(engine.output_quant[0]), "zero_point": int(engine.output_quant[1])}
        d["input_shape"] = list(engine.input_shape)
    return d


def _eval_images(bundle: Bundle, config: ConvertConfig):
    from trashcam.edge.imageset import folder_images, split_images
    return folder_images(config.data, bundle) if config.data else split_images(bundle, "test", config.data_root)


def _one_variant(spec: VariantSpec, bundle: Bundle, model, ctx: _Context, images, ref_probs) -> dict[str, Any]:
    cfg = ctx.config
    final = bundle.file(spec.file)
    # Hidden, beside the final file (same filesystem: the install is a rename), keeping its suffix for exporters.
    tmp = bundle.path / f".tmp-{os.getpid()}-{spec.file}"
    row: dict[str, Any] = {"variant": spec.name, "file": spec.file, "format": spec.format,
                           "quantization": spec.quantization}
    t0 = time.perf_counter()
    try:
        info = spec.convert(model, tmp, ctx)
        row["convert_s"] = round(time.perf_counter() - t0, 2)
        row["size_bytes"] = tmp.stat().st_size
        engine = ENGINES[spec.format](tmp, cfg.threads)  # loads with the runtime a device will use
        info.update(_io_details(engine))
        if cfg.check:
            check = run_check(engine, images, ref_probs, cfg.max_drop)
        else:
            check = {"status": UNCHECKED, "reason": "--no-check: accuracy not verified"}
        row["check"] = check
        row["status"] = check["status"]
        del engine  # release the file before it is renamed (matters on Windows)
        if check["status"] == FAIL:
            row["installed"] = False
            row["kept_previous"] = final.is_file()
            return row
        install_file_and_register(bundle, spec, tmp, info, check)
        row["installed"] = True
        row["info"] = info
        return row
    except Exception as e:  # one broken converter must not stop the other variants
        row.update(status=ERROR, error=f"{type(e).__name__}: {e}", installed=False, kept_previous=final.is_file())
        return row
    finally:
        tmp.unlink(missing_ok=True)


def install_file_and_register(bundle: Bundle, spec: VariantSpec, tmp: Path, info: dict, check: dict) -> None:
    install_file(tmp, bundle.file(spec.file))
    bundle.set_variant(spec.name, spec.file, format=spec.format, quantization=spec.quantization,
                       created=now_iso(), check=check, **info)
    bundle.save()  # after each variant, so an interrupted run keeps what already passed


def convert_bundle(bundle_dir: str | os.PathLike, config: ConvertConfig = ConvertConfig()) -> dict[str, Any]:
    """Convert, check and install the requested variants; returns the report (also saved as convert_report.json).

    `report["ok"]` is False when any variant failed its check or could not be converted. Holds the bundle's
    writer lock throughout: a second edge-convert (or edge-calibrate) on the same bundle is refused.
    """
    specs = resolve(config.variants)
    with bundle_lock(bundle_dir, holder="edge-convert"):
        return _convert_locked(bundle_dir, config, specs)


def _convert_locked(bundle_dir, config: ConvertConfig, specs: list[VariantSpec]) -> dict[str, Any]:
    from trashcam.edge.imageset import SPLIT_FILE
    from trashcam.train.keras_engine import KerasEngine, load_keras_model

    # Verify only what conversion reads (the Keras model is verified as it loads): the variants being rebuilt
    # may be the broken files this run is meant to repair.
    bundle = Bundle.load(bundle_dir, verify=False)
    bundle.verify([f for f in ("labels.txt", SPLIT_FILE) if f in bundle.metadata["files"]])
    model = load_keras_model(bundle)
    ctx = _Context(bundle, config)
    images = ref_probs = None
    reference: dict[str, Any] = {}
    if config.check:
        images = _eval_images(bundle, config)
        if len(images) == 0:
            raise ValueError(f"no readable test images in {images.source}")
        ref_probs = KerasEngine(model, config.threads).predict(images.x)
        from .check import accuracy
        reference = {"variant": "keras", "accuracy": round(accuracy(ref_probs, images.y), 6),
                     "size_bytes": bundle.variant_path("keras").stat().st_size, **images.summary()}
    else:
        print("WARNING: --no-check: variants are installed WITHOUT the accuracy check and marked UNCHECKED",
              file=sys.stderr)
    # The variants also output the pooled features the uncertainty score needs (train/features.py); the
    # accuracy reference above stays the probabilities-only model.
    from trashcam.train.features import with_features
    deployed = with_features(model)
    rows = []
    for spec in specs:
        print(f"[edge-convert] {spec.name} ...", file=sys.stderr, flush=True)
        rows.append(_one_variant(spec, bundle, deployed, ctx, images, ref_probs))
    report = {
        "created": now_iso(),
        "bundle": str(bundle.path.resolve()),
        "config": config.to_dict(),
        "reference": reference,
        "representative": ctx._rep[1] if ctx._rep else None,
        "variants": {r["variant"]: r for r in rows},
        "ok": all(r["status"] in (PASS, UNCHECKED) for r in rows),
    }
    atomic_write_json(bundle.file(REPORT), report)
    bundle.add_file(REPORT, role="report")
    last = dict(bundle.metadata.get("convert", {}).get("last_status", {}))
    last.update({r["variant"]: r["status"] for r in rows})  # the latest attempt per variant, PASS or not
    bundle.metadata["convert"] = {"updated": report["created"], "config": config.to_dict(), "last_status": last}
    bundle.save()
    return report
