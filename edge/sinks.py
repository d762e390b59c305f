"""Where live results go: the console line, a JSONL event log, annotated frames on disk.

Every sink gets the same per-frame record (a dict made by `trashcam.edge.live`) through `frame(frame, rec)`,
unreadable frames through `skip(frame)`, and the run summary through `close(summary)`.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .smoothing import UNCERTAIN
from .sources import Frame

_FONTS: dict[int, Any] = {}


def _font(size: int):
    if size not in _FONTS:
        try:
            _FONTS[size] = ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
            _FONTS[size] = ImageFont.load_default()
    return _FONTS[size]


def annotate(image: np.ndarray, rec: dict[str, Any] | None) -> Image.Image:
    """The frame with the shown decision in a banner: green when a class is stable, amber when uncertain."""
    img = Image.fromarray(image)
    if img.width < 160:  # tiny inference frames: enlarge so the text stays legible
        s = 160 / img.width
        img = img.resize((160, max(1, round(img.height * s))), Image.Resampling.NEAREST)
    if not rec:
        return img
    draw = ImageDraw.Draw(img)
    size = max(10, img.height // 16)
    label = rec.get("decision") or "..."
    text = f"{label} {rec.get('decision_confidence', 0):.0%}" if rec.get("decision") else label
    sub = f"{rec.get('label', '')} {rec.get('confidence', 0):.2f} | {rec.get('fps', 0):.1f} fps"
    colour = (255, 170, 0) if label in (UNCERTAIN, "...") else (40, 200, 60)
    pad = max(2, size // 4)
    draw.rectangle([0, 0, img.width, size * 2 + pad * 3], fill=(0, 0, 0))
    draw.text((pad, pad), text, fill=colour, font=_font(size))
    draw.text((pad, size + pad * 2), sub, fill=(220, 220, 220), font=_font(max(8, size * 3 // 4)))
    return img


def to_jpeg(img: Image.Image, quality: int = 80) -> bytes:
    import io
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class Sink:
    def frame(self, frame: Frame, rec: dict[str, Any]) -> None:
        pass

    def skip(self, frame: Frame) -> None:
        pass

    def close(self, summary: dict[str, Any]) -> None:
        pass


class ConsoleSink(Sink):
    """One live line (rewritten in place on a terminal, ~4 Hz); on a pipe or the journal a line per decision
    change and one every `every` seconds, so logs stay readable."""

    def __init__(self, stream=None, every: float = 10.0):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every, self._last = every, 0.0

    @staticmethod
    def line(rec: dict[str, Any]) -> str:
        d = rec.get("decision") or "..."
        return (f"{d:>10} {rec.get('decision_confidence', 0):4.2f} | now {rec['label']} {rec['confidence']:.2f}"
                f" | {rec.get('fps', 0):5.1f} fps | invoke {rec['invoke_ms']:6.1f} ms | e2e {rec['e2e_ms']:6.1f} ms"
                f" | frames {rec.get('frames', 0)} skipped {rec.get('skipped', 0)}")

    def frame(self, frame: Frame, rec: dict[str, Any]) -> None:
        now = time.monotonic()
        if self.tty:
            if now - self._last >= 0.25 or rec.get("changed"):
                self.stream.write("\r\x1b[K" + self.line(rec))
                self.stream.flush()
                self._last = now
        elif rec.get("changed") or now - self._last >= self.every:
            self.stream.write(self.line(rec) + "\n")
            self.stream.flush()
            self._last = now

    def skip(self, frame: Frame) -> None:
        msg = f"skipped {frame.name or frame.index}: {frame.error}"
        self.stream.write(("\r\x1b[K" if self.tty else "") + msg + "\n")
        self.stream.flush()

    def close(self, summary: dict[str, Any]) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class JsonlSink(Sink):
    """`--log events.jsonl`: a `start` record (the resolved config), then one record per decision change
    (`mode="changes"`) or per frame (`mode="frames"`), every skipped frame, and a final `summary`.
    Appends, and flushes each line so a power cut loses at most the line being written."""

    def __init__(self, path: str | os.PathLike, mode: str = "changes", start: dict[str, Any] | None = None):
        if mode not in ("changes", "frames"):
            raise ValueError(f"log mode {mode!r}: use changes or frames")
        self.path, self.mode = Path(path), mode
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a", encoding="utf-8")
        self._write({"event": "start", "t": time.time(), **(start or {})})

    def _write(self, obj: dict[str, Any]) -> None:
        self.f.write(json.dumps(obj, default=_plain) + "\n")
        self.f.flush()

    def frame(self, frame: Frame, rec: dict[str, Any]) -> None:
        if self.mode == "frames" or rec.get("changed"):
            self._write({"event": "frame" if self.mode == "frames" else "decision", **rec})

    def skip(self, frame: Frame) -> None:
        self._write({"event": "skip", "t": frame.timestamp, "index": frame.index, "source": frame.name,
                     "error": frame.error})

    def close(self, summary: dict[str, Any]) -> None:
        if not self.f.closed:
            self._write({"event": "summary", "t": time.time(), **summary})
            os.fsync(self.f.fileno())
            self.f.close()


def _plain(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


class FrameSaver(Sink):
    """`--save-frames DIR`: annotated JPEGs, on each decision change (`mode="changes"`) or every frame.
    Written to a temp name and renamed, so a viewer never opens half a file."""

    def __init__(self, folder: str | os.PathLike, mode: str = "changes", quality: int = 85):
        if mode not in ("changes", "frames"):
            raise ValueError(f"save mode {mode!r}: use changes or frames")
        self.dir, self.mode, self.quality, self.saved = Path(folder), mode, quality, 0
        self.dir.mkdir(parents=True, exist_ok=True)

    def frame(self, frame: Frame, rec: dict[str, Any]) -> None:
        if self.mode == "changes" and not rec.get("changed"):
            return
        img = annotate(frame.preview if frame.preview is not None else frame.image, rec)
        label = (rec.get("decision") or rec["label"]).replace("/", "_")
        dst = self.dir / f"{rec['frame']:08d}_{label}.jpg"
        tmp = dst.with_name("." + dst.name + ".tmp")
        img.save(tmp, format="JPEG", quality=self.quality)
        os.replace(tmp, dst)
        self.saved += 1
