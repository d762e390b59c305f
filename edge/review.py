"""`/review`: look through captured field images and relabel them with one click (edge-run --serve --capture).

Routes on the PreviewServer (`register(server)`):
- GET  /review                  the page (newest first, or `?order=uncertain`: highest score first)
- GET  /review/items?order=...  JSON: the items and how many sidecars were unreadable (skipped, counted)
- GET  /review/image?id=C/S.jpg the captured JPEG (`&thumb=1`: at most 200 px wide)
- POST /review/relabel          JSON body {"id": "C/S.jpg", "label": CLASS or "_foreign"}: the image and its
                                sidecar move to DIR/<label>/ (sidecar marked reviewed, the prediction kept)

Bound to the capture folder: an id is exactly `<folder>/<name>.jpg`, one level below it, plain names only, no
symlinks, and its resolved path must lie inside the folder. A label that is not a class of the bundle (or
`_foreign`) is a 400 and nothing moves. Cross-site requests cannot relabel: the POST must carry a JSON body
(`Content-Type: application/json`, which a form cannot send and a cross-origin script only after a CORS
preflight this server never answers), and an `Origin` header, when sent, must name this server's host.
"""
from __future__ import annotations

import html
import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .bundle import atomic_write_bytes
from .capture import FOREIGN, SIDE, safe_name

_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*/[A-Za-z0-9_][A-Za-z0-9_.-]*\.jpg$")


class ReviewError(ValueError):
    """A request the review page refuses (the server answers 400)."""


class CaptureFolder:
    """The captured items of `root` and the one operation on them: relabel."""

    def __init__(self, root: str | os.PathLike, labels: list[str]):
        self.root = Path(root).resolve()
        self.labels = list(labels)
        self.targets = {safe_name(lab): lab for lab in self.labels} | {FOREIGN: FOREIGN}

    def resolve(self, item_id: str) -> Path:
        """The image path of `item_id`, confined to the folder; ReviewError for anything else."""
        if not isinstance(item_id, str) or not _ID.match(item_id) or ".." in item_id:
            raise ReviewError(f"not a capture id: {item_id!r}")
        p = self.root / item_id
        if p.is_symlink() or p.parent.is_symlink():
            raise ReviewError(f"not a capture id: {item_id!r}")
        rp = p.resolve()
        if rp.parent.parent != self.root or not rp.is_file():
            raise ReviewError(f"no such capture: {item_id!r}")
        return rp

    def items(self, order: str = "newest") -> tuple[list[dict[str, Any]], int]:
        out, corrupt = [], 0
        for side in self.root.glob(f"*/*{SIDE}"):
            img = side.with_suffix(".jpg")
            if side.is_symlink() or side.parent.is_symlink() or not img.is_file() or img.is_symlink():
                continue
            try:
                meta = json.loads(side.read_text())
                if not isinstance(meta, dict):
                    raise ValueError("not an object")
            except (OSError, ValueError, UnicodeDecodeError):
                corrupt += 1
                continue
            score = meta.get("score")
            if not isinstance(score, (int, float)):
                conf = meta.get("confidence")
                score = 1.0 - conf if isinstance(conf, (int, float)) else 0.0
            out.append({"id": f"{side.parent.name}/{img.name}", "folder": side.parent.name,
                        "predicted": meta.get("predicted", meta.get("label")), "label": side.parent.name,
                        "score": float(score), "probs": meta.get("probs"), "time": meta.get("time") or 0,
                        "iso_time": meta.get("iso_time"), "reviewed": bool(meta.get("reviewed"))})
        key = (lambda r: -r["score"]) if order == "uncertain" else (lambda r: -float(r["time"]))
        return sorted(out, key=key), corrupt

    def relabel(self, item_id: str, label: str) -> str:
        """Move the image + sidecar to DIR/<label>/; the new id. Nothing moves on a bad id or label."""
        if not isinstance(label, str) or label not in self.targets:
            raise ReviewError(f"unknown class {label!r}; use one of {', '.join(self.targets)}")
        src = self.resolve(item_id)
        side_src = src.with_suffix(SIDE)
        try:
            meta = json.loads(side_src.read_text())
            if not isinstance(meta, dict):
                raise ValueError
        except (OSError, ValueError, UnicodeDecodeError):
            meta = {}  # an unreadable sidecar does not block a relabel; a fresh one records the review
        dest_dir = self.root / label
        dest_dir.mkdir(exist_ok=True)
        dest = dest_dir / src.name
        if dest.exists() and dest != src:
            dest = dest_dir / f"{src.stem}-{int(time.time() * 1e3)}.jpg"
        meta.setdefault("predicted", meta.get("label"))
        meta.update({"label": label, "reviewed": True, "reviewed_time": time.time()})
        # the sidecar goes last and is rewritten in place of the old one, so a crash leaves an image
        # without a sidecar (ignored by listings) rather than a sidecar pointing at nothing
        os.replace(src, dest)
        atomic_write_bytes(dest.with_suffix(SIDE), json.dumps(meta, indent=1).encode())
        if side_src != dest.with_suffix(SIDE):
            side_src.unlink(missing_ok=True)
        return f"{label}/{dest.name}"


def _thumbnail(path: Path, width: int = 200) -> bytes:
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.width > width:
            im = im.resize((width, max(1, round(im.height * width / im.width))))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def same_origin(req) -> bool:
    origin = req.headers.get("Origin")
    if origin is None:
        return True  # not a browser cross-site request (those always send Origin on POST)
    host = (req.headers.get("Host") or "").lower()
    return urlsplit(origin).netloc.lower() == host


class ReviewPage:
    def __init__(self, folder: CaptureFolder):
        self.folder = folder
        self.relabelled = 0

    def register(self, server) -> None:
        server.add_route("/review", self.page)
        server.add_route("/review/items", self.items)
        server.add_route("/review/image", self.image)
        server.add_route("/review/relabel", self.relabel, methods=("POST",))

    def page(self, req):
        targets = json.dumps(list(self.folder.targets))
        return 200, "text/html; charset=utf-8", PAGE.replace("__TARGETS__", html.escape(targets, quote=False))

    def items(self, req):
        order = req.query.get("order", ["newest"])[0]
        items, corrupt = self.folder.items("uncertain" if order == "uncertain" else "newest")
        return 200, "application/json", json.dumps({"items": items, "corrupt_sidecars": corrupt,
                                                    "labels": list(self.folder.targets), "count": len(items)})

    def image(self, req):
        path = self.folder.resolve(req.query.get("id", [""])[0])
        thumb = req.query.get("thumb", ["0"])[0] == "1"
        return 200, "image/jpeg", _thumbnail(path) if thumb else path.read_bytes()

    def relabel(self, req):
        if not same_origin(req):
            return 403, "text/plain", "cross-origin request refused\n"
        ctype = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ReviewError("relabel takes a JSON body (Content-Type: application/json)")
        try:
            body = json.loads(req.read_body(4096) or b"{}")
        except (ValueError, UnicodeDecodeError) as e:
            raise ReviewError(f"invalid JSON body: {e}") from e
        if not isinstance(body, dict):
            raise ReviewError("the JSON body must be an object {id, label}")
        new_id = self.folder.relabel(body.get("id"), body.get("label"))
        self.relabelled += 1
        return 200, "application/json", json.dumps({"ok": True, "id": new_id})


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>trashcam review</title>
<style>body{font-family:sans-serif;background:#111;color:#eee;margin:1em}
.item{display:inline-block;vertical-align:top;width:220px;margin:6px;padding:6px;background:#222}
.item img{width:200px}.item.reviewed{opacity:.6}button{margin:2px;font-size:12px}
button.cur{background:#2a6;color:#fff}small{color:#aaa}</style></head><body>
<h3>Captured items <small id="n"></small></h3>
<p>Order: <a href="#" id="o-newest">newest</a> | <a href="#" id="o-uncertain">most uncertain</a>
<small id="corrupt"></small></p><div id="list"></div>
<script>
const TARGETS = __TARGETS__;
const tok = new URLSearchParams(location.search).get('token');
const q = tok ? '&token=' + encodeURIComponent(tok) : '';
let order = new URLSearchParams(location.search).get('order') || 'newest';
async function load(){
  const r = await fetch('/review/items?order=' + order + q); const j = await r.json();
  document.getElementById('n').textContent = '(' + j.count + ')';
  document.getElementById('corrupt').textContent = j.corrupt_sidecars ? j.corrupt_sidecars + ' unreadable sidecar(s) skipped' : '';
  const list = document.getElementById('list'); list.textContent = '';
  for (const it of j.items){
    const d = document.createElement('div'); d.className = 'item' + (it.reviewed ? ' reviewed' : '');
    d.dataset.id = it.id;
    const img = document.createElement('img'); img.src = '/review/image?thumb=1&id=' + encodeURIComponent(it.id) + q;
    const p = document.createElement('div');
    p.innerHTML = '<b></b><br><small></small>';
    p.querySelector('b').textContent = it.label + (it.reviewed ? ' (reviewed)' : '');
    p.querySelector('small').textContent = 'predicted ' + it.predicted + ', score ' + it.score.toFixed(3) + ', ' + (it.iso_time || '');
    d.append(img, p);
    for (const t of TARGETS){
      const b = document.createElement('button'); b.textContent = t; b.dataset.label = t;
      if (t === it.label) b.className = 'cur';
      b.onclick = () => relabel(it.id, t); d.append(b);
    }
    list.append(d);
  }
}
async function relabel(id, label){
  const r = await fetch('/review/relabel' + (tok ? '?token=' + encodeURIComponent(tok) : ''), {method: 'POST',
    headers: {'Content-Type': 'application/json'}, body: JSON.stringify({id: id, label: label})});
  if (!r.ok) { alert(await r.text()); return; }
  await load();
}
for (const o of ['newest', 'uncertain']) document.getElementById('o-' + o).onclick = e => { e.preventDefault(); order = o; load(); };
load();
</script></body></html>"""
