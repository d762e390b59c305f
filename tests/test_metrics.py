"""/metrics: Prometheus text from the run's own registry, counters fed like the live loop feeds them, scrape-time
readings (fps, queues, broker, failures), and the Pi's temperature and throttling flags from fake sysfs files."""
from __future__ import annotations

import urllib.request

import pytest

pytest.importorskip("prometheus_client", reason="prometheus-client not installed (the [metrics] extra)")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from trashcam.edge.metrics import Metrics, throttled_word  # noqa: E402
from trashcam.edge.server import PreviewServer  # noqa: E402

LABELS = ["glass", "paper"]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def pi_files(tmp_path):
    (tmp_path / "temp").write_text("61234\n")
    (tmp_path / "throttled").write_text("50005\n")  # under-voltage now + throttled now; both occurred
    return str(tmp_path / "temp"), str(tmp_path / "throttled")


def test_counters_readings_and_pi_flags(pi_files):
    state = {"fps": 7.5, "uncertain_rate": 0.25, "queues": {"mqtt": 3, "gpio": 1}, "mqtt_connected": False,
             "mqtt_dropped": 2, "actuator_failures": 4, "sink_failures": {"mqtt": 1}}
    m = Metrics(LABELS, {"variant": "tflite-int8"}, state=lambda: state, thermal=pi_files[0],
                throttled=pi_files[1], vcgencmd=None)
    for ms in (3.0, 4.0, 40.0):
        m.frame(None, {"invoke_ms": ms})
    m.skip(None)
    for label, timeout in (("glass", False), ("glass", True), ("uncertain", False)):
        m.item({"label": label, "timeout": timeout})
    body, ctype = m.render()
    assert ctype.startswith("text/plain")
    s = samples(body.decode())
    assert s[("trashcam_frames_total", ())] == 3 and s[("trashcam_frames_skipped_total", ())] == 1
    assert s[("trashcam_items_total", (("label", "glass"),))] == 2
    assert s[("trashcam_items_total", (("label", "paper"),))] == 0  # present before its first item
    assert s[("trashcam_items_total", (("label", "uncertain"),))] == 1
    assert s[("trashcam_item_timeouts_total", ())] == 1
    assert s[("trashcam_invoke_seconds_count", ())] == 3
    assert s[("trashcam_invoke_seconds_bucket", (("le", "0.005"),))] == 2
    assert s[("trashcam_fps", ())] == 7.5 and s[("trashcam_uncertain_ratio", ())] == 0.25
    assert s[("trashcam_queue_depth", (("queue", "mqtt"),))] == 3
    assert s[("trashcam_mqtt_connected", ())] == 0 and s[("trashcam_mqtt_dropped_total", ())] == 2
    assert s[("trashcam_actuator_failures_total", ())] == 4
    assert s[("trashcam_sink_failures_total", (("sink", "mqtt"),))] == 1
    assert s[("trashcam_cpu_temperature_celsius", ())] == pytest.approx(61.234)
    assert s[("trashcam_throttled", (("flag", "under_voltage"),))] == 1
    assert s[("trashcam_throttled", (("flag", "throttled"),))] == 1
    assert s[("trashcam_throttled", (("flag", "freq_capped"),))] == 0
    assert s[("trashcam_throttled", (("flag", "throttled_occurred"),))] == 1
    assert s[("trashcam_info", (("variant", "tflite-int8"),))] == 1


def test_no_pi_files_means_no_pi_metrics_and_registries_are_separate(tmp_path):
    missing = str(tmp_path / "nope")
    assert throttled_word(missing, vcgencmd=None) is None
    a = Metrics(LABELS, thermal=missing, throttled=missing, vcgencmd=None)
    b = Metrics(LABELS, thermal=missing, throttled=missing, vcgencmd=None)  # a second run: no name clash
    a.frame(None, {"invoke_ms": 1.0})
    text = b.render()[0].decode()
    assert "trashcam_frames_total 0.0" in text
    assert "cpu_temperature" not in text and "trashcam_throttled" not in text


def test_served_on_the_preview_server():
    srv = PreviewServer("127.0.0.1:0", {"variant": "x"})
    try:
        m = Metrics(LABELS, state=lambda: {"fps": 1.0})
        m.register(srv)
        m.item({"label": "paper"})
        with urllib.request.urlopen(srv.url + "metrics", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            s = samples(r.read().decode())
        assert s[("trashcam_items_total", (("label", "paper"),))] == 1
        with urllib.request.urlopen(srv.url + "status", timeout=5) as r:  # the server's own pages still work
            assert r.status == 200
    finally:
        srv.close()
