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

from .bundle import atomic_write_bytes
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
    Appends, and flushes each line so a power cut loses at most the line being written.

    `max_mb`: when the file passes this size it is rotated to FILE.1 (FILE.1 -> FILE.2 ..., `keep` old files),
    so frames mode (~14 GB a day) cannot fill an unattended device's card. A write error (disk full, a dead
    card) stops the logging with one warning and is counted in `errors`; classification goes on."""

    def __init__(self, path: str | os.PathLike, mode: str = "changes", start: dict[str, Any] | None = None,
                 max_mb: float = 0.0, keep: int = 3, warn=None):
        if mode not in ("changes", "frames"):
            raise ValueError(f"log mode {mode!r}: use changes or frames")
        if max_mb < 0 or keep < 1:
            raise ValueError(f"log size cap {max_mb} MB / {keep} old files: need max_mb >= 0, keep >= 1")
        self.path, self.mode = Path(path), mode
        self.max_bytes, self.keep = int(max_mb * 2**20), keep
        self.errors, self.rotations, self.failed = 0, 0, False
        self._warn = warn or (lambda msg: print(msg, file=sys.stderr))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a", encoding="utf-8")
        self._size = self.path.stat().st_size
        self._start = {"event": "start", "t": time.time(), **(start or {})}
        self._write(self._start)

    def _write(self, obj: dict[str, Any]) -> None:
        if self.failed:
            self.errors += 1
            return
        line = json.dumps(obj, default=_plain) + "\n"  # ASCII: a non-UTF-8 file name cannot break the write
        try:
            if self.max_bytes and self._size + len(line) > self.max_bytes and self._size > 0:
                self._rotate()
            self.f.write(line)
            self.f.flush()
            self._size += len(line)
        except (OSError, ValueError) as e:  # ENOSPC, EIO, a closed file: lose the log, not the run
            self.errors += 1
            self.failed = True
            self._warn(f"warning: event log {self.path} stopped: {e}; classification goes on")

    def _rotate(self) -> None:
        self.f.close()
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.f = open(self.path, "a", encoding="utf-8")
        self.rotations += 1
        # each file stands alone: a reader of the newest one still knows the run's config
        head = json.dumps({**self._start, "rotated": self.rotations}, default=_plain) + "\n"
        self.f.write(head)
        self._size = len(head)

    def frame(self, frame: Frame, rec: dict[str, Any]) -> None:
        if self.mode == "frames" or rec.get("changed"):
            self._write({"event": "frame" if self.mode == "frames" else "decision", **rec})

    def skip(self, frame: Frame) -> None:
        self._write({"event": "skip", "t": frame.timestamp, "index": frame.index, "source": frame.name,
                     "error": frame.error})

    def close(self, summary: dict[str, Any]) -> None:
        if self.f.closed:
            return
        self._write({"event": "summary", "t": time.time(), **summary, "log_errors": self.errors,
                     "log_rotations": self.rotations})
        try:
            if not self.failed:
                os.fsync(self.f.fileno())
            self.f.close()
        except OSError:
            pass


def _plain(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


class FrameSaver(Sink):
    """`--save-frames DIR`: annotated JPEGs, on each decision change (`mode="changes"`) or every frame.
    Encoded in memory, written to a temp name and renamed, so neither a viewer nor a full disk ever leaves half
    a file under the final name. A failed write is counted (`errors`), warned about once, and the run goes on."""

    def __init__(self, folder: str | os.PathLike, mode: str = "changes", quality: int = 85, warn=None):
        if mode not in ("changes", "frames"):
            raise ValueError(f"save mode {mode!r}: use changes or frames")
        self.dir, self.mode, self.quality, self.saved, self.errors = Path(folder), mode, quality, 0, 0
        self._warn = warn or (lambda msg: print(msg, file=sys.stderr))
        self.dir.mkdir(parents=True, exist_ok=True)

    def frame(self, frame: Frame, rec: dict[str, Any]) -> None:
        if self.mode == "changes" and not rec.get("changed"):
            return
        img = annotate(frame.preview if frame.preview is not None else frame.image, rec)
        label = (rec.get("decision") or rec["label"]).replace("/", "_")
        dst = self.dir / f"{rec['frame']:08d}_{label}.jpg"
        try:
            atomic_write_bytes(dst, to_jpeg(img, self.quality), durable=False)
        except OSError as e:
            if not self.errors:
                self._warn(f"warning: saving frames to {self.dir} failed: {e}; classification goes on")
            self.errors += 1
            return
        self.saved += 1
