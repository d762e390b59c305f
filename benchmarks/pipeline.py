"""`run_benchmark(bundle_dir, BenchConfig) -> dict`: every variant of a bundle, measured the same way.

Accuracy is measured once per variant in this process on images decoded once; latency, load time and peak RSS
are measured per (variant, thread count) in a fresh process each (memory.run_isolated). The result is the JSON
that `--json` writes (schema below, `SCHEMA`); the p50s also go into the bundle's metadata["bench"], which
`edge-run --variant auto` reads to pick the fastest variant that passed its accuracy check.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from trashcam.edge.bundle import Bundle, BundleError, bundle_lock
from trashcam.edge.interpreters import variant_format

from . import environment
from .accuracy import evaluate, load_eval_set
from .config import BenchConfig
from .engines import VariantUnavailable, measure_variant, open_bench_engine
from .latency import evenly_spaced
from .memory import run_isolated
from .score_cost import test_metrics

SCHEMA = "trashcam.bench/1"
ORDER = ("keras", "tflite-fp32", "tflite-fp16", "tflite-int8", "onnx")
FLOAT_REFERENCE = ("keras", "tflite-fp32", "onnx")  # the first of these the bundle has and this machine runs


def _log(msg: str) -> None:
    print(f"edge-bench: {msg}", file=sys.stderr, flush=True)


def select_variants(bundle: Bundle, requested: tuple[str, ...]) -> list[str]:
    have = list(bundle.variants)
    if requested:
        missing = [v for v in requested if v not in have]
        if missing:
            raise BundleError(f"bundle {bundle.path} has no variant(s) {missing} (it has: {', '.join(have) or 'none'})")
        return list(dict.fromkeys(requested))
    if not have:
        raise BundleError(f"bundle {bundle.path} has no model variants; train one with `edge-train`")
    return sorted(have, key=lambda v: (ORDER.index(v) if v in ORDER else len(ORDER), v))


def _accuracies(bundle: Bundle, variants: list[str], images, threads: int, skipped: dict) -> dict[str, dict]:
    out = {}
    for v in variants:
        if v in skipped:
            continue
        try:
            engine = open_bench_engine(bundle, v, threads)
            out[v] = evaluate(engine, images, len(bundle.labels))
            out[v]["uncertainty_test"] = test_metrics(bundle, v, engine, images)
            del engine
        except VariantUnavailable as e:
            skipped[v] = str(e)
        except (RuntimeError, ValueError, OSError) as e:
            skipped[v] = f"accuracy run failed: {type(e).__name__}: {e}"
        if v in out:
            _log(f"{v}: accuracy {out[v]['accuracy']:.4f} on {len(images)} images")
    return out


def _reference(bundle: Bundle, variants: list[str], acc: dict, images, threads: int) -> dict:
    """Float accuracy to compute drops against: keras when it runs here, else the fp32 file (noted)."""
    for ref in FLOAT_REFERENCE:
        if ref not in bundle.variants:
            continue
        if ref not in acc and ref not in variants:  # measure the reference even when not benchmarked
            extra: dict = {}
            acc.update(_accuracies(bundle, [ref], images, threads, extra))
        if ref in acc:
            note = None if ref == "keras" else "keras float model not run here (no TensorFlow); drops are vs " + ref
            return {"variant": ref, "accuracy": acc[ref]["accuracy"], "macro_f1": acc[ref]["macro_f1"], "note": note}
    return {"variant": None, "accuracy": None, "macro_f1": None, "note": "no float variant could be run"}


def _variant_info(bundle: Bundle, v: str) -> dict:
    info = bundle.variants[v]
    f = bundle.variant_path(v)
    size = f.stat().st_size
    return {"name": v, "format": variant_format(bundle, v), "file": info["file"], "size_bytes": size,
            "size_mb": round(size / 1e6, 3), "check_status": info.get("check", {}).get("status")}


def _entry(base: dict, acc: dict | None, ref: dict, threads: int, lat: dict) -> dict:
    a = acc or {}
    drop = None
    if a.get("accuracy") is not None and ref.get("accuracy") is not None:
        drop = round((ref["accuracy"] - a["accuracy"]) * 100.0, 4)
    inv, e2e, frame = lat["latency_ms"], lat["e2e_latency_ms"], lat.get("frame_latency_ms")
    return {**base, "threads": threads, "runtime": lat.get("runtime"),
            "accuracy": a.get("accuracy"), "macro_f1": a.get("macro_f1"), "drop_pp": drop,
            "load_ms": lat.get("load_ms"), "first_invoke_ms": lat.get("first_invoke_ms"),
            "latency_ms": inv, "e2e_latency_ms": e2e, "frame_latency_ms": frame,
            "fps": e2e.get("fps"), "invoke_fps": inv.get("fps"),
            "e2e_over_invoke": round(e2e["p50"] / inv["p50"], 3) if inv.get("p50") else None,
            "frame_over_invoke": round(frame["p50"] / inv["p50"], 3) if inv.get("p50") and frame else None,
            "frame_size": lat.get("frame_size"), "resize": lat.get("resize"), "temperature": lat.get("temperature"),
            "pipelined_latency_ms": lat.get("pipelined_latency_ms"),
            "pipelined_over_invoke": lat.get("pipelined_over_invoke"),
            "pipelined_streams": lat.get("pipelined_streams"),
            "peak_rss_mb": lat.get("peak_rss_mb"), "baseline_rss_mb": lat.get("baseline_rss_mb"),
            "pipelined_peak_rss_mb": lat.get("pipelined_peak_rss_mb"), "uncertainty": lat.get("uncertainty"),
            "uncertainty_test": a.get("uncertainty_test"), "baseline": lat.get("baseline")}


def record_in_bundle(bundle_dir: str | Path, result: dict) -> dict:
    """Merge the e2e (and invoke) p50s into metadata["bench"]; earlier numbers survive only from the same CPU.
    Waits (up to 10 minutes) for a running edge-convert/edge-calibrate rather than lose a finished benchmark."""
    with bundle_lock(bundle_dir, timeout=600, holder="edge-bench --record"):
        return _record_locked(bundle_dir, result)


def _record_locked(bundle_dir: str | Path, result: dict) -> dict:
    b = Bundle.load(bundle_dir, verify=False)  # re-read: another stage may have saved since we started
    cpu = result["environment"]["cpu"].get("model")
    old = b.metadata.get("bench", {})
    same = old.get("cpu") == cpu
    p50 = {k: dict(v) for k, v in old.get("p50_ms", {}).items()} if same else {}
    inv = {k: dict(v) for k, v in old.get("invoke_p50_ms", {}).items()} if same else {}
    for e in result["variants"]:
        p50.setdefault(str(e["threads"]), {})[e["name"]] = e["e2e_latency_ms"]["p50"]
        inv.setdefault(str(e["threads"]), {})[e["name"]] = e["latency_ms"]["p50"]
    b.metadata["bench"] = {"p50_ms": p50, "invoke_p50_ms": inv, "date": result["environment"]["date"], "cpu": cpu,
                           "runs": result["config"]["runs"], "data_images": result["data"]["images"]}
    b.save()
    return b.metadata["bench"]


def run_benchmark(bundle_dir: str | os.PathLike, config: BenchConfig = BenchConfig()) -> dict:
    bundle = Bundle.load(bundle_dir, verify=False)
    variants = select_variants(bundle, config.variants)
    if config.baseline:
        lacking = set(variants) - set(Bundle.load(config.baseline, verify=False).variants)
        if lacking:
            raise ValueError(f"baseline bundle {config.baseline} has no {', '.join(sorted(lacking))}: pick --variants "
                             "that both bundles have")
    threads = config.resolved_threads()
    skipped: dict[str, str] = {}
    for v in variants:
        try:
            bundle.verify([bundle.variants[v]["file"]])
        except BundleError as e:
            skipped[v] = str(e)
    env = environment.collect(threads)
    images = load_eval_set(bundle, config.data, config.data_root, config.max_images)
    if images.skipped:
        _log(f"skipped {len(images.skipped)} unreadable image(s), e.g. {images.skipped[0][0]}")
    acc, ref = {}, {"variant": None, "accuracy": None, "macro_f1": None, "note": "accuracy not measured"}
    if config.accuracy:
        acc = _accuracies(bundle, variants, images, max(threads), skipped)
        ref = _reference(bundle, variants, acc, images, max(threads))
    e2e_paths = evenly_spaced(images.paths, config.e2e_images)

    entries = []
    for v in variants:
        if v in skipped:
            _log(f"{v}: skipped ({skipped[v]})")
            continue
        base = _variant_info(bundle, v)
        for t in threads:
            spec = {"bundle_dir": str(Path(bundle_dir).resolve()), "variant": v, "threads": t,
                    "paths": e2e_paths, "runs": config.runs, "warmup": config.warmup,
                    "baseline": str(Path(config.baseline).resolve()) if config.baseline else None}
            try:
                lat = run_isolated(spec) if config.isolate else measure_variant(**spec)
            except (RuntimeError, VariantUnavailable, ValueError, OSError) as e:
                skipped[v] = str(e)
                _log(f"{v} @ {t} thread(s): skipped ({e})")
                break
            entries.append(_entry(base, acc.get(v), ref, t, lat))
            _log(f"{v} @ {t} thread(s): invoke p50 {lat['latency_ms']['p50']:.2f} ms, "
                 f"e2e p50 {lat['e2e_latency_ms']['p50']:.2f} ms")
    entries = [e for e in entries if e["name"] not in skipped]  # a variant that failed at some thread count

    result = {
        "schema": SCHEMA,
        "tool": "edge-bench",
        "config": config.to_dict(),
        "bundle": {"path": str(Path(bundle_dir).resolve()), "backbone": bundle.metadata.get("backbone"),
                   "labels": bundle.labels, "input_size": list(bundle.preprocessing.input_size)},
        "environment": env,
        "data": images.summary(),
        "reference": ref,
        "variants": entries,
        "skipped": [{"name": v, "reason": r, "requested": v in config.variants} for v, r in skipped.items()],
    }
    if config.record and entries:
        result["recorded"] = record_in_bundle(bundle_dir, result)
    return result
