"""The live loop behind `edge-run`: source -> classifier -> smoothing -> sinks, with an honest time split.

Per frame it records the raw `invoke()` time and the end-to-end classification time (frame in memory ->
smoothed decision: resize, quantise, invoke, de-quantise, temperature, smoothing), so the summary shows how
much the Python around the interpreter costs. Reading/decoding the frame and the outputs are timed apart
(`frame_ms`): a camera's wait for the next exposure is not classification overhead. Folders, stdin paths
and video files are classified on one single-threaded interpreter per thread at once (streams.StreamPool);
with one thread they are read ahead in a thread that decodes and resizes (grabber.PrefetchSource), so e2e
starts at the model-sized frame. Either way `frame_ms`, the time per frame, is what overlapping bought.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .bundle import Bundle, BundleError, atomic_write_json
from .config import RunConfig
from .grabber import PrefetchSource
from .images import load_for_model
from .runtime import Classifier, choose_variant, classify_timed, default_threads, open_engine
from .sinks import ConsoleSink, FrameSaver, JsonlSink, Sink
from .smoothing import Smoother
from .sources import is_live_source, open_source
from .streams import StreamPool, classified, plan_streams
from .stats import RateMeter, Reservoir, rss_kb


class LiveRunner:
    """Build once (bundle, interpreter, sinks), then `run()` until the source ends or `stop` is set."""

    def __init__(self, cfg: RunConfig, stop: threading.Event | None = None, out=None, err=None):
        self.cfg, self.stop = cfg, stop or threading.Event()
        self.out, self.err = out or sys.stdout, err or sys.stderr
        bundle = Bundle.load(cfg.bundle, verify=False)
        threads = cfg.threads or default_threads()
        streams, per_stream = plan_streams(cfg.streams, threads, paced=is_live_source(cfg.source))
        variant = choose_variant(bundle, cfg.variant, threads)  # by what `threads` threads measured
        self.clf = Classifier(bundle, variant, per_stream, min_confidence=cfg.min_confidence)
        self.engine, self.pre, self.labels = self.clf.engine, self.clf.pre, self.clf.labels
        self.pool = None
        if streams > 1:
            engines = [self.engine] + [open_engine(bundle, variant, per_stream) for _ in range(streams - 1)]
            # the score reads the features of the engine's last invoke: in the stream's own thread
            self.pool = StreamPool(engines, lambda eng, f: self._scored(
                eng, classify_timed(eng, self.pre, self.clf.temperature, f.image, f.model_input)))
        self.smoother = Smoother(self.labels, cfg.smooth, cfg.window, cfg.stable, self.clf.min_confidence)
        if self.clf.ood is not None:
            self.smoother.score_threshold = self.clf.ood.threshold
        self.resolved = dataclasses.replace(cfg, variant=self.clf.variant, threads=threads, streams=streams,
                                            min_confidence=self.clf.min_confidence)
        self.info = {"bundle": str(Path(cfg.bundle).resolve()), "variant": self.clf.variant,
                     "runtime": getattr(self.engine, "runtime", "?"), "threads": threads, "streams": streams,
                     "threads_per_stream": per_stream, "labels": self.labels, "temperature": self.clf.temperature,
                     "min_confidence": self.clf.min_confidence, "source": cfg.source,
                     "uncertainty_score": self.clf.ood.to_meta() if self.clf.ood else {"kind": "max-probability"}}
        # Warm the interpreters (the first frames' latency is no allocation outlier) and check the model's
        # outputs match the labels: a bundle mixed up by hand fails here, not with an IndexError later.
        blank = np.zeros((*self.pre.input_size, 3), np.uint8)
        for eng in self.pool.engines if self.pool else [self.engine]:
            out = eng.postprocess(eng.invoke_raw(eng.prepare(blank)))
        if out.shape[-1] != len(self.labels):
            raise BundleError(f"{cfg.bundle}: variant {self.clf.variant} outputs {out.shape[-1]} classes but the "
                              f"bundle has {len(self.labels)} labels; re-export the bundle")
        how = "auto: edge-bench result or start-up probe" if cfg.variant == "auto" else "as asked"
        layout = f"{threads} threads" if streams == 1 else f"{streams} streams x {per_stream} thread(s)"
        print(f"edge-run: {self.info['bundle']} variant {self.clf.variant} ({how}), {self.info['runtime']}, "
              f"{layout}, source {cfg.source}", file=self.err, flush=True)
        # Streams resize in their own threads; a single interpreter gets its frames resized ahead instead.
        self.source = open_source(cfg.source, input_size=tuple(self.pre.input_size), loop=cfg.loop,
                                  size=cfg.capture_size, stop=self.stop,
                                  prepare=None if self.pool else lambda image: load_for_model(image, self.pre))
        self.sinks: list[Sink] = []
        self.server = None
        try:
            self.source.open()
            self._open_sinks()
        except BaseException:
            self._close_sinks({})
            self.source.close()
            raise

    def _open_sinks(self) -> None:
        cfg, start = self.cfg, {"config": self.resolved.to_dict(), **self.info}
        if not cfg.quiet:
            self.sinks.append(ConsoleSink(self.err))
        if cfg.log:
            self.sinks.append(JsonlSink(cfg.log, cfg.log_mode, start))
        if cfg.save_frames:
            self.sinks.append(FrameSaver(cfg.save_frames, cfg.save_mode))
            atomic_write_json(Path(cfg.save_frames) / "run_config.json", start)
        if cfg.capture:
            from .capture import CaptureSink
            model_file = self.clf.bundle.variants[self.clf.variant]["file"]
            self.sinks.append(CaptureSink(cfg.capture, cfg.capture_when, cfg.capture_quota_mb, cfg.capture_rate,
                                          bundle_sha256=self.clf.bundle.metadata["files"][model_file]["sha256"],
                                          variant=self.clf.variant, err=self.err))
        if cfg.serve is not None:
            from .server import PreviewServer
            self.server = PreviewServer(cfg.serve, self.info)
            self.sinks.append(self.server)
            pages = "/stream.mjpg, /status"
            if cfg.capture:
                from .review import CaptureFolder, ReviewPage
                ReviewPage(CaptureFolder(cfg.capture, self.labels)).register(self.server)
                pages += ", /review"
            print(f"serving {self.server.url} ({pages})", file=self.err, flush=True)

    def _scored(self, engine, result: tuple) -> tuple:
        """classify_timed's (probs, invoke ms, e2e ms) + the frame's (score, uncertain), timed in e2e."""
        t0 = time.perf_counter()
        su = self.clf.frame_score(engine, result[0])
        return result[0], result[1], result[2] + (time.perf_counter() - t0) * 1e3, su

    def _close_sinks(self, summary: dict[str, Any]) -> None:
        for s in self.sinks:
            try:
                s.close(summary)
            except Exception as e:  # noqa: BLE001 - one broken sink must not lose the others' data
                print(f"closing {type(s).__name__} failed: {e}", file=self.err, flush=True)

    def run(self, on_frame: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        cfg = self.cfg
        invoke, e2e, frame_ms, rate = Reservoir(), Reservoir(), Reservoir(), RateMeter()
        frames = skipped = read = changes = 0
        rss_start = rss_kb()
        stopped_by, last = "end", None
        timer = threading.Timer(cfg.duration, self.stop.set) if cfg.duration else None
        if timer:
            timer.daemon = True
            timer.start()
        t_start = t_prev = time.perf_counter()
        try:
            for frame, result in classified(self.source, self.engine, self.pre, self.clf.temperature, self.pool):
                read += 1
                if frame.ok:
                    t0 = time.perf_counter()
                    if len(result) == 3:  # serial: the engine's last invoke is this frame's
                        result = self._scored(self.engine, result)
                    probs, inv_ms, e2e_ms, (score, uncertain) = result
                    dec = self.smoother.update(probs, score)
                    e2e_ms += (time.perf_counter() - t0) * 1e3
                    frames += 1
                    changes += dec.changed
                    invoke.add(inv_ms)
                    e2e.add(e2e_ms)
                    rate.tick()
                    i = int(np.argmax(probs))
                    conf = float(probs[i])
                    last = {"t": frame.timestamp, "frame": frame.index, "source": frame.name,
                            "label": self.labels[i], "class_index": i, "confidence": round(conf, 6),
                            "uncertain": uncertain, "score": round(score, 6),
                            "probs": {k: round(float(p), 6) for k, p in zip(self.labels, probs)},
                            **dec.to_dict(), "invoke_ms": round(inv_ms, 3), "e2e_ms": round(e2e_ms, 3),
                            "fps": round(rate.fps, 2), "frames": frames, "skipped": skipped}
                    for s in self.sinks:
                        s.frame(frame, last)
                    if on_frame:
                        on_frame(last)
                    if frames == min(20, cfg.max_frames or 20):
                        rss_start = rss_kb()  # after warm-up allocations (PIL, numpy, JPEG buffers)
                else:
                    skipped += 1
                    for s in self.sinks:
                        s.skip(frame)
                now = time.perf_counter()
                frame_ms.add((now - t_prev) * 1e3)
                if cfg.max_frames and read >= cfg.max_frames:
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
            inv_p50 = invoke.percentile(50)
            summary = {
                **self.info, "stopped_by": stopped_by, "frames": frames, "skipped": skipped, "read": read,
                "elapsed_s": round(elapsed, 3), "fps": round(frames / elapsed, 2) if elapsed > 0 else 0.0,
                "invoke_ms": invoke.summary(), "e2e_ms": e2e.summary(), "frame_ms": frame_ms.summary(),
                "overhead_ratio_p50": round(e2e.percentile(50) / inv_p50, 3) if inv_p50 else None,
                "frame_ratio_p50": round(frame_ms.percentile(50) / inv_p50, 3) if inv_p50 else None,
                # per-frame time against one invoke's share of the cores: invoke / streams
                "frame_ratio_mean": (round(elapsed * 1e3 / frames / (inv_p50 / self.info["streams"]), 3)
                                     if inv_p50 and frames else None),
                "read_ahead": isinstance(self.source, PrefetchSource), "streams": self.info["streams"],
                "decision_changes": changes, "decision": last.get("decision") if last else None,
                "reopens": getattr(self.source, "reopens", 0), "dropped": getattr(self.source, "dropped", 0),
                "rss_start_kb": rss_start, "rss_end_kb": rss_kb(),
            }
            self._close_sinks(summary)
            self.summary = summary
        return summary

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
    ])


def run_live(cfg: RunConfig, stop: threading.Event | None = None, out=None, err=None) -> dict[str, Any]:
    """Library entry point: build, run to the end (or stop), print the summary, return it as a dict."""
    runner = LiveRunner(cfg, stop, out, err)
    summary = runner.run()
    print(format_summary(summary), file=runner.out, flush=True)
    return summary


__all__ = ["RunConfig", "LiveRunner", "run_live", "format_summary"]
