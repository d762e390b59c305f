"""The items panel of the `--serve` page: the last items with thumbnails and the per-class counts.

Registers on the preview server (`add_route`): `/` (the live view plus the items panel), `/items.json` (the
last items and counts) and `/thumb?id=ITEM` (a small JPEG of the item's best frame). Thumbnails are made once,
when the item is decided, so a page that polls costs the classifier nothing.
"""
from __future__ import annotations

import html
import json
import threading
from collections import OrderedDict
from typing import Any, Callable
from urllib.parse import quote

import numpy as np
from PIL import Image

from .sinks import Sink, to_jpeg
from .smoothing import UNCERTAIN

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>trashcam</title>
<style>body{font-family:sans-serif;background:#111;color:#eee;margin:1em}#live{max-width:100%%}
pre{background:#222;padding:.5em;max-height:14em;overflow:auto}.row{display:flex;gap:1em;flex-wrap:wrap}
table{border-collapse:collapse}td,th{padding:.2em .6em;text-align:left}
.item{display:inline-block;margin:.3em;text-align:center;background:#222;padding:.3em;width:128px}
.item img{width:120px;height:90px;object-fit:cover;display:block}.uncertain{color:#fa0}.timeout{color:#f66}
</style></head><body><h3>trashcam &mdash; %(variant)s</h3>
<div class="row"><img id="live" src="/stream.mjpg%(q)s" alt="live" width="480">
<div><h4>Counts</h4><table id="counts"><tbody></tbody></table><p id="total"></p></div></div>
<h4>Last items</h4><div id="items"></div>
<h4>Status</h4><pre id="s">...</pre><script>
const q='%(q)s';
const ESC={'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'};
function esc(s){return String(s).replace(/[&<>"']/g,c=>ESC[c]);}
async function poll(){try{
 const j=await (await fetch('/items.json'+q)).json();
 document.querySelector('#counts tbody').innerHTML=Object.entries(j.counts).map(([k,v])=>
  `<tr data-label="${esc(k)}"><th>${esc(k)}</th><td class="count">${v}</td></tr>`).join('');
 document.getElementById('total').textContent=`${j.total} items`;
 document.getElementById('items').innerHTML=j.items.map(it=>
  `<div class="item" data-id="${esc(it.id)}"><img src="/thumb?id=${encodeURIComponent(it.id)}${q?'&'+q.slice(1):''}"
   alt="${esc(it.label)}"><span class="label ${it.label=='uncertain'?'uncertain':''}">${esc(it.label)}</span>
   <small>${(it.confidence*100).toFixed(0)}%%${it.timeout?' <span class="timeout">timeout</span>':''}</small>
   </div>`).join('');
 const s=await (await fetch('/status'+q)).json();
 document.getElementById('s').textContent=JSON.stringify(s,null,1);
}catch(e){}setTimeout(poll,1000);}poll();
</script></body></html>"""


def thumbnail(image: np.ndarray, width: int = 160) -> bytes:
    img = Image.fromarray(np.asarray(image, dtype=np.uint8))
    img.thumbnail((width, width), Image.Resampling.BILINEAR)
    return to_jpeg(img, quality=75)


class ItemsView(Sink):
    """Keeps the last `keep` items (their dicts and thumbnails) and the counts; thread-safe for the server."""

    def __init__(self, labels: list[str], keep: int = 24, info: dict[str, Any] | None = None,
                 status: Callable[[], dict[str, Any]] | None = None):
        self.keep, self.info, self.extra_status = keep, info or {}, status
        self.counts: dict[str, int] = {k: 0 for k in [*labels, UNCERTAIN]}
        self.total = 0
        self._items: OrderedDict[str, tuple[dict[str, Any], bytes | None]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, item: dict[str, Any], image: np.ndarray | None) -> None:
        thumb = thumbnail(image) if image is not None else None
        with self._lock:
            self._items[item["id"]] = (item, thumb)
            while len(self._items) > self.keep:
                self._items.popitem(last=False)
            self.counts[item["label"]] = self.counts.get(item["label"], 0) + 1
            self.total += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            items = [d for d, _ in reversed(self._items.values())]  # newest first
            return {"total": self.total, "counts": dict(self.counts), "items": items}

    def thumb(self, item_id: str) -> bytes | None:
        with self._lock:
            got = self._items.get(item_id)
        return got[1] if got else None

    # -- routes ----------------------------------------------------------------------------------------------
    def register(self, server) -> None:
        server.add_route("/", self._page)
        server.add_route("/index.html", self._page)
        server.add_route("/items.json", lambda req: (200, "application/json",
                                                     json.dumps(self.snapshot(), default=str)))
        server.add_route("/thumb", self._thumb)
        if self.extra_status is not None:
            # /status gains the item, MQTT, GPIO and sink-failure state beside the server's own
            server.add_route("/status", lambda req: (200, "application/json", json.dumps(
                {**server.status(), **self.extra_status()}, default=str)))

    def _page(self, req):
        token = getattr(req, "query", {}).get("token", [""])[0]
        q = f"?token={quote(token)}" if token else ""
        return 200, "text/html; charset=utf-8", PAGE % {"variant": html.escape(str(self.info.get("variant", ""))),
                                                        "q": html.escape(q)}

    def _thumb(self, req):
        data = self.thumb(getattr(req, "query", {}).get("id", [""])[0])
        if data is None:
            return 404, "text/plain", b"no such item (only the last ones are kept)\n"
        return 200, "image/jpeg", data
