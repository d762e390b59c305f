"""TFLite Model Metadata: makes a .tflite file self-describing for apps that are not ours.

MediaPipe Tasks (`ImageClassifier` on Android, iOS, web, Python) and other TFLite tooling read the metadata
flatbuffer that tflite-support's writers embed: a buffer named TFLITE_METADATA in the model (schema
"M001", convert/_metadata_schema_fb.py) plus the associated files (here the label file) appended to the
.tflite as an uncompressed zip. Without it MediaPipe refuses a float input ("requires specifying
NormalizationOptions metadata") and returns empty class names. We write the same structure, from the
published schema, with only the `flatbuffers` package.

What we describe comes from the bundle's `Preprocessing` (the contract every runtime follows): RGB pixels
squashed to the input size, the model taking 0..255 (normalisation is inside the model, so mean 0 / std 1).
A preprocessing the schema cannot express raises `MetadataError`, which fails that variant's conversion and
keeps the previous file. The metadata adds bytes to the file and changes no output: the interpreter ignores
both the metadata buffer and the appended zip.

Outputs: the first output whose last dimension is the number of labels is the class probabilities (labels
attached); any other output (e.g. pooled features) is described as a feature tensor without labels.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from . import tf_private

METADATA_BUFFER = "TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.0.0"  # ImageProperties, NormalizationOptions, Stats, TENSOR_AXIS_LABELS: all 1.0.0
LABEL_FILE = "labels.txt"
COLOR_SPACES = ("RGB", "GRAYSCALE")


class MetadataError(ValueError):
    """The bundle's preprocessing or the model's tensors cannot be described by TFLite Model Metadata."""


def normalization(pre) -> tuple[float, float]:
    """(mean, std) with (pixel - mean) / std == what the model takes, for pixels 0..255; or MetadataError."""
    if pre.normalization != "in_model":
        raise MetadataError(f"preprocessing normalization {pre.normalization!r} cannot be described as TFLite "
                            "metadata (only 'in_model', i.e. a linear map of 0..255 pixels, can)")
    if pre.layout != "NHWC":
        raise MetadataError(f"preprocessing layout {pre.layout!r}: TFLite image metadata describes NHWC only")
    if str(pre.color).upper() not in COLOR_SPACES:
        raise MetadataError(f"preprocessing color {pre.color!r}: TFLite metadata knows only {COLOR_SPACES}")
    if pre.channels != (1 if str(pre.color).upper() == "GRAYSCALE" else 3):
        raise MetadataError(f"preprocessing has {pre.channels} channels for color {pre.color!r}")
    lo, hi = (float(v) for v in pre.value_range)
    if not hi > lo:
        raise MetadataError(f"preprocessing value_range {pre.value_range} is empty")
    std = 255.0 / (hi - lo)  # pixel p in 0..255 -> lo + p * (hi - lo) / 255 == (p - mean) / std
    return 0.0 - lo * std, std  # 0.0 - : no "-0.0" in the JSON summary


def _input_meta(fb, pre, shape: list[int]):
    mean, std = normalization(pre)
    h, w = (int(v) for v in pre.input_size)
    if len(shape) == 4 and list(shape[1:3]) != [h, w]:
        raise MetadataError(f"model input shape {shape} does not match the bundle's input_size {[h, w]}")
    props = fb.ImagePropertiesT()
    props.colorSpace = getattr(fb.ColorSpaceType, str(pre.color).upper())
    size = fb.ImageSizeT()
    size.width, size.height = w, h
    props.defaultSize = size
    content = fb.ContentT()
    content.contentPropertiesType = fb.ContentProperties.ImageProperties
    content.contentProperties = props
    norm = fb.NormalizationOptionsT()
    norm.mean, norm.std = [mean], [std]
    unit = fb.ProcessUnitT()
    unit.optionsType = fb.ProcessUnitOptions.NormalizationOptions
    unit.options = norm
    stats = fb.StatsT()
    stats.min, stats.max = [0.0], [255.0]
    t = fb.TensorMetadataT()
    t.name = "image"
    t.description = (f"{pre.color} image, {w}x{h} (width x height), pixels 0..255; resize the whole image to "
                     f"this size ({pre.resize}, no crop), as in training")
    t.content, t.processUnits, t.stats = content, [unit], stats
    return t


def _feature_content(fb):
    content = fb.ContentT()
    content.contentPropertiesType = fb.ContentProperties.FeatureProperties
    content.contentProperties = fb.FeaturePropertiesT()
    return content


def _probability_meta(fb, n_labels: int):
    t = fb.TensorMetadataT()
    t.name = "probability"
    t.description = f"Probabilities of the {n_labels} labels (softmax, before the bundle's temperature)."
    t.content = _feature_content(fb)
    stats = fb.StatsT()
    stats.min, stats.max = [0.0], [1.0]
    t.stats = stats
    labels = fb.AssociatedFileT()
    labels.name = LABEL_FILE
    labels.description = "Labels for the categories, one per line, in output order."
    labels.type = fb.AssociatedFileType.TENSOR_AXIS_LABELS
    t.associatedFiles = [labels]
    return t


def _feature_meta(fb, i: int, shape: list[int]):
    t = fb.TensorMetadataT()
    t.name = f"output_{i}"
    t.description = f"Feature tensor of shape {shape} (no labels); not a classification."
    t.content = _feature_content(fb)
    return t


def _probability_output(shapes: list[list[int]], n_labels: int) -> int:
    for i, s in enumerate(shapes):
        if s and int(s[-1]) == n_labels:
            return i
    raise MetadataError(f"no model output has {n_labels} values (one per label); output shapes: {shapes}")


def build_metadata(bundle, variant: str, input_shapes: list[list[int]], output_shapes: list[list[int]]
                   ) -> tuple[bytes, dict[str, Any]]:
    """The metadata flatbuffer for a model with these tensors, and a JSON summary for metadata.json."""
    from . import _metadata_schema_fb as fb
    import flatbuffers

    if len(input_shapes) != 1:
        raise MetadataError(f"an image classifier has one input; this model has {len(input_shapes)}")
    labels = bundle.labels
    pre = bundle.preprocessing
    prob = _probability_output(output_shapes, len(labels))
    outputs = [_probability_meta(fb, len(labels)) if i == prob else _feature_meta(fb, i, s)
               for i, s in enumerate(output_shapes)]
    sub = fb.SubGraphMetadataT()
    sub.inputTensorMetadata = [_input_meta(fb, pre, input_shapes[0])]
    sub.outputTensorMetadata = outputs
    meta = fb.ModelMetadataT()
    backbone = bundle.metadata.get("backbone", "unknown")
    meta.name = f"trashcam {backbone} ({variant})"
    meta.description = (f"Waste-sorting image classifier: one of {len(labels)} labels ({', '.join(labels)}). "
                        f"Variant {variant}, made by trashcam edge-convert from the bundle's Keras model.")
    meta.version = str(bundle.metadata.get("created", "unknown"))
    meta.author = "trashcam"
    meta.subgraphMetadata = [sub]
    meta.minParserVersion = MIN_PARSER_VERSION
    b = flatbuffers.Builder(0)
    b.Finish(meta.Pack(b), FILE_IDENTIFIER)
    mean, std = normalization(pre)
    summary = {"schema_identifier": FILE_IDENTIFIER.decode(), "min_parser_version": MIN_PARSER_VERSION,
               "name": meta.name, "version": meta.version,
               "input": {"size_hw": [int(v) for v in pre.input_size], "color_space": str(pre.color).upper(),
                         "mean": [mean], "std": [std]},
               "outputs": [o.name for o in outputs], "associated_files": [LABEL_FILE]}
    return bytes(b.Output()), summary


def _tensor_shapes(model, indices) -> list[list[int]]:
    tensors = model.subgraphs[0].tensors
    return [[int(d) for d in tensors[i].shape] for i in indices]


def with_metadata(data: bytes, bundle, variant: str) -> tuple[bytes, dict[str, Any]]:
    """`data` (a .tflite from the converter) with TFLite Model Metadata and the label file embedded."""
    model = tf_private.read_model(data)
    if zipfile.is_zipfile(io.BytesIO(data)):
        raise MetadataError("the model already carries associated files; embed metadata into fresh converter "
                            "output only")
    sub = model.subgraphs[0]
    prob = _probability_output(_tensor_shapes(model, sub.outputs), len(bundle.labels))
    if prob:  # the converter lists the features output first; apps (MediaPipe) read output 0 as the classes
        order = [int(i) for i in sub.outputs]
        order.insert(0, order.pop(prob))
        sub.outputs = np.asarray(order, dtype=np.asarray(sub.outputs).dtype)
    meta_bytes, summary = build_metadata(bundle, variant, _tensor_shapes(model, sub.inputs),
                                         _tensor_shapes(model, sub.outputs))
    schema = tf_private.schema()
    buf = schema.BufferT()
    buf.data = np.frombuffer(meta_bytes, np.uint8)
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() != METADATA_BUFFER]
    model.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name = METADATA_BUFFER
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    out = io.BytesIO(tf_private.write_model(model))
    with zipfile.ZipFile(out, "a", zipfile.ZIP_STORED) as zf:  # as tflite-support's populator does
        zf.writestr(LABEL_FILE, "\n".join(bundle.labels) + "\n")
    summary["bytes_added"] = len(out.getvalue()) - len(data)
    return out.getvalue(), summary


def embed(path: str | Path, bundle, variant: str) -> dict[str, Any]:
    """Rewrite the .tflite at `path` with metadata; returns the summary recorded in metadata.json."""
    path = Path(path)
    data, summary = with_metadata(path.read_bytes(), bundle, variant)
    path.write_bytes(data)
    return summary


def read(data: bytes) -> tuple[Any, dict[str, bytes]]:
    """(ModelMetadataT, {associated file name: bytes}) of a .tflite; for checks and tests."""
    from . import _metadata_schema_fb as fb

    model = tf_private.read_model(data)
    meta = None
    for m in model.metadata or []:
        if m.name.decode() == METADATA_BUFFER:
            raw = np.asarray(model.buffers[m.buffer].data, np.uint8).tobytes()
            if not fb.ModelMetadata.ModelMetadataBufferHasIdentifier(raw, 0):
                raise MetadataError("TFLITE_METADATA buffer lacks the M001 identifier")
            meta = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAs(raw, 0))
    files = {}
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            files = {n: zf.read(n) for n in zf.namelist()}
    return meta, files
