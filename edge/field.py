"""The item stage of a live run and its outputs: classified frame -> item tracker -> decision -> sinks.

Built from RunConfig by `LiveRunner` after the bundle is loaded (the classes are known) and before the source
opens, so every bad option fails first, with nothing moved. Per classified frame `frame()` feeds the tracker;
each decided item goes to the event log, the console, MQTT, the GPIO actuator, the page and /metrics. An
output that raises is counted per sink (`sink_failures`, in /status and /metrics) and never stops the run.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .images import is_image_file
from .items import Item, ItemTracker
from .presence import PresenceConfig, PresenceGate
from .sinks import JsonlSink, Sink


def is_image_source(spec: str) -> bool:
    """Folders, globs, image files and stdin paths: each image is one item. Cameras, streams and video files
    are a scene that items pass through."""
    if spec == "-":
        return True
    if spec == "auto" or spec.startswith(("picamera2", "camera:")) or "://" in spec:
        return False
    return Path(spec).is_dir() or any(c in spec for c in "*?[") or is_image_file(spec)


def use_presence(mode: str, source: str) -> bool:
    """`auto`: a presence gate for cameras and videos; none for folders and stdin (one item per image)."""
    return not is_image_source(source) if mode == "auto" else mode == "on"


class FieldStage:
    def __init__(self, cfg, labels: list[str], min_confidence: float, info: dict[str, Any], server=None,
                 sinks: list[Sink] | None = None, log=None):
        self.cfg, self.log, self.info = cfg, log or sys.stderr, info
        self.sinks = sinks if sinks is not None else []  # the run's other sinks (the event log gets items)
        gate = PresenceGate(PresenceConfig(item_timeout=cfg.item_timeout)) if use_presence(
            cfg.presence, cfg.source) else None
        self.tracker = ItemTracker(labels, min_confidence, gate, best=cfg.item_frames, decide=cfg.item_decide,
                                   bundle_sha256=info.get("bundle_sha256", ""), variant=info.get("variant", ""))
        self.outputs: list[tuple[str, Any]] = []
        self.sink_failures: dict[str, int] = {}
        self.mqtt = self.actuator = self.metrics = self.view = None
        self._rate = None
        if cfg.actuate or cfg.reject is not None:
            from .gpio import Actuator, plan_outputs
            outs = plan_outputs(cfg.actuate, cfg.reject, labels)  # unknown class, pin twice: before any pin
            self.actuator = Actuator(outs, cfg.dwell, cfg.cooldown, dry_run=cfg.dry_run, log=self.log)
            self.outputs.append(("gpio", self.actuator))
        if cfg.mqtt:
            from .mqtt import MqttSink
            self.mqtt = MqttSink(cfg.mqtt, cfg.mqtt_topic, labels, ca=cfg.mqtt_ca, queue=cfg.mqtt_queue,
                                 log=self.log)
            self.outputs.append(("mqtt", self.mqtt))
        if server is not None:
            from .web_items import ItemsView
            self.view = ItemsView(labels, info=info, status=self.status)
            self.view.register(server)
            try:
                from .metrics import Metrics
                self.metrics = Metrics(labels, {k: info.get(k, "") for k in ("variant", "runtime", "bundle")},
                                       state=self.state)
            except ImportError:
                print("serve: /metrics needs prometheus-client (in trashcam[edge]; pip install prometheus-client)",
                      file=self.log)
            else:
                self.metrics.register(server)
                self.outputs.append(("metrics", self.metrics))

    # -- per frame -------------------------------------------------------------------------------------------
    def frame(self, frame, rec: dict[str, Any], probs: np.ndarray) -> Item | None:
        """Feed one classified frame; returns the item it completed, if any (already sent everywhere)."""
        if self.metrics is not None:
            self._guard("metrics", self.metrics.frame, frame, rec)
        self._rate = rec.get("fps")
        image = frame.image if frame.image is not None else frame.model_input
        item = self.tracker.update(image, probs, frame.timestamp, frame.name, bool(rec.get("uncertain")))
        if item is not None:
            self.emit(item)
        return item

    def skip(self, frame) -> None:
        if self.metrics is not None:
            self._guard("metrics", self.metrics.skip, frame)

    def emit(self, item: Item) -> None:
        d = item.to_dict()
        for s in self.sinks:
            if isinstance(s, JsonlSink):
                self._guard("log", s._write, d)
        if not self.cfg.quiet and self.tracker.gate is not None:  # per image, the frame line says it already
            flag = f" ({item.reason})" if item.reason not in ("left", "image") else ""
            tty = "\r\x1b[K" if getattr(self.log, "isatty", lambda: False)() else ""  # over the live line
            print(f"{tty}item {item.seq}: {item.label} {item.confidence:.2f} from {item.frames_used}/{item.frames} "
                  f"frame(s){flag}", file=self.log, flush=True)
        for name, out in self.outputs:
            self._guard(name, out.item, d)
        for s in self.sinks:
            if hasattr(s, "capture"):  # edge-run --capture: the item's best raw frame + its decision
                self._guard("capture", s.capture, item.thumbnail, d)
        if self.view is not None:
            self._guard("page", self.view.add, d, item.thumbnail)
        if self.mqtt is not None:
            self._guard("mqtt", self.mqtt.stats, self._stats())

    def _guard(self, name: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - an output must never stop classification
            n = self.sink_failures[name] = self.sink_failures.get(name, 0) + 1
            if n == 1 or n % 100 == 0:
                print(f"{name} output failed ({n} so far): {type(e).__name__}: {e}", file=self.log, flush=True)

    # -- reporting -------------------------------------------------------------------------------------------
    def _stats(self) -> dict[str, Any]:
        s = self.tracker.summary()
        return {"counts": s["item_counts"], "items": s["items"], "uncertain_rate": s["uncertain_rate"],
                "timeouts": s["item_timeouts"]}

    def state(self) -> dict[str, Any]:
        """What /metrics reads at scrape time."""
        s: dict[str, Any] = {"uncertain_rate": self.tracker.summary()["uncertain_rate"],
                             "sink_failures": dict(self.sink_failures), "queues": {}}
        if self._rate is not None:
            s["fps"] = self._rate
        if self.mqtt is not None:
            s["queues"]["mqtt"] = self.mqtt.queued
            s["mqtt_connected"], s["mqtt_dropped"] = self.mqtt.connected, self.mqtt.dropped
        if self.actuator is not None:
            s["queues"]["gpio"] = self.actuator._q.qsize()
            s["actuator_failures"] = self.actuator.failures
        return s

    def status(self) -> dict[str, Any]:
        """What /status adds: items, presence state, outputs and their failures."""
        out: dict[str, Any] = {"items": {**self._stats(), "state": self.tracker.state},
                               "sink_failures": dict(self.sink_failures)}
        if self.mqtt is not None:
            out["mqtt"] = self.mqtt.status()
        if self.actuator is not None:
            out["gpio"] = self.actuator.status()
        return out

    def close(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Decide an item still in view, add the item counts to `summary`, close the outputs."""
        last = self.tracker.finish(time.time())
        if last is not None:
            self.emit(last)
        summary.update(self.tracker.summary())
        summary["sink_failures"] = dict(self.sink_failures)
        if self.actuator is not None:
            summary["actuator"] = self.actuator.status()
        if self.mqtt is not None:
            summary["mqtt"] = self.mqtt.status()
        for name, out in self.outputs:
            if name != "metrics":
                try:
                    out.close(summary)
                except Exception as e:  # noqa: BLE001
                    print(f"closing {name} failed: {e}", file=self.log, flush=True)
        return summary


def run_gpio_test(cfg, log=None) -> int:
    """`edge-run BUNDLE --actuate ... --gpio-test`: move every output once (the bundle only names the classes);
    0 if all moved, 1 if one failed."""
    from .bundle import Bundle
    from .gpio import Actuator, plan_outputs

    log = log or sys.stderr
    outs = plan_outputs(cfg.actuate, cfg.reject, Bundle.load(cfg.bundle, verify=False).labels)
    act = Actuator(outs, cfg.dwell, cfg.cooldown, dry_run=cfg.dry_run, log=log)
    try:
        done = act.test_cycle()
    finally:
        act.close()
    bad = [o.describe() for o, ok in done if not ok]
    print(f"gpio test: {len(done) - len(bad)}/{len(done)} outputs moved" + (f"; failed: {', '.join(bad)}" if bad
                                                                           else ""), file=log, flush=True)
    return 1 if bad else 0
