"""Field capture: save the raw frame of selected decisions, with what the model said, for review and retraining.

`CaptureSink(root, when=...)` takes `capture(image, record)`: `image` the RAW frame (RGB uint8, never the
annotated one), `record` what was decided (a per-frame record of edge-run, or an item decision of edge/items.py:
probs, label, score, uncertain...). A kept capture is `root/<predicted>/<stamp>.jpg` + a `.json` sidecar
(probs, score, label, time, bundle sha256, variant), each written to a temp name and renamed, sidecar last, so
a reader never sees half a file and a listed sidecar always has its image.

Which decisions: `uncertain` (flagged by the bundle's score), `low-margin` (top-1 minus top-2 probability under
`margin`), `flip` (the label differs from the previous decision's), or `all`. Bounded: at most `rate` captures
a minute, at most `quota_mb` on disk (the oldest captures are deleted first). A failed write (a full disk)
prints one warning and stops capturing; classification never stops for it. A folder that cannot be written is
a CaptureError at start-up.
"""
from __future__ import annotations

import io
import json
import os
import re
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import atomic_write_bytes

WHEN = ("uncertain", "low-margin", "flip", "all")
SIDE = ".json"
FOREIGN = "_foreign"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class CaptureError(ValueError):
    """A capture folder that cannot be used (exit 2 at start-up)."""


def safe_name(label: str) -> str:
    """A class label as a folder name: no separators, no dot-only names."""
    name = _SAFE.sub("_", str(label)).strip("._") or "unlabelled"
    return name


def check_writable(root: str | os.PathLike) -> Path:
    """Create `root` if needed and prove a file can be written and removed there; CaptureError otherwise."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise CaptureError(f"capture folder {root} is not writable: {e.strerror or e}") from e
    return root.resolve()


def _margin(probs: np.ndarray) -> float:
    top = np.sort(probs)[::-1]
    return float(top[0] - top[1]) if len(top) > 1 else 1.0


class CaptureSink:
    def __init__(self, root: str | os.PathLike, when: str = "uncertain", quota_mb: float = 500.0,
                 rate: float = 30.0, margin: float = 0.2, bundle_sha256: str = "", variant: str = "",
                 quality: int = 90, err=None, clock=time.time):
        if when not in WHEN:
            raise CaptureError(f"--capture-when must be one of {', '.join(WHEN)}, got {when!r}")
        if quota_mb <= 0 or rate <= 0:
            raise CaptureError("capture quota (MB) and rate (captures/min) must be > 0")
        self.root = check_writable(root)
        self.when, self.quota = when, int(quota_mb * 2**20)
        self.rate, self.margin, self.quality = float(rate), float(margin), int(quality)
        self.bundle_sha256, self.variant = bundle_sha256, variant
        self.err, self.clock = err or sys.stderr, clock
        self.stopped = False
        self.counts = {"captured": 0, "rate_limited": 0, "deleted_for_quota": 0, "failed": 0}
        self._recent: deque[float] = deque()
        self._last_label: str | None = None
        self._seq = 0
        self._kept_bytes = 0
        self._files = self._scan()  # (mtime, image path, bytes of image + sidecar) unreviewed, oldest first
        self._bytes = self._kept_bytes + sum(n for _, _, n in self._files)

    def _scan(self) -> deque:
        """Captures already in the folder count towards the quota; reviewed ones are never deleted for it."""
        items = []
        for side in self.root.glob(f"*/*{SIDE}"):
            img = side.with_suffix(".jpg")
            try:
                size = side.stat().st_size + (img.stat().st_size if img.is_file() else 0)
                reviewed = bool(json.loads(side.read_text()).get("reviewed"))
            except (OSError, ValueError, AttributeError):
                continue
            if reviewed:
                self._kept_bytes += size
            else:
                items.append((side.stat().st_mtime, img, size))
        return deque(sorted(items))

    # -- what to keep -----------------------------------------------------------------------------------------
    def wanted(self, record: dict[str, Any]) -> bool:
        label = record.get("label")
        flip = self._last_label is not None and label != self._last_label
        self._last_label = label
        if self.when == "all":
            return True
        if self.when == "flip":
            return flip
        if self.when == "low-margin":
            probs = record.get("probs") or {}
            return len(probs) > 1 and _margin(np.array(list(probs.values()), float)) < self.margin
        return bool(record.get("uncertain")) or label == "uncertain" or record.get("decision") == "uncertain"

    def _rate_ok(self, now: float) -> bool:
        while self._recent and now - self._recent[0] >= 60.0:
            self._recent.popleft()
        if len(self._recent) >= self.rate:
            return False
        self._recent.append(now)
        return True

    # -- the sink -----------------------------------------------------------------------------------------------
    def capture(self, image: np.ndarray, record: dict[str, Any]) -> Path | None:
        """Save `image` (raw RGB) with `record` if the rule, the rate and the disk allow; the image path or None.
        Never raises: classification must go on whatever happens here."""
        if self.stopped or image is None or not self.wanted(record):
            return None
        now = self.clock()
        if not self._rate_ok(now):
            self.counts["rate_limited"] += 1
            return None
        try:
            return self._write(image, record, now)
        except OSError as e:
            self.counts["failed"] += 1
            self.stopped = True
            print(f"capture: writing to {self.root} failed ({e.strerror or e}); capture stopped, classification "
                  "goes on", file=self.err, flush=True)
            return None
        except Exception:  # noqa: BLE001 - e.g. an odd frame PIL cannot encode: count it, keep going
            self.counts["failed"] += 1
            return None

    def _write(self, image: np.ndarray, record: dict[str, Any], now: float) -> Path:
        from PIL import Image

        label = record.get("label") or "uncertain"
        folder = self.root / safe_name(label)
        folder.mkdir(exist_ok=True)
        self._seq += 1
        stem = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"-{int(now * 1e3) % 1000:03d}-{self._seq:05d}"
        buf = io.BytesIO()
        Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="JPEG", quality=self.quality)
        side = {"label": label, "predicted": label, "probs": record.get("probs"), "score": record.get("score"),
                "confidence": record.get("confidence"), "uncertain": record.get("uncertain"),
                "time": now, "iso_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "bundle_sha256": record.get("bundle_sha256") or self.bundle_sha256,
                "variant": record.get("variant") or self.variant, "source": record.get("source"),
                "rule": self.when}
        img_path = folder / f"{stem}.jpg"
        side_bytes = json.dumps(side, indent=1, default=float).encode()
        atomic_write_bytes(img_path, buf.getvalue())
        atomic_write_bytes(img_path.with_suffix(SIDE), side_bytes)
        size = len(buf.getvalue()) + len(side_bytes)
        self._files.append((now, img_path, size))
        self._bytes += size
        self.counts["captured"] += 1
        self._enforce_quota()
        return img_path

    def _enforce_quota(self) -> None:
        while self._bytes > self.quota and len(self._files) > 1:
            _, img, size = self._files.popleft()
            img.unlink(missing_ok=True)
            img.with_suffix(SIDE).unlink(missing_ok=True)
            self._bytes -= size
            self.counts["deleted_for_quota"] += 1

    # the edge-run Sink interface (edge/sinks.py): frames pass by; the item stage (edge/field.py) calls
    # `capture` once per item decision with the item's best raw frame
    def frame(self, frame, rec: dict[str, Any]) -> None:
        pass

    def skip(self, frame) -> None:
        pass

    def close(self, summary: dict[str, Any]) -> None:
        summary["capture"] = {"folder": str(self.root), "when": self.when, "stopped": self.stopped, **self.counts}
