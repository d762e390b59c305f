"""MqttSink against a real mosquitto (Debian's package; CI installs it in .ci/run), started per test on
127.0.0.1 with a free port and a temp config. Includes a broker restart in the middle of a run."""
from __future__ import annotations

import getpass
import io
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from trashcam.edge.mqtt import MqttSink, check_prefix, discovery, parse_mqtt_url

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (apt-get install mosquitto)")
mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt not installed (the [mqtt] extra)")
LABELS = ["glass", "paper", "plastic"]
PREFIX = "trashcam/test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto on 127.0.0.1:port; persistence on, so a subscriber's session survives a restart."""

    def __init__(self, folder: Path, port: int | None = None, users: dict[str, str] | None = None,
                 tls: tuple[Path, Path, Path] | None = None):
        self.dir, self.port, self.proc = folder, port or free_port(), None
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = [f"listener {self.port} 127.0.0.1", "persistence true", f"persistence_location {self.dir}/",
                f"log_dest file {self.dir}/mosquitto.log",
                # as root mosquitto drops to user `mosquitto`, who cannot open pytest's 0700 temp dirs
                f"user {getpass.getuser()}"]
        if users:
            pw = self.dir / "passwd"
            for i, (u, p) in enumerate(users.items()):
                subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(pw), u, p], check=True)
            conf += ["allow_anonymous false", f"password_file {pw}"]
        else:
            conf += ["allow_anonymous true"]
        if tls:
            conf += [f"cafile {tls[0]}", f"certfile {tls[1]}", f"keyfile {tls[2]}"]
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(conf) + "\n")

    def start(self) -> "Broker":
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen within 10 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file on the way out
            self.proc.wait(10)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def make_certs(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (EC keys: fast to make)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key, cert, key, csr = (folder / n for n in ("ca.pem", "ca.key", "server.pem", "server.key", "server.csr"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for cmd in (["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=trashcam test CA"],
                ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
                ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
                 "-days", "1", "-extfile", folder / "san.ext"]):
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
    return ca, cert, key


@pytest.fixture
def auth_broker(tmp_path):
    b = Broker(tmp_path / "broker", users={"bin": "s3cret"}).start()
    yield b
    b.stop()


class Subscriber:
    """A persistent-session (clean_session False) QoS 1 subscriber that records every message."""

    def __init__(self, port: int, topics=(f"{PREFIX}/#", "homeassistant/#"), client_id: str = "test-sub",
                 clean: bool = False):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        self.c.reconnect_delay_set(0.1, 0.5)
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe([(t, 1) for t in topics])
        self.c.on_message = self._on_message
        self.subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.subscribed.wait(5)

    def _on_message(self, c, u, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def on(self, topic: str) -> list[tuple[bytes, bool]]:
        with self.lock:
            return [(p, r) for t, p, r in self.messages if t == topic]

    def item_ids(self) -> list[str]:
        return [json.loads(p)["id"] for p, _ in self.on(f"{PREFIX}/item")]

    def wait(self, pred, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            time.sleep(0.02)
        return pred()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def item(n: int, label: str = "glass") -> dict:
    return {"event": "item", "id": f"run-{n:06d}", "seq": n, "label": label, "confidence": 0.9}


def sink_for(url: str, **kw) -> tuple[MqttSink, io.StringIO]:
    log = io.StringIO()
    kw = {"prefix": PREFIX, "labels": LABELS, "reconnect": (0.1, 0.5), "connect_wait": 3.0, **kw}
    return MqttSink(url, log=log, **kw), log


def test_url_and_prefix_parsing():
    t = parse_mqtt_url("mqtt://broker.local")
    assert (t.host, t.port, t.tls, t.username) == ("broker.local", 1883, False, None)
    t = parse_mqtt_url("mqtts://bin:p%40ss@10.0.0.2:8884")
    assert (t.host, t.port, t.tls, t.username, t.password) == ("10.0.0.2", 8884, True, "bin", "p@ss")
    assert "p@ss" not in str(t)
    for bad, why in [("http://x", "scheme"), ("broker:1883", "scheme"), ("mqtt://", "no host"),
                     ("mqtt://h:99999", "port"), ("mqtt://h:abc", "port"), ("mqtt://h/topic", "path")]:
        with pytest.raises(ValueError, match=why):
            parse_mqtt_url(bad)
    assert check_prefix("bins/kitchen/") == "bins/kitchen"
    for bad in ("a/#", "+/x", "", "$SYS/x"):
        with pytest.raises(ValueError, match="topic"):
            check_prefix(bad)
    d = discovery("bins/kitchen", ["glass", "paper"])
    assert len(d) == 4 and "homeassistant/sensor/bins_kitchen/last_item/config" in d
    glass = d["homeassistant/sensor/bins_kitchen/glass_count/config"]
    assert glass["state_topic"] == "bins/kitchen/stats" and 'counts["glass"]' in glass["value_template"]


@needs_broker
def test_items_status_stats_and_discovery(broker):
    sub = Subscriber(broker.port, clean=True, client_id="live-sub")
    sink, log = sink_for(broker.url, stats_every=0.2)
    try:
        assert sink.connected
        for n in range(3):
            sink.item(item(n, LABELS[n]))
        sink.stats({"counts": {"glass": 1, "paper": 1, "plastic": 1, "uncertain": 0}, "items": 3})
        assert sink.flush(5) and sink.acked == 3
        assert sub.wait(lambda: len(sub.item_ids()) == 3 and sub.on(f"{PREFIX}/stats"))
        assert sub.item_ids() == ["run-000000", "run-000001", "run-000002"]
        stats = json.loads(sub.on(f"{PREFIX}/stats")[-1][0])
        assert stats["counts"]["paper"] == 1
        # a late subscriber (Home Assistant starting up) gets the retained state: online, discovery, stats
        late = Subscriber(broker.port, clean=True, client_id="late-sub")
        assert late.wait(lambda: len([t for t, _, r in late.messages if r and t.startswith("homeassistant/")]) == 5)
        assert late.on(f"{PREFIX}/status") == [(b"online", True)]
        cfg = json.loads(late.on("homeassistant/sensor/trashcam_test/glass_count/config")[0][0])
        assert cfg["availability_topic"] == f"{PREFIX}/status" and cfg["unique_id"] == "trashcam_test_glass_count"
        assert late.wait(lambda: late.on(f"{PREFIX}/stats"))
        late.close()
    finally:
        sink.close()
        assert sub.wait(lambda: (b"offline", False) in sub.on(f"{PREFIX}/status"))
        sub.close()


@needs_broker
def test_last_will_says_offline_when_the_box_dies(broker):
    sub = Subscriber(broker.port, clean=True, client_id="will-sub")
    sink, _ = sink_for(broker.url)
    assert sub.wait(lambda: sub.on(f"{PREFIX}/status"))
    sink._stop.set()
    sink.client.loop_stop()
    sink.client.socket().close()  # no DISCONNECT sent: what a power cut looks like to the broker
    assert sub.wait(lambda: (b"offline", False) in sub.on(f"{PREFIX}/status"))
    sub.close()


@needs_broker
def test_user_password(auth_broker, monkeypatch):
    host = f"127.0.0.1:{auth_broker.port}"
    good, _ = sink_for(f"mqtt://bin:s3cret@{host}")
    assert good.connected
    good.close()
    monkeypatch.setenv("TRASHCAM_MQTT_PASSWORD", "s3cret")  # what the systemd unit's EnvironmentFile sets
    from_env, _ = sink_for(f"mqtt://bin@{host}", client_id="from-env")
    assert from_env.connected
    from_env.close()
    monkeypatch.delenv("TRASHCAM_MQTT_PASSWORD")
    bad, log = sink_for(f"mqtt://bin:wrong@{host}", connect_wait=1.0)
    assert not bad.connected
    assert "refused" in log.getvalue() and "wrong" not in log.getvalue()
    bad.close()


@needs_broker
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed (apt-get install openssl)")
def test_mqtts_with_a_private_ca(tmp_path):
    ca, cert, key = make_certs(tmp_path / "certs")
    b = Broker(tmp_path / "tls", tls=(ca, cert, key)).start()
    url = f"mqtts://127.0.0.1:{b.port}"
    try:
        sink, log = sink_for(url, ca=str(ca))
        assert sink.connected, log.getvalue()
        sink.item(item(1))
        assert sink.flush(5) and sink.acked == 1
        sink.close()
        untrusted, log = sink_for(url, connect_wait=1.0, client_id="untrusted")  # the system CAs do not know it
        assert not untrusted.connected and "not reachable yet" in log.getvalue()
        untrusted.close()
    finally:
        b.stop()


@needs_broker
def test_unreachable_at_start_then_queue_drains_and_overflow_is_counted(tmp_path):
    b = Broker(tmp_path / "late")
    sink, log = sink_for(b.url, queue=5, connect_wait=0.3)
    try:
        assert not sink.connected and "not reachable yet" in log.getvalue()
        for n in range(8):
            sink.item(item(n))
        assert (sink.sent, sink.dropped, sink.queued) == (5, 3, 5)
        assert "queue full" in log.getvalue()
        b.start()
        assert sink.flush(10), log.getvalue()
        assert sink.connected and sink.acked == 5
    finally:
        sink.close()
        b.stop()


@needs_broker
def test_broker_restart_mid_run_loses_no_item(broker):
    """200 items at ~2 ms each; the broker is stopped and restarted while they flow. Every id must arrive."""
    sub = Subscriber(broker.port)  # persistent session: the broker keeps its QoS 1 messages across the restart
    sink, log = sink_for(broker.url, queue=1000)
    total = 200
    try:
        def publish():
            for n in range(total):
                sink.item(item(n))
                time.sleep(0.002)

        pub = threading.Thread(target=publish)
        pub.start()
        assert sub.wait(lambda: len(sub.item_ids()) >= 30)
        broker.stop()
        down_at = len(sub.item_ids())
        time.sleep(0.3)
        broker.start()
        pub.join()
        assert sink.flush(20), f"{sink.queued} unacknowledged; {log.getvalue()}"
        assert sub.wait(lambda: len(set(sub.item_ids())) == total, 20)
        ids = sub.item_ids()
        assert set(ids) == {f"run-{n:06d}" for n in range(total)}
        assert sink.dropped == 0 and sink.connects >= 2 and down_at < total
        assert "lost" in log.getvalue() and "connected" in log.getvalue()
        print(f"broker restart: {len(set(ids))}/{total} unique items received, {len(ids) - len(set(ids))} "
              f"duplicates (QoS 1 resends), {down_at} before the stop")
    finally:
        sink.close()
        sub.close()
