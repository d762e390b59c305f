"""edge-run with the item stage: items from a folder (one per image) to the event log, a real MQTT broker, a
dry-run actuator, the page and /metrics; a video through the presence gate; bad options refused with exit 2
before anything moves; a failing output counted while classification goes on."""
from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import flat_image_folder, read_jsonl, synth_image
from trashcam.edge.cli import main
from trashcam.edge.config import RunConfig
from trashcam.edge.live import LiveRunner

from test_mqtt import MOSQUITTO, PREFIX, Broker, Subscriber, free_port  # noqa: I001 - the broker fixture's helpers


@pytest.fixture(scope="module")
def images(tmp_path_factory, synthetic_dataset) -> Path:
    return flat_image_folder(tmp_path_factory.mktemp("items"), synthetic_dataset, 3)


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (apt-get install mosquitto)")
def test_folder_items_reach_log_broker_actuator_page_and_metrics(tiny_tflite_bundle, images, tmp_path):
    broker = Broker(tmp_path / "broker").start()
    sub = Subscriber(broker.port, clean=True, client_id="run-sub")
    err = io.StringIO()
    try:
        cfg = RunConfig(str(tiny_tflite_bundle), variant="tflite-fp32", source=str(images), threads=1, streams=1,
                        log=str(tmp_path / "ev.jsonl"), serve="127.0.0.1:0", mqtt=broker.url, mqtt_topic=PREFIX,
                        actuate=("red=17", "green=18:servo=30"), reject="22", dry_run=True, dwell=0.01,
                        cooldown=0.0)
        runner = LiveRunner(cfg, err=err)
        scraped = {}

        def on_frame(rec):
            if rec["frames"] == 9:  # the last image: every item is counted by now
                for page in ("metrics", "status", "items.json"):
                    with urllib.request.urlopen(runner.server.url + page, timeout=5) as r:
                        scraped[page] = r.read().decode()

        summary = runner.run(on_frame)
        assert summary["items"] == 9 and summary["item_counts"]["uncertain"] == 0
        assert sum(summary["item_counts"].values()) == 9 and summary["sink_failures"] == {}
        items = [e for e in read_jsonl(tmp_path / "ev.jsonl") if e["event"] == "item"]
        assert len(items) == 9 and {i["reason"] for i in items} == {"image"}
        sha = json.loads((tiny_tflite_bundle / "metadata.json").read_text())["files"]["model_fp32.tflite"]["sha256"]
        assert all(i["bundle_sha256"] == sha and i["variant"] == "tflite-fp32" and i["frames_used"] == 1
                   for i in items)
        assert [i["label"] for i in items] == [Path(i["source"]).name.split("_")[0] for i in items]
        assert sub.wait(lambda: len(set(sub.item_ids())) == 9)
        assert sorted(set(sub.item_ids())) == sorted(i["id"] for i in items)
        assert err.getvalue().count("GPIO dry run:") == 6  # red and green have outputs; blue falls through
        assert 'trashcam_items_total{label="red"} 3.0' in scraped["metrics"]
        assert "trashcam_mqtt_connected 1.0" in scraped["metrics"]
        assert 'trashcam_queue_depth{queue="gpio"}' in scraped["metrics"]
        status = json.loads(scraped["status"])
        assert status["items"]["items"] == 9 and status["mqtt"]["connected"] and status["gpio"]["dry_run"]
        assert json.loads(scraped["items.json"])["total"] == 9
    finally:
        sub.close()
        broker.stop()


def write_scene_video(path: Path) -> None:
    """A still textured scene; a red item in view for frames 10-24 and a blue one for 34-48."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    scene = np.clip(rng.normal(110, 25, (96, 128, 3)), 0, 255).astype(np.uint8)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (128, 96))
    for n in range(60):
        img = scene.copy()
        if 10 <= n < 25 or 34 <= n < 49:
            img[20:76, 30:100] = synth_image(0 if n < 30 else 2, rng, (56, 70))
        vw.write(np.ascontiguousarray(img[..., ::-1]))
    vw.release()


def test_video_items_through_the_presence_gate(tiny_tflite_bundle, tmp_path):
    video = tmp_path / "scene.avi"
    write_scene_video(video)
    cfg = RunConfig(str(tiny_tflite_bundle), variant="tflite-fp32", source=str(video), threads=1, streams=1,
                    log=str(tmp_path / "ev.jsonl"), quiet=True)
    summary = LiveRunner(cfg, err=io.StringIO()).run()
    items = [e for e in read_jsonl(tmp_path / "ev.jsonl") if e["event"] == "item"]
    assert summary["frames"] == 60 and summary["items"] == 2
    assert [i["label"] for i in items] == ["red", "blue"] and [i["reason"] for i in items] == ["left", "left"]
    assert all(12 <= i["frames"] <= 16 for i in items)
    # the same video with an output that fails on every item: counted, and every frame still classified
    cfg = cfg.replace(log=None, actuate=("red=17",), reject="22", dry_run=True, dwell=0.01, cooldown=0.0)
    runner = LiveRunner(cfg, err=io.StringIO())

    def boom(item):
        raise OSError("flap jammed")

    runner.field.actuator.item = boom
    summary = runner.run()
    assert summary["frames"] == 60 and summary["items"] == 2 and summary["sink_failures"] == {"gpio": 2}


@pytest.mark.parametrize("args, message", [
    (["--actuate", "metal=17"], "unknown class 'metal'"),
    (["--actuate", "red=17", "--reject", "GPIO17"], "GPIO17 is used twice"),
    (["--actuate", "red=17:servo=720"], "servo=ANGLE"),
    (["--mqtt", "broker.local:1883"], "--mqtt 'broker.local:1883': scheme"),
    (["--mqtt", "mqtt://h", "--mqtt-topic", "bins/#"], "--mqtt-topic"),
    (["--gpio-test"], "needs --actuate"),
])
def test_bad_field_options_exit_2_before_anything_moves(tiny_tflite_bundle, images, capsys, args, message):
    rc = main([str(tiny_tflite_bundle), "--source", str(images), "--quiet", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "GPIO dry run" not in err and "edge-run: /" not in err


def test_unreachable_broker_keeps_running_and_gpio_test(tiny_tflite_bundle, images, capsys):
    rc = main([str(tiny_tflite_bundle), "--variant", "tflite-fp32", "--source", str(images), "--quiet",
               "--threads", "1", "--mqtt", f"mqtt://127.0.0.1:{free_port()}"])
    out, err = capsys.readouterr()
    assert rc == 0 and "not reachable yet" in err and "items    9" in out
    assert "9 queued item(s) not delivered" in err
    rc = main([str(tiny_tflite_bundle), "--actuate", "red=17", "--reject", "22", "--dry-run", "--gpio-test",
               "--dwell", "0.01", "--cooldown", "0"])
    err = capsys.readouterr().err
    assert rc == 0 and err.count("GPIO dry run:") == 2 and "2/2 outputs moved" in err
