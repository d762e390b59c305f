"""Peak memory of a variant, measured in a fresh process that loads it and runs the latency protocol.

One process per (variant, thread count): a model loaded earlier cannot inflate a later one's peak RSS, and a
runtime's thread pool (TensorFlow's cannot be resized once started) is set up exactly as asked. The worker is
this module run as `python -m trashcam.benchmarks.memory` with a JSON spec on stdin; it prints one JSON line.
`baseline_rss_mb` is the process after Python + numpy + the runtime library are imported, so
`peak_rss_mb - baseline_rss_mb` is what the model itself costs. `peak_rss_mb` is read before the streamed
per-frame timing, which loads one more interpreter per thread (edge-run's folder mode); `pipelined_peak_rss_mb`
is the peak with those.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RESULT_PREFIX = "BENCH_RESULT "


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float | None:
    """High-water mark of this process's resident memory (VmHWM; ru_maxrss where /proc is missing)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        try:
            import resource
            ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            kb = ru // 1024 if sys.platform == "darwin" else ru  # macOS reports bytes, Linux KiB
        except (ImportError, OSError):
            return None
    return round(kb / 1024, 2)


def rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else round(kb / 1024, 2)


def run_isolated(spec: dict, timeout: float = 900) -> dict:
    """Run `engines.measure_variant(**spec)` in a fresh interpreter; returns its result + memory figures.

    Raises RuntimeError with the worker's last error line when it fails (the caller skips that variant).
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
           "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, "-m", "trashcam.benchmarks.memory"], input=json.dumps(spec),
                       capture_output=True, text=True, timeout=timeout, env=env)
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            out = json.loads(line[len(RESULT_PREFIX):])
            if "error" in out:
                raise RuntimeError(out["error"])
            return out
    tail = [ln for ln in (p.stderr or "").strip().splitlines() if ln.strip()][-1:] or [f"exit status {p.returncode}"]
    raise RuntimeError(f"benchmark worker for {spec.get('variant')} failed: {tail[0]}")


def _worker() -> int:
    from .engines import VariantUnavailable, measure_variant

    spec = json.loads(sys.stdin.read())
    mem: dict = {}
    try:
        res = measure_variant(**spec, on_loaded=lambda: mem.update(baseline_rss_mb=rss_mb()),
                              on_timed=lambda: mem.update(peak_rss_mb=peak_rss_mb()))
    except (VariantUnavailable, RuntimeError, ImportError, OSError, ValueError) as e:
        print(RESULT_PREFIX + json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    res.update(mem, pipelined_peak_rss_mb=peak_rss_mb())  # with the extra engines of the streamed timing
    print(RESULT_PREFIX + json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(_worker())
