"""`/metrics` for Prometheus (prometheus-client, the `[metrics]` extra), on the `--serve` port.

Counted as frames and items pass: frames, skipped frames, items per class (`uncertain` included), timeouts and
an invoke latency histogram. Read when Prometheus scrapes: fps, the uncertain rate, queue depths (MQTT items
not yet acknowledged, flap moves waiting), the broker connection, actuator and sink failures, and the CPU
temperature and Pi throttling flags where the OS exposes them. Everything lives in this run's own registry,
not prometheus-client's global one, so two runs in one process (tests) never collide.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from .sinks import Sink
from .smoothing import UNCERTAIN

THERMAL = "/sys/class/thermal/thermal_zone0/temp"
THROTTLED = "/sys/devices/platform/soc/soc:firmware/get_throttled"
# bits of the firmware's get_throttled word (Raspberry Pi documentation, `vcgencmd get_throttled`)
THROTTLE_BITS = {0: "under_voltage", 1: "freq_capped", 2: "throttled", 3: "soft_temp_limit",
                 16: "under_voltage_occurred", 17: "freq_capped_occurred", 18: "throttled_occurred",
                 19: "soft_temp_limit_occurred"}


def cpu_temperature(path: str = THERMAL) -> float | None:
    try:
        return int(Path(path).read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


def throttled_word(path: str = THROTTLED, vcgencmd: str | None = "vcgencmd") -> int | None:
    """The Pi firmware's throttling bits: sysfs (newer kernels), else `vcgencmd get_throttled`; None elsewhere."""
    try:
        return int(Path(path).read_text().strip(), 16)
    except (OSError, ValueError):
        pass
    exe = shutil.which(vcgencmd) if vcgencmd else None
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=2).stdout
        return int(out.strip().split("=", 1)[1], 16)  # "throttled=0x50000"
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


class Metrics(Sink):
    """A Sink (frames, skips, items) plus scrape-time readings of `state()`: a dict with any of fps,
    uncertain_rate, queues {name: depth}, mqtt_connected (bool), actuator_failures, sink_failures {sink: n}."""

    def __init__(self, labels: list[str], info: dict[str, Any] | None = None,
                 state: Callable[[], dict[str, Any]] | None = None, thermal: str = THERMAL,
                 throttled: str = THROTTLED, vcgencmd: str | None = "vcgencmd"):
        from prometheus_client import CollectorRegistry, Counter, Histogram, Info  # the [metrics] extra

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.state = state or dict
        self.thermal, self.throttled, self.vcgencmd = thermal, throttled, vcgencmd
        self._throttle_cache: tuple[float, int | None] = (-1e9, None)
        self.frames = Counter("trashcam_frames", "Frames classified", registry=r)
        self.skipped = Counter("trashcam_frames_skipped", "Frames that could not be read or decoded", registry=r)
        self.items = Counter("trashcam_items", "Items decided, by label (a class or uncertain)", ["label"],
                             registry=r)
        for name in [*labels, UNCERTAIN]:
            self.items.labels(name)  # every class shows up at 0 before its first item
        self.timeouts = Counter("trashcam_item_timeouts", "Items decided because they did not leave in time",
                                registry=r)
        self.invoke = Histogram("trashcam_invoke_seconds", "Model invoke time per frame", registry=r,
                                buckets=(.001, .002, .005, .01, .02, .05, .1, .2, .5, 1.0, 2.0))
        if info:
            Info("trashcam", "What this run classifies with", registry=r).info(
                {k: str(v) for k, v in info.items() if isinstance(v, (str, int, float))})
        r.register(_Readings(self))

    # -- Sink ------------------------------------------------------------------------------------------------
    def frame(self, frame, rec: dict[str, Any]) -> None:
        self.frames.inc()
        if rec.get("invoke_ms") is not None:
            self.invoke.observe(rec["invoke_ms"] / 1000.0)

    def skip(self, frame) -> None:
        self.skipped.inc()

    def item(self, item: dict[str, Any]) -> None:
        self.items.labels(item["label"]).inc()
        if item.get("timeout"):
            self.timeouts.inc()

    def throttled_now(self) -> int | None:
        # vcgencmd is a process start: at most every 10 s, whatever the scrape interval
        t, word = self._throttle_cache
        if time.monotonic() - t > 10:
            word = throttled_word(self.throttled, self.vcgencmd)
            self._throttle_cache = (time.monotonic(), word)
        return word

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def register(self, server) -> None:
        """`/metrics` on the preview server."""
        server.add_route("/metrics", lambda req: (200, *reversed(self.render())))


class _Readings:
    """Values read at scrape time from the live objects, not pushed per frame."""

    def __init__(self, m: Metrics):
        self.m = m

    def describe(self):
        return []  # dynamic: no fixed names to pre-register

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.m.state() or {}
        if "fps" in s:
            yield GaugeMetricFamily("trashcam_fps", "Frames classified per second (last seconds)", value=s["fps"])
        if "uncertain_rate" in s:
            yield GaugeMetricFamily("trashcam_uncertain_ratio", "Share of items decided as uncertain",
                                    value=s["uncertain_rate"])
        queues = GaugeMetricFamily("trashcam_queue_depth", "Messages or moves waiting, by queue", labels=["queue"])
        for name, depth in (s.get("queues") or {}).items():
            queues.add_metric([name], depth)
        yield queues
        if s.get("mqtt_connected") is not None:
            yield GaugeMetricFamily("trashcam_mqtt_connected", "1 while connected to the MQTT broker",
                                    value=1.0 if s["mqtt_connected"] else 0.0)
        if "mqtt_dropped" in s:
            yield CounterMetricFamily("trashcam_mqtt_dropped", "Items dropped because the offline queue was full",
                                      value=s["mqtt_dropped"])
        if "actuator_failures" in s:
            yield CounterMetricFamily("trashcam_actuator_failures", "Flap/servo/relay moves that failed",
                                      value=s["actuator_failures"])
        fails = CounterMetricFamily("trashcam_sink_failures", "Errors raised by an output (it kept running)",
                                    labels=["sink"])
        for name, n in (s.get("sink_failures") or {}).items():
            fails.add_metric([name], n)
        yield fails
        temp = cpu_temperature(self.m.thermal)
        if temp is not None:
            yield GaugeMetricFamily("trashcam_cpu_temperature_celsius", "CPU temperature", value=temp)
        word = self.m.throttled_now()
        if word is not None:
            g = GaugeMetricFamily("trashcam_throttled", "Raspberry Pi firmware throttling flags", labels=["flag"])
            for bit, name in THROTTLE_BITS.items():
                g.add_metric([name], float(bool(word >> bit & 1)))
            yield g
