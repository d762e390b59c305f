"""`--serve` under hostile or careless clients: idle sockets, too many clients, tokens, DNS rebinding, HTML
injection through metadata, and extra routes."""
from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from trashcam.edge.server import PreviewServer
from trashcam.edge.sources import Frame


def _frame(i: int = 0) -> Frame:
    return Frame(image=np.full((24, 32, 3), 100, np.uint8), index=i, timestamp=time.time(), name=f"f{i}")


REC = {"frame": 0, "label": "paper", "confidence": 0.9, "decision": "paper", "decision_confidence": 0.9,
       "fps": 10.0, "frames": 1, "skipped": 0}


@pytest.fixture
def server_factory():
    made = []

    def make(**kw):
        s = PreviewServer("127.0.0.1:0", {"variant": "tflite-int8"}, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _get(url: str, headers: dict | None = None, timeout: float = 5):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _raw(port: int, request: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(request)
        out = b""
        while chunk := c.recv(65536):
            out += chunk
        return out


def test_idle_connections_time_out_and_clients_are_capped(server_factory):
    """D1: idle sockets used to stay open forever, until the process ran out of descriptors."""
    srv = server_factory(max_clients=3, timeout=0.5)
    idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(3)]
    time.sleep(0.2)
    # the cap is reached: the next client is refused at once with 503, not queued behind idle sockets
    assert _raw(srv.port, b"GET /status HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 503")
    # the classifier's side never waits on clients
    t0 = time.perf_counter()
    for i in range(50):
        srv.frame(_frame(i), REC)
    assert time.perf_counter() - t0 < 2.0
    # the idle ones are dropped after the timeout (EOF), which frees their slots
    for c in idle:
        assert c.recv(100) == b""
        c.close()
    code, body = _get(srv.url + "status")
    assert code == 200 and json.loads(body)["http_refused"] == 1
    assert srv.httpd.request_queue_size >= 64


def test_a_stream_client_that_reads_is_not_timed_out(server_factory):
    srv = server_factory(timeout=0.5)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as c:
        c.sendall(b"GET /stream.mjpg HTTP/1.0\r\nHost: 127.0.0.1:%d\r\n\r\n" % srv.port)
        got = b""
        t_end = time.time() + 1.5  # three times the timeout
        while time.time() < t_end:
            srv.frame(_frame(), REC)
            got += c.recv(1 << 16)
            time.sleep(0.05)
        assert got.startswith(b"HTTP/1.0 200") and got.count(b"--trashcamframe") >= 5


def test_token_is_required_when_set(server_factory):
    srv = server_factory(token="s3cret")
    assert _get(srv.url + "status")[0] == 401
    assert _get(srv.url + "status?token=wrong")[0] == 401
    assert _get(srv.url + "status?token=s3cret")[0] == 200
    assert _get(srv.url + "status", {"Authorization": "Bearer s3cret"})[0] == 200
    code, page = _get(srv.url + "?token=s3cret")
    assert code == 200 and b"/stream.mjpg?token=s3cret" in page  # the page's own requests carry it on


def test_host_header_is_checked_on_loopback(server_factory):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    srv = server_factory()
    assert _get(srv.url + "status", {"Host": "evil.example"})[0] == 421
    assert _get(srv.url + "status", {"Host": f"evil.example:{srv.port}"})[0] == 421
    assert _get(srv.url + "status", {"Host": f"localhost:{srv.port}"})[0] == 200
    assert _get(srv.url + "status", {"Host": f"[::1]:{srv.port}"})[0] == 200
    assert _get(srv.url + "status")[0] == 200  # urllib sends 127.0.0.1:port
    lan = server_factory(allowed_hosts=["trashcam.local"])
    assert _get(lan.url + "status", {"Host": f"trashcam.local:{lan.port}"})[0] == 200
    assert _get(lan.url + "status", {"Host": f"localhost:{lan.port}"})[0] == 421
    anyhost = server_factory(allowed_hosts=["*"])
    assert _get(anyhost.url + "status", {"Host": "whatever"})[0] == 200


def test_variant_name_is_escaped_in_the_page(server_factory):
    """D14: a variant name from metadata went into the HTML as is."""
    srv = PreviewServer("127.0.0.1:0", {"variant": "<script>alert(1)</script>"})
    try:
        code, page = _get(srv.url)
        assert code == 200 and b"<script>alert(1)" not in page and b"&lt;script&gt;" in page
    finally:
        srv.close()


def test_extra_routes(server_factory):
    srv = server_factory()
    srv.add_route("/metrics", lambda req: (200, "text/plain", "x 1\n"))
    srv.add_route("/echo", lambda req: (200, "text/plain", req.read_body()), methods=("POST",))
    assert _get(srv.url + "metrics") == (200, b"x 1\n")
    req = urllib.request.Request(srv.url + "echo", data=b"hi", method="POST")
    assert urllib.request.urlopen(req, timeout=5).read() == b"hi"
    assert _get(srv.url + "echo")[0] == 405
    code, body = _get(srv.url + "nope")
    assert code == 404 and b"/metrics" in body
