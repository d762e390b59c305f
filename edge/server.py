"""`--serve`: a small HTTP view of the live classifier (stdlib only, one daemon thread per client).

`/` a tiny page, `/stream.mjpg` MJPEG with the decision drawn on, `/status` JSON (last prediction, fps,
counts). The main loop only hands over the latest frame and record; JPEG encoding happens in the client
threads and once per frame at most, so a Pi that nobody is watching pays nothing for the server.
Binds 127.0.0.1 unless told otherwise: a camera feed is not something to publish on a LAN by accident.

An unattended device must survive whatever connects to it, so the server bounds what clients can hold:
a socket timeout per connection (an idle or stalled client is dropped; a stream client that keeps reading is
not), at most `max_clients` connections at once (the rest get 503 at once, so file descriptors stay bounded
and the classifier never starves), an optional `token`, and a Host check against DNS rebinding.

Other features add pages with `add_route(path, fn)`; see `Route`.
"""
from __future__ import annotations

import hmac
import html
import ipaddress
import json
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Union
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np

from .sinks import Sink, annotate, to_jpeg
from .sources import Frame

BOUNDARY = "trashcamframe"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
MAX_BODY = 1 << 20  # POST bodies beyond this are refused: nothing here needs more

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>trashcam</title>
<style>body{font-family:sans-serif;background:#111;color:#eee;margin:1em}img{max-width:100%%}
pre{background:#222;padding:.5em}</style></head><body><h3>trashcam &mdash; %(variant)s</h3>
<img src="/stream.mjpg%(q)s" alt="live"><pre id="s">...</pre><script>
async function poll(){try{const r=await fetch('/status%(q)s');const j=await r.json();
document.getElementById('s').textContent=JSON.stringify(j,null,1);}catch(e){}setTimeout(poll,1000);}poll();
</script></body></html>"""

# What a route returns: (status, content type, body) for the server to send, or None when it wrote the
# response itself (a stream).
Reply = Union[tuple[int, str, Union[bytes, str]], None]
Route = Callable[["BaseHTTPRequestHandler"], Reply]


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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_host(value: str) -> tuple[str, str]:
    """'a:80' -> ('a', '80'); '[::1]:80' -> ('::1', '80'); 'a' -> ('a', '')."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        return name, rest.lstrip(":")
    name, sep, port = value.rpartition(":")
    return (name, port) if sep and ":" not in name else (value, "")


class _HTTPServer(ThreadingHTTPServer):
    request_queue_size = 64  # socketserver's 5 made 200 concurrent /status requests wait seconds
    daemon_threads = True

    def __init__(self, addr, handler, max_clients: int, timeout: float):
        self.slots = threading.BoundedSemaphore(max_clients)
        self.conn_timeout = timeout
        self.refused = 0
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, handler)

    def process_request(self, request, client_address):
        # Runs in the accept thread: refusing here, without a thread, keeps descriptors and threads bounded.
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            body = b"too many clients; try again later\n"
            try:
                request.settimeout(0.5)
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 5\r\n"
                                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
                request.setblocking(False)
                request.recv(65536)  # drain the request so close() sends FIN, not a RST that eats the 503
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class PreviewServer(Sink):
    """The HTTP view. `token`: required as `Authorization: Bearer T` or `?token=T` (401 otherwise).
    `allowed_hosts`: Host header values accepted (port optional, `*` = any); default: the loopback names when
    bound to loopback, any otherwise. `max_clients`: concurrent connections; `timeout`: seconds a connection
    may sit idle (or stall a write) before it is dropped."""

    def __init__(self, address: str | int, info: dict[str, Any] | None = None, *, token: str | None = None,
                 allowed_hosts: Iterable[str] | None = None, max_clients: int = 32, timeout: float = 10.0):
        if max_clients < 1:
            raise ValueError(f"max_clients must be >= 1, got {max_clients}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.host, port = parse_address(address)
        self.info = info or {}
        self.token = token or None
        self._cond = threading.Condition()
        self._seq = 0
        self._image: np.ndarray | None = None
        self._rec: dict[str, Any] | None = None
        self._jpeg: tuple[int, bytes] = (-1, b"")
        self._status: dict[str, Any] = {"state": "starting", **self.info, "frames": 0, "skipped": 0}
        self.closing = False
        self.routes: dict[str, tuple[Route, tuple[str, ...]]] = {}
        self.add_route("/", self._page)
        self.add_route("/index.html", self._page)
        self.add_route("/status", lambda req: (200, "application/json",
                                               json.dumps(self.status(), default=str)))
        self.add_route("/stream.mjpg", self._stream)
        self.httpd = _HTTPServer((self.host, port), _handler(self), max_clients, timeout)
        self.port = self.httpd.server_address[1]
        self.allowed_hosts = self._host_allowlist(allowed_hosts)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="trashcam-http", daemon=True)
        self.thread.start()

    def _host_allowlist(self, allowed: Iterable[str] | None) -> set[tuple[str, str]] | None:
        """(name, port) pairs; port '' = any. None = no check (bound beyond loopback, nothing configured)."""
        if allowed is None:
            if not is_loopback(self.host):
                return None
            allowed = LOOPBACK_NAMES
        allowed = [a for a in allowed if a]
        if "*" in allowed:
            return None
        out = set()
        for a in allowed:
            name, port = _split_host(a)
            out.add((name, port or str(self.port)))
        return out

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    def add_route(self, path: str, fn: Route, methods: Iterable[str] = ("GET",)) -> None:
        """Serve `path` with `fn(request)`; `request` is the handler, with `.query` (parsed query string,
        lists of values), `.read_body()` for POST, and `.send(code, ctype, body)`. `fn` returns
        (status, content type, body) or None when it wrote the response itself. Auth and Host checks apply."""
        if not path.startswith("/"):
            raise ValueError(f"route {path!r} must start with '/'")
        self.routes[path] = (fn, tuple(m.upper() for m in methods))

    # -- Sink -----------------------------------------------------------------------------------------------
    def frame(self, frame: Frame, rec: dict[str, Any]) -> None:
        # Only swaps references under a lock that clients hold for microseconds: never waits on a client.
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
            return {**self._status, "http_refused": self.httpd.refused}

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

    def authorised(self, req) -> bool:
        if self.token is None:
            return True
        auth = req.headers.get("Authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else req.query.get("token", [""])[0]
        return hmac.compare_digest(given.encode(), self.token.encode())

    def host_ok(self, req) -> bool:
        if self.allowed_hosts is None:
            return True
        value = req.headers.get("Host")
        if value is None:  # HTTP/1.0 tools may omit it; browsers (the rebinding vector) always send it
            return True
        name, port = _split_host(value)
        return (name, port or "80") in self.allowed_hosts

    def _page(self, req) -> Reply:
        q = f"?token={quote(req.query['token'][0])}" if self.token and "token" in req.query else ""
        return 200, "text/html; charset=utf-8", PAGE % {"variant": html.escape(str(self.info.get("variant", ""))),
                                                        "q": html.escape(q)}

    def _stream(self, req) -> Reply:
        req.send_response(200)
        req.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        req.send_header("Cache-Control", "no-store")
        req.end_headers()
        seq = 0
        try:
            while not self.closing:
                got = self.jpeg_after(seq)
                if got is None:
                    continue
                seq, data = got
                # a client that stops reading blocks this write until the socket timeout drops it
                req.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                f"Content-Length: {len(data)}\r\n\r\n".encode() + data + b"\r\n")
                req.wfile.flush()
        except OSError:
            pass  # the viewer closed the tab, or stalled past the timeout
        return None


def _handler(server: PreviewServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"
        query: dict[str, list[str]] = {}

        def setup(self):
            self.timeout = self.server.conn_timeout  # socket timeout: idle and stalled clients are dropped
            super().setup()

        def log_message(self, fmt, *args):  # the console line is ours; no per-request noise
            pass

        def send(self, code: int, ctype: str, body: bytes | str, extra: dict[str, str] | None = None) -> None:
            body = body.encode() if isinstance(body, str) else body
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def read_body(self, limit: int = MAX_BODY) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            if not 0 <= n <= limit:
                raise ValueError(f"request body of {n} bytes (limit {limit})")
            return self.rfile.read(n)

        def _dispatch(self) -> None:
            parts = urlsplit(self.path)
            self.query = parse_qs(parts.query)
            if not server.host_ok(self):
                self.send(HTTPStatus.MISDIRECTED_REQUEST, "text/plain", b"unexpected Host header\n")
                return
            if not server.authorised(self):
                self.send(HTTPStatus.UNAUTHORIZED, "text/plain", b"token required\n",
                          {"WWW-Authenticate": 'Bearer realm="trashcam"'})
                return
            route = server.routes.get(parts.path)
            if route is None:
                paths = ", ".join(sorted(p for p in server.routes if p != "/index.html"))
                self.send(HTTPStatus.NOT_FOUND, "text/plain", f"not found: try {paths}\n")
                return
            fn, methods = route
            if self.command not in methods:
                self.send(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain", b"method not allowed\n",
                          {"Allow": ", ".join(methods)})
                return
            try:
                reply = fn(self)
            except ValueError as e:
                self.send(HTTPStatus.BAD_REQUEST, "text/plain", f"{e}\n")
                return
            if reply is not None:
                self.send(*reply)

        do_GET = do_POST = _dispatch  # noqa: N815 - http.server's naming

    return Handler
