"""`--mqtt URL`: item decisions to an MQTT broker, with Home Assistant discovery (paho-mqtt, the `[mqtt]` extra).

Topics under PREFIX (`--mqtt-topic`, default `trashcam/<hostname>`):
  PREFIX/item    one JSON message per item, QoS 1
  PREFIX/status  `online` / `offline`, retained; `offline` is also the Last Will, so a dead box shows offline
  PREFIX/stats   JSON counts per class, frames, queue, retained; on every item and every `stats_every` seconds
  homeassistant/sensor/<node>/.../config   retained discovery: a count sensor per class, `uncertain`, last item

Delivery: paho keeps every QoS 1 message until the broker acknowledges it and sends it again after a
reconnect (with back-off), so an item published while the broker is down or restarting is not lost. The
queue is bounded (`queue` messages not yet acknowledged); an item beyond that is dropped, counted and logged.
A broker that cannot be reached at start-up is not an error: the run goes on and queues.
`mqtt://user@host` takes the password from $TRASHCAM_MQTT_PASSWORD, so it stays out of the process list.
"""
from __future__ import annotations

import collections
import json
import os
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from .sinks import Sink
from .smoothing import UNCERTAIN


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:  # never print the password
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> MqttTarget:
    """`mqtt://[user:pass@]HOST[:PORT]` (1883) or `mqtts://...` (TLS, 8883); ValueError says what is wrong."""
    hint = "expected mqtt://[user:pass@]HOST[:PORT] or mqtts://..."
    try:
        u = urlsplit(url.strip())
        port = u.port
    except ValueError as e:
        raise ValueError(f"--mqtt {url!r}: bad port ({e}); {hint}") from None
    if u.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"--mqtt {url!r}: scheme {u.scheme or '(none)'!r}; {hint}")
    if not u.hostname:
        raise ValueError(f"--mqtt {url!r}: no host; {hint}")
    if u.path not in ("", "/") or u.query or u.fragment:
        raise ValueError(f"--mqtt {url!r}: unexpected path or query (the topic is --mqtt-topic); {hint}")
    if port == 0:
        raise ValueError(f"--mqtt {url!r}: port must be 1..65535")
    tls = u.scheme == "mqtts"
    return MqttTarget(u.hostname, port or (8883 if tls else 1883), tls,
                      unquote(u.username) if u.username else None, unquote(u.password) if u.password else None)


def default_prefix() -> str:
    return f"trashcam/{socket.gethostname().split('.')[0] or 'edge'}"


def check_prefix(prefix: str) -> str:
    p = prefix.strip().rstrip("/")
    if not p or any(c in p for c in "+#\0") or p.startswith("$"):
        raise ValueError(f"--mqtt-topic {prefix!r}: a plain topic prefix, without + # or a leading $")
    return p


def _node_id(prefix: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in prefix).strip("_").lower() or "trashcam"


def discovery(prefix: str, labels: list[str], version: str = "") -> dict[str, dict[str, Any]]:
    """Home Assistant MQTT discovery: topic -> config, one count sensor per class and `uncertain`, and the last
    item's label (with its JSON as attributes). All tied to one device and to the online/offline topic."""
    node = _node_id(prefix)
    device = {"identifiers": [node], "name": f"trashcam {prefix.rsplit('/', 1)[-1]}", "manufacturer": "trashcam",
              "model": "edge-run", **({"sw_version": version} if version else {})}
    common = {"availability_topic": f"{prefix}/status", "payload_available": "online",
              "payload_not_available": "offline", "device": device}
    out = {}
    for name in [*labels, UNCERTAIN]:
        key = _node_id(name)
        out[f"homeassistant/sensor/{node}/{key}_count/config"] = {
            **common, "name": f"{name} count", "unique_id": f"{node}_{key}_count",
            "state_topic": f"{prefix}/stats", "value_template": f"{{{{ value_json.counts[{json.dumps(name)}] }}}}",
            "state_class": "total_increasing", "unit_of_measurement": "items", "icon": "mdi:recycle"}
    out[f"homeassistant/sensor/{node}/last_item/config"] = {
        **common, "name": "last item", "unique_id": f"{node}_last_item", "state_topic": f"{prefix}/item",
        "value_template": "{{ value_json.label }}", "json_attributes_topic": f"{prefix}/item", "icon": "mdi:delete"}
    return out


class MqttSink(Sink):
    """Publishes items (`item(item_dict)`), stats and discovery. Thread-safe; paho runs its own network thread.
    `connected`, `queued` (sent, not yet acknowledged), `sent`, `acked` and `dropped` are for
    /status and /metrics."""

    def __init__(self, url: str, prefix: str | None = None, labels: list[str] | None = None, ca: str | None = None,
                 queue: int = 1000, stats_every: float = 30.0, client_id: str | None = None,
                 reconnect: tuple[float, float] = (1, 30), connect_wait: float = 2.0, log=None, version: str = ""):
        try:  # the [mqtt] extra; imported only when --mqtt is used
            import paho.mqtt.client as mqtt
        except ImportError as e:
            raise ImportError("--mqtt needs paho-mqtt: pip install 'trashcam[mqtt]'") from e

        self.target = parse_mqtt_url(url)
        self.prefix = check_prefix(prefix or default_prefix())
        if queue < 1:
            raise ValueError(f"--mqtt-queue {queue}: must be >= 1")
        self.labels, self.version, self.log = list(labels or []), version, log or sys.stderr
        self.stats_every, self.queue = stats_every, queue
        self.connected = False
        self.sent = self.dropped = self.connects = 0
        self._pending: set[int] = set()  # mids of items sent and not yet acknowledged
        self._acks: collections.deque[int] = collections.deque()  # mids paho saw acknowledged (any topic)
        self.acked = 0
        self._lock = threading.Lock()
        self._stats: dict[str, Any] = {}
        self._stop = threading.Event()
        self._said_down = False
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"trashcam-{_node_id(self.prefix)}")
        self.client.max_queued_messages_set(queue)
        self.client.reconnect_delay_set(*reconnect)
        if self.target.username:
            # a password in the URL shows in `ps`; a service passes it in the environment instead
            self.client.username_pw_set(self.target.username,
                                        self.target.password or os.environ.get("TRASHCAM_MQTT_PASSWORD"))
        if self.target.tls:
            self.client.tls_set(ca_certs=ca, cert_reqs=ssl.CERT_REQUIRED)
        elif ca:
            raise ValueError("--mqtt-ca is for mqtts:// URLs")
        self.client.will_set(f"{self.prefix}/status", "offline", qos=1, retain=True)
        self.client.on_connect, self.client.on_disconnect = self._on_connect, self._on_disconnect
        self.client.on_publish = lambda client, userdata, mid, *rest: self._acks.append(mid)
        self._up = threading.Event()
        self.client.connect_async(self.target.host, self.target.port, keepalive=30)
        self.client.loop_start()
        if not self._up.wait(connect_wait):
            self._say(f"MQTT: broker {self.target} not reachable yet; running on, items are queued (up to "
                      f"{queue}) and sent when it answers")
            self._said_down = True
        self._ticker = threading.Thread(target=self._tick, name="trashcam-mqtt-stats", daemon=True)
        self._ticker.start()

    def _say(self, msg: str) -> None:
        print(msg, file=self.log, flush=True)

    # -- paho callbacks (network thread) ---------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason, properties=None) -> None:
        if reason.is_failure:
            self._say(f"MQTT: {self.target} refused the connection: {reason}")
            return
        self.connected, self.connects = True, self.connects + 1
        client.publish(f"{self.prefix}/status", "online", qos=1, retain=True)
        for topic, cfg in discovery(self.prefix, self.labels, self.version).items():
            client.publish(topic, json.dumps(cfg), qos=1, retain=True)
        if self._said_down or self.connects > 1:
            self._say(f"MQTT: connected to {self.target}; {len(self._pending)} queued item(s) being sent")
        self._said_down = False
        self._up.set()
        self._publish_stats()

    def _on_disconnect(self, client, userdata, flags, reason, properties=None) -> None:
        if self.connected and not self._stop.is_set():
            self._say(f"MQTT: lost {self.target} ({reason}); reconnecting, items are queued")
        self.connected = False

    # -- Sink ------------------------------------------------------------------------------------------------
    def item(self, item: dict[str, Any]) -> None:
        from paho.mqtt.client import MQTT_ERR_QUEUE_SIZE

        # The ack can come before publish() returns the mid, so acks are only matched under this lock, and
        # paho's callback only appends to a deque: it must not wait for our lock while holding paho's own.
        with self._lock:
            info = self.client.publish(f"{self.prefix}/item", json.dumps(item, default=str), qos=1)
            if info.rc == MQTT_ERR_QUEUE_SIZE:
                self.dropped += 1
                n = self.dropped
            else:
                self._pending.add(info.mid)
                self.sent += 1
                n = 0
            self._drain()
        if n and (n == 1 or n % 100 == 0):  # logged, but not once per item while the broker is away
            self._say(f"MQTT: offline queue full ({self.queue}); {n} item(s) dropped so far")

    def stats(self, stats: dict[str, Any]) -> None:
        """The latest counts; published now (if connected) and again every `stats_every` seconds."""
        self._stats = dict(stats)
        self._publish_stats()

    def _publish_stats(self) -> None:
        if self.connected and self._stats:
            self.client.publish(f"{self.prefix}/stats", json.dumps({**self._stats, "t": time.time()}, default=str),
                                qos=0, retain=True)

    def _tick(self) -> None:
        while not self._stop.wait(self.stats_every):
            self._publish_stats()
            with self._lock:  # keeps the ack deque short when nothing reads the counters
                self._drain()

    def _drain(self) -> None:
        """Match the acknowledgements paho reported (under self._lock); the rest were stats or discovery."""
        while self._acks:
            mid = self._acks.popleft()
            if mid in self._pending:
                self._pending.discard(mid)
                self.acked += 1

    @property
    def queued(self) -> int:
        with self._lock:
            self._drain()
            return len(self._pending)

    def status(self) -> dict[str, Any]:
        return {"broker": str(self.target), "connected": self.connected, "queued": self.queued, "sent": self.sent,
                "acked": self.acked, "dropped": self.dropped, "connects": self.connects, "topic": self.prefix}

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every item sent so far is acknowledged (True) or `timeout` passes (False)."""
        end = time.monotonic() + timeout
        while self.queued and time.monotonic() < end:
            time.sleep(0.02)
        return not self.queued

    def close(self, summary: dict[str, Any] | None = None) -> None:
        if self._stop.is_set():
            return
        if summary and "item_counts" in summary:
            self.stats({"counts": summary["item_counts"], "items": summary.get("items", 0),
                        "frames": summary.get("frames", 0)})
        if self.connected and not self.flush(5.0):
            self._say(f"MQTT: {self.queued} item(s) not acknowledged at exit")
        elif not self.connected and self.queued:
            self._say(f"MQTT: broker away at exit; {self.queued} queued item(s) not delivered")
        self._stop.set()
        if self.connected:
            try:
                self.client.publish(f"{self.prefix}/status", "offline", qos=1, retain=True).wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass  # lost the connection meanwhile: the Last Will says offline instead
        self.client.disconnect()
        self.client.loop_stop()
