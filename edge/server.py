"""`--serve`: a small HTTP view of the live classifier (stdlib only, one daemon thread per client).

`/` a tiny page, `/stream.mjpg` MJPEG with the decision drawn on, `/status` JSON (last prediction, fps,
counts). The main loop only hands over the latest frame and record; JPEG encoding happens in the client
threads and once per frame at most, so a Pi that nobody is watching pays nothing for the server.
Binds 127.0.0.1 unless told otherwise: a camera feed is not something to publish on a LAN by accident.
"""
from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from .sinks import Sink, annotate, to_jpeg
from .sources import Frame

BOUNDARY = "trashcamframe"

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>trashcam</title>
<style>body{font-family:sans-serif;background:#111;color:#eee;margin:1em}img{max-width:100%%}
pre{background:#222;padding:.5em}</style></head><body><h3>trashcam &mdash; %(variant)s</h3>
<img src="/stream.mjpg" alt="live"><pre id="s">...</pre><script>
async function poll(){try{const r=await fetch('/status');const j=await r.json();
document.getElementById('s').textContent=JSON.stringify(j,null,1);}catch(e){}setTimeout(poll,1000);}poll();
</script></body></html>"""


def parse_address(spec: str | int) -> tuple[str, int]:
    """`8080` -> ('127.0.0.1', 8080); `0.0.0.0:8080` -> all interfaces (only when asked); port 0 = any free."""
    s = str(spec).strip()
    host, _, port = s.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
    except ValueError as e:
        raise ValueError(f"--serve {spec!r}: expected [HOST:]PORT, e.g. 8080 or 0.0.0.0:8080") from e
    if not 0 <= p <= 65535:
        raise ValueError(f"--serve {spec!r}: port must be 0..65535")
    return host, p


class PreviewServer(Sink):
    def __init__(self, address: str | int, info: dict[str, Any] | None = None):
        self.host, port = parse_address(address)
        self.info = info or {}
        self._cond = threading.Condition()
        self._seq = 0
        self._image: np.ndarray | None = None
        self._rec: dict[str, Any] | None = None
        self._jpeg: tuple[int, bytes] = (-1, b"")
        self._status: dict[str, Any] = {"state": "starting", **self.info, "frames": 0, "skipped": 0}
        self.closing = False
        self.routes: dict[str, Any] = {}  # path -> fn(request) -> (status, content type, body); see add_route
        self.httpd = ThreadingHTTPServer((self.host, port), _handler(self))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="trashcam-http", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/"

    def add_route(self, path: str, fn, methods=("GET",)) -> None:
        """Serve `path` with `fn(request)` -> (status, content type, body); `request.query` is the parsed query
        string. Other features (items, metrics) add their pages this way; a route replaces a built-in page."""
        self.routes[path] = fn

    # -- Sink -----------------------------------------------------------------------------------------------
    def frame(self, frame: Frame, rec: dict[str, Any]) -> None:
        with self._cond:
            self._image = frame.preview if frame.preview is not None else frame.image
            self._rec = rec
            self._seq += 1
            self._status = {"state": "running", **self.info, "fps": rec.get("fps"), "frames": rec.get("frames"),
                            "skipped": rec.get("skipped"), "decision": rec.get("decision"), "last": rec}
            self._cond.notify_all()

    def skip(self, frame: Frame) -> None:
        with self._cond:
            self._status = {**self._status, "skipped": self._status.get("skipped", 0) + 1,
                            "last_skip": {"source": frame.name, "error": frame.error}}

    def close(self, summary: dict[str, Any] | None = None) -> None:
        with self._cond:
            self.closing = True
            self._status = {**self._status, "state": "stopped", "summary": summary}
            self._cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- used by handler threads -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._cond:
            return dict(self._status)

    def jpeg_after(self, seq: int, timeout: float = 1.0) -> tuple[int, bytes] | None:
        """The next frame newer than `seq` as JPEG (encoded once, shared by all clients), or None on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._seq > seq or self.closing, timeout):
                return None
            if self.closing or self._image is None:
                return None
            cur, image, rec = self._seq, self._image, self._rec
            if self._jpeg[0] == cur:
                return self._jpeg
        data = to_jpeg(annotate(image, rec))
        with self._cond:
            if self._jpeg[0] < cur:
                self._jpeg = (cur, data)
        return cur, data


def _handler(server: PreviewServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, fmt, *args):  # the console line is ours; no per-request noise
            pass

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 - http.server's naming
            path, _, qs = self.path.partition("?")
            if path in server.routes:
                self.query = parse_qs(qs)
                code, ctype, body = server.routes[path](self)
                self._send(code, ctype, body.encode() if isinstance(body, str) else body)
            elif path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8",
                           (PAGE % {"variant": server.info.get("variant", "")}).encode())
            elif path == "/status":
                self._send(200, "application/json", json.dumps(server.status(), default=str).encode())
            elif path == "/stream.mjpg":
                self._stream()
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found: try /, /stream.mjpg or /status\n")

        def _stream(self):
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            seq = 0
            try:
                while not server.closing:
                    got = server.jpeg_after(seq)
                    if got is None:
                        continue
                    seq, data = got
                    self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the viewer closed the tab

    return Handler
