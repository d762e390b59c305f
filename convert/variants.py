"""The named deployable variants: one table entry each (name, file, format, quantisation, how to make it).

Adding a variant is adding a row here; `edge-convert`, the check, the bundle metadata and the runtimes' engine
table (edge.interpreters.ENGINES, keyed by `format`) all follow from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .onnx import convert_onnx
from .int8 import convert_int8
from .tflite import convert_fp16, convert_fp32

# convert(model, out_path, ctx) writes the file and returns extra metadata for the variant entry.
ConvertFn = Callable[[Any, Path, Any], dict[str, Any]]


def described(convert: ConvertFn, variant: str) -> ConvertFn:
    """`convert`, then TFLite Model Metadata + the label file embedded (convert/metadata.py), so apps outside
    trashcam (MediaPipe Tasks) read size, normalisation and labels from the file itself. Runs before the
    check, so what is checked, installed and checksummed is the final file; a bundle whose preprocessing
    cannot be described fails this variant (previous file kept)."""
    def convert_described(model, out: Path, ctx) -> dict[str, Any]:
        from .metadata import embed
        info = convert(model, out, ctx)
        info["tflite_metadata"] = embed(out, ctx.bundle, variant)
        return info
    return convert_described


@dataclass(frozen=True)
class VariantSpec:
    name: str
    file: str
    format: str  # key of edge.interpreters.ENGINES
    quantization: str
    convert: ConvertFn
    flag: str  # the edge-convert flag that selects it
    help: str


VARIANTS: dict[str, VariantSpec] = {v.name: v for v in (
    VariantSpec("tflite-fp32", "model_fp32.tflite", "tflite", "none", described(convert_fp32, "tflite-fp32"), "fp32",
                "TFLite, float32 (the reference deployable; largest)"),
    VariantSpec("tflite-fp16", "model_fp16.tflite", "tflite", "float16-weights",
                described(convert_fp16, "tflite-fp16"), "fp16",
                "TFLite, float16 weights, float32 compute (about half the size, ~no accuracy change)"),
    VariantSpec("tflite-int8", "model_int8.tflite", "tflite", "int8-full", described(convert_int8, "tflite-int8"),
                "int8",
                "TFLite, full-integer INT8 with a representative dataset (about a quarter the size; fastest on a Pi)"),
    VariantSpec("onnx", "model.onnx", "onnx", "none", convert_onnx, "onnx",
                "ONNX, float32 (for onnxruntime)"),
)}


def resolve(names: tuple[str, ...] | list[str]) -> list[VariantSpec]:
    """Variant names (or their flags) -> specs in table order; empty means all."""
    if not names:
        return list(VARIANTS.values())
    by_flag = {v.flag: v.name for v in VARIANTS.values()}
    wanted = set()
    for n in names:
        n = by_flag.get(n, n)
        if n not in VARIANTS:
            raise ValueError(f"unknown variant {n!r}; known: {', '.join(VARIANTS)}")
        wanted.add(n)
    return [v for v in VARIANTS.values() if v.name in wanted]
