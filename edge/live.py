"""The live loop behind `edge-run`: source -> classifier -> smoothing -> sinks, with an honest time split.

Per frame it records the raw `invoke()` time and the end-to-end classification time (frame in memory ->
smoothed decision: resize, quantise, invoke, de-quantise, temperature, smoothing), so the summary shows how
much the Python around the interpreter costs. Reading/decoding the frame and the outputs are timed apart
(`frame_ms`): a camera's wait for the next exposure is not classification overhead. Folders, stdin paths
and video files are classified on one single-threaded interpreter per thread at once (streams.StreamPool);
with one thread they are read ahead in a thread that decodes and resizes (grabber.PrefetchSource), so e2e
starts at the model-sized frame. Either way `frame_ms`, the time per frame, is what overlapping bought.

The parts, one job each: `LiveModel.load` (bundle -> interpreters, checked), `open_sinks` (console, JSONL,
saved frames, HTTP view), `RunStats` (counts, latencies, the summary), `SkipGate` (how many skip records reach
the sinks), and `LiveRunner`, which wires them to a source and runs the loop.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .bundle import Bundle, BundleError, atomic_write_json
from .config import RunConfig
from .field import FieldStage
from .frames import Frame
from .grabber import PrefetchSource, for_display
from .images import load_for_model
from .interpreters import open_engine
from .machine import default_threads
from .runtime import Classifier, choose_variant, classify_timed
from .sinks import ConsoleSink, FrameSaver, JsonlSink, Sink
from .smoothing import Smoother
from .sources import is_live_source, open_source
from .streams import StreamPool, classified, plan_streams
from .stats import RateMeter, Reservoir, rss_kb


@dataclass
class LiveModel:
    """The classifier side of a run: the chosen variant's interpreter(s), checked against the labels."""

    clf: Classifier
    pool: StreamPool | None
    threads: int
    streams: int
    per_stream: int

    @classmethod
    def load(cls, cfg: RunConfig) -> "LiveModel":
        bundle = Bundle.load(cfg.bundle, verify=False)
        threads = cfg.threads or default_threads()
        streams, per_stream = plan_streams(cfg.streams, threads, paced=is_live_source(cfg.source))
        variant = choose_variant(bundle, cfg.variant, threads)  # by what `threads` threads measured
        clf = Classifier(bundle, variant, per_stream, min_confidence=cfg.min_confidence)
        pool = None
        if streams > 1:
            engines = [clf.engine] + [open_engine(bundle, variant, per_stream) for _ in range(streams - 1)]

            def work(eng, f):
                # the score reads the features of the engine's last invoke: in the stream's own thread
                result = scored(clf, eng, classify_timed(eng, clf.pre, clf.temperature, f.image, f.model_input))
                f.image = for_display(f.image)  # classified frames wait for their turn without the full photo
                return result
            pool = StreamPool(engines, work)
        model = cls(clf, pool, threads, streams, per_stream)
        model.warm_up(cfg.bundle)
        return model

    def warm_up(self, where: str) -> None:
        """Run every interpreter once (the first frames' latency is no allocation outlier) and check the outputs
        match the labels: a bundle mixed up by hand fails here, not with an IndexError later."""
        blank = np.zeros((*self.clf.pre.input_size, 3), np.uint8)
        for eng in self.pool.engines if self.pool else [self.clf.engine]:
            out = eng.postprocess(eng.invoke_raw(eng.prepare(blank)))
            if out.shape[-1] != len(self.clf.labels):
                raise BundleError(f"{where}: variant {self.clf.variant} outputs {out.shape[-1]} classes but the "
                                  f"bundle has {len(self.clf.labels)} labels; re-export the bundle")

    def info(self, cfg: RunConfig) -> dict[str, Any]:
        clf = self.clf
        return {"bundle": str(Path(cfg.bundle).resolve()), "variant": clf.variant,
                "runtime": getattr(clf.engine, "runtime", "?"), "threads": self.threads, "streams": self.streams,
                "threads_per_stream": self.per_stream, "labels": clf.labels, "temperature": clf.temperature,
                "min_confidence": clf.min_confidence, "source": cfg.source,
                "uncertainty_score": clf.ood.to_meta() if clf.ood else {"kind": "max-probability"}}


def scored(clf: Classifier, engine, result: tuple) -> tuple:
    """classify_timed's (probs, invoke ms, e2e ms) + the frame's (score, uncertain), timed in e2e."""
    t0 = time.perf_counter()
    su = clf.frame_score(engine, result[0])
    return result[0], result[1], result[2] + (time.perf_counter() - t0) * 1e3, su


def open_sinks(cfg: RunConfig, start: dict[str, Any], info: dict[str, Any], err) -> list[Sink]:
    """The outputs asked for; on a failure the ones already open are closed before the error propagates."""
    if start.get("config", {}).get("serve_token"):  # logs are read by more people than the page
        start = {**start, "config": {**start["config"], "serve_token": "(set)"}}
    sinks: list[Sink] = []
    try:
        if not cfg.quiet:
            sinks.append(ConsoleSink(err))
        if cfg.log:
            sinks.append(JsonlSink(cfg.log, cfg.log_mode, start, max_mb=cfg.log_max_mb))
        if cfg.save_frames:
            sinks.append(FrameSaver(cfg.save_frames, cfg.save_mode))
            atomic_write_json(Path(cfg.save_frames) / "run_config.json", start)
        if cfg.capture:  # fed one decision per item by the item stage (edge/field.py)
            from .capture import CaptureSink
            sinks.append(CaptureSink(cfg.capture, cfg.capture_when, cfg.capture_quota_mb, cfg.capture_rate,
                                     bundle_sha256=info.get("bundle_sha256", ""), variant=info["variant"], err=err))
        if cfg.serve is not None:
            from .server import PreviewServer
            server = PreviewServer(cfg.serve, info, token=cfg.serve_token, allowed_hosts=cfg.serve_allow_host or None,
                                   max_clients=cfg.serve_max_clients)
            sinks.append(server)
            pages = "/stream.mjpg, /status, /metrics"
            if cfg.capture:
                from .review import CaptureFolder, ReviewPage
                ReviewPage(CaptureFolder(cfg.capture, info["labels"])).register(server)
                pages += ", /review"
            print(f"serving {server.url} ({pages})", file=err, flush=True)
    except BaseException:
        close_sinks(sinks, {}, err)
        raise
    return sinks


def close_sinks(sinks: list[Sink], summary: dict[str, Any], err) -> None:
    for s in sinks:
        try:
            s.close(summary)
        except Exception as e:  # noqa: BLE001 - one broken sink must not lose the others' data
            print(f"closing {type(s).__name__} failed: {e}", file=err, flush=True)


class SkipGate:
    """Which skipped frames reach the sinks: the first `burst`, then one per `interval` seconds, each passed one
    saying how many were held back. A source of nothing but bad frames then writes a few records a second,
    not thousands; the summary still counts every skip."""

    def __init__(self, burst: int = 20, interval: float = 1.0):
        self.burst, self.interval = burst, interval
        self.passed, self.held, self._last = 0, 0, -float("inf")

    def let_through(self, frame: Frame, now: float) -> bool:
        if self.passed >= self.burst and now - self._last < self.interval:
            self.held += 1
            return False
        if self.held:
            frame.error = f"{frame.error} (+{self.held} more skipped, not logged one by one)"
            self.held = 0
        self.passed += 1
        self._last = now
        return True


class RunStats:
    """Counts and latencies of a run, bounded in memory, and the summary made of them."""

    def __init__(self, warmup_frames: int):
        self.invoke, self.e2e, self.frame_ms, self.rate = Reservoir(), Reservoir(), Reservoir(), RateMeter()
        self.frames = self.skipped = self.read = self.changes = 0
        self.warmup_frames = warmup_frames
        self.rss_start = rss_kb()

    def classified(self, inv_ms: float, e2e_ms: float, changed: bool) -> None:
        self.frames += 1
        self.changes += changed
        self.invoke.add(inv_ms)
        self.e2e.add(e2e_ms)
        self.rate.tick()
        if self.frames == self.warmup_frames:
            self.rss_start = rss_kb()  # after warm-up allocations (PIL, numpy, JPEG buffers)

    def summary(self, info: dict[str, Any], elapsed: float, source, stopped_by: str,
                last: dict[str, Any] | None) -> dict[str, Any]:
        inv_p50, e2e = self.invoke.percentile(50), self.e2e
        return {
            **info, "stopped_by": stopped_by, "frames": self.frames, "skipped": self.skipped, "read": self.read,
            "elapsed_s": round(elapsed, 3), "fps": round(self.frames / elapsed, 2) if elapsed > 0 else 0.0,
            "invoke_ms": self.invoke.summary(), "e2e_ms": e2e.summary(), "frame_ms": self.frame_ms.summary(),
            "overhead_ratio_p50": round(e2e.percentile(50) / inv_p50, 3) if inv_p50 else None,
            "frame_ratio_p50": round(self.frame_ms.percentile(50) / inv_p50, 3) if inv_p50 else None,
            # per-frame time against one invoke's share of the cores: invoke / streams
            "frame_ratio_mean": (round(elapsed * 1e3 / self.frames / (inv_p50 / info["streams"]), 3)
                                 if inv_p50 and self.frames else None),
            "read_ahead": isinstance(source, PrefetchSource), "streams": info["streams"],
            "decision_changes": self.changes, "decision": last.get("decision") if last else None,
            "reopens": getattr(source, "reopens", 0), "dropped": getattr(source, "dropped", 0),
            "rss_start_kb": self.rss_start, "rss_end_kb": rss_kb(),
        }


class LiveRunner:
    """Build once (model, source, sinks), then `run()` until the source ends or `stop` is set."""

    def __init__(self, cfg: RunConfig, stop: threading.Event | None = None, out=None, err=None):
        self.cfg, self.stop = cfg, stop or threading.Event()
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.model = LiveModel.load(cfg)
        clf = self.clf = self.model.clf
        self.engine, self.pre, self.labels, self.pool = clf.engine, clf.pre, clf.labels, self.model.pool
        self.smoother = Smoother(self.labels, cfg.smooth, cfg.window, cfg.stable, clf.min_confidence)
        if clf.ood is not None:
            self.smoother.score_threshold = clf.ood.threshold
        self.resolved = dataclasses.replace(cfg, variant=clf.variant, threads=self.model.threads,
                                            streams=self.model.streams, min_confidence=clf.min_confidence)
        self.info = self.model.info(cfg)
        self.info["bundle_sha256"] = variant_sha256(clf.bundle, clf.variant)  # what each item was decided by
        if cfg.actuate or cfg.reject is not None:
            from .gpio import plan_outputs
            plan_outputs(cfg.actuate, cfg.reject, self.labels)  # an unknown class fails before anything opens
        self._announce()
        # Streams resize in their own threads; a single interpreter gets its frames resized ahead instead.
        self.source = open_source(cfg.source, input_size=tuple(self.pre.input_size), loop=cfg.loop,
                                  size=cfg.capture_size, stop=self.stop, max_pixels=cfg.max_pixels,
                                  prepare=None if self.pool else lambda image: load_for_model(image, self.pre))
        try:
            self.source.open()
            self.sinks = open_sinks(cfg, {"config": self.resolved.to_dict(), **self.info}, self.info, self.err)
        except BaseException:
            self.source.close()
            raise
        self.server = None
        if cfg.serve is not None:
            from .server import PreviewServer
            self.server = next(s for s in self.sinks if isinstance(s, PreviewServer))
        # the item stage and its outputs (MQTT, GPIO, the items page, /metrics): issue 14
        try:
            self.field = FieldStage(cfg, self.labels, clf.min_confidence, self.info, server=self.server,
                                    sinks=self.sinks, log=self.err)
        except BaseException:
            close_sinks(self.sinks, {}, self.err)
            self.source.close()
            raise

    def _announce(self) -> None:
        m, cfg = self.model, self.cfg
        how = "auto: edge-bench result or start-up probe" if cfg.variant == "auto" else "as asked"
        layout = f"{m.threads} threads" if m.streams == 1 else f"{m.streams} streams x {m.per_stream} thread(s)"
        print(f"edge-run: {self.info['bundle']} variant {self.clf.variant} ({how}), {self.info['runtime']}, "
              f"{layout}, source {cfg.source}", file=self.err, flush=True)

    def _record(self, frame: Frame, probs: np.ndarray, score: float, uncertain: bool, dec, inv_ms: float,
                e2e_ms: float, stats: RunStats) -> dict[str, Any]:
        i = int(np.argmax(probs))
        conf = float(probs[i])
        return {"t": frame.timestamp, "frame": frame.index, "source": frame.name,
                "label": self.labels[i], "class_index": i, "confidence": round(conf, 6),
                "uncertain": uncertain, "score": round(score, 6),
                "probs": {k: round(float(p), 6) for k, p in zip(self.labels, probs)},
                **dec.to_dict(), "invoke_ms": round(inv_ms, 3), "e2e_ms": round(e2e_ms, 3),
                "fps": round(stats.rate.fps, 2), "frames": stats.frames, "skipped": stats.skipped}

    def run(self, on_frame: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        cfg = self.cfg
        stats, gate = RunStats(min(20, cfg.max_frames or 20)), SkipGate()
        stopped_by, last = "end", None
        timer = threading.Timer(cfg.duration, self.stop.set) if cfg.duration else None
        if timer:
            timer.daemon = True
            timer.start()
        t_start = t_prev = time.perf_counter()
        try:
            for frame, result in classified(self.source, self.engine, self.pre, self.clf.temperature, self.pool):
                stats.read += 1
                if frame.ok:
                    t0 = time.perf_counter()
                    if len(result) == 3:  # serial: the engine's last invoke is this frame's
                        result = scored(self.clf, self.engine, result)
                    probs, inv_ms, e2e_ms, (score, uncertain) = result
                    dec = self.smoother.update(probs, score)
                    e2e_ms += (time.perf_counter() - t0) * 1e3
                    stats.classified(inv_ms, e2e_ms, dec.changed)
                    last = self._record(frame, probs, score, uncertain, dec, inv_ms, e2e_ms, stats)
                    for s in self.sinks:
                        s.frame(frame, last)
                    self.field.frame(frame, last, probs)
                    if on_frame:
                        on_frame(last)
                else:
                    stats.skipped += 1
                    self.field.skip(frame)
                    if gate.let_through(frame, time.monotonic()):
                        for s in self.sinks:
                            s.skip(frame)
                now = time.perf_counter()
                stats.frame_ms.add((now - t_prev) * 1e3)
                if cfg.max_frames and stats.read >= cfg.max_frames:
                    stopped_by = "max_frames"
                    break
                if self.stop.is_set():
                    break
                if cfg.max_fps and self.stop.wait(max(0.0, 1.0 / cfg.max_fps - (now - t_prev))):
                    break
                t_prev = time.perf_counter()
            if stopped_by == "end" and self.stop.is_set():
                stopped_by = ("signal" if self._signalled else
                              "duration" if timer is not None and not timer.is_alive() else "stop")
        finally:
            if timer:
                timer.cancel()
            elapsed = time.perf_counter() - t_start
            self.source.close()
            self.summary = stats.summary(self.info, elapsed, self.source, stopped_by, last)
            try:
                self.field.close(self.summary)  # first: a last open item still reaches the log and the broker
            except Exception as e:  # noqa: BLE001
                print(f"closing the item stage failed: {e}", file=self.err, flush=True)
            close_sinks(self.sinks, self.summary, self.err)
        return self.summary

    _signalled = False

    def request_stop(self, signalled: bool = True) -> None:
        self._signalled = self._signalled or signalled
        self.stop.set()


def format_summary(s: dict[str, Any]) -> str:
    inv, e2e, fr = s["invoke_ms"], s["e2e_ms"], s["frame_ms"]
    ratio, ahead, streams = s["overhead_ratio_p50"], s.get("read_ahead"), s.get("streams", 1)
    e2e_note = ("x{} of invoke; ".format(ratio) if ratio else "") + (
        "from the frame at model size: decoded and resized ahead in a thread" if ahead else "resize to decision")
    if streams > 1:
        layout = f"{streams} streams x {s.get('threads_per_stream', 1)} thread(s)"
        frame_note = (f"time per frame over {streams} streams, each invoking for the p50 above; mean x"
                      f"{s.get('frame_ratio_mean')} of invoke / {streams}")
    else:
        layout = f"{s['threads']} threads"
        frame_note = "time per frame, incl. reading the source and outputs" + (
            f"; x{s['frame_ratio_p50']} of invoke" if s.get("frame_ratio_p50") else "")
    return "\n".join([
        f"summary: {s['frames']} frames classified, {s['skipped']} skipped, {s['elapsed_s']:.1f} s, "
        f"{s['fps']:.1f} fps ({s['variant']}, {layout}, {s['runtime']}; stopped by {s['stopped_by']})",
        f"  invoke   p50 {inv['p50']:.2f} ms  p95 {inv['p95']:.2f} ms",
        f"  e2e      p50 {e2e['p50']:.2f} ms  p95 {e2e['p95']:.2f} ms  ({e2e_note})",
        f"  frame    p50 {fr['p50']:.2f} ms  mean {fr['mean']:.2f} ms  ({frame_note})",
        f"  decision {s['decision']} ({s['decision_changes']} changes); RSS {s['rss_start_kb'] // 1024} -> "
        f"{s['rss_end_kb'] // 1024} MiB",
    ] + ([f"  items    {s['items']}: " + ", ".join(f"{k} {n}" for k, n in s["item_counts"].items()) +
          f" ({s.get('item_timeouts', 0)} timed out)"] if s.get("items") is not None else []))


def variant_sha256(bundle: Bundle, variant: str) -> str:
    """The sha256 of the model file a run uses (what an item's decision came from)."""
    rel = bundle.variants.get(variant, {}).get("file", "")
    return str(bundle.metadata.get("files", {}).get(rel, {}).get("sha256", ""))


__all__ = ["LiveRunner", "LiveModel", "RunStats", "SkipGate", "open_sinks", "format_summary"]
