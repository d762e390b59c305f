"""Where a benchmark ran: CPU, its SIMD features, OS, Python, runtime versions and thread settings.

Latency numbers mean little without these. The CPU flags matter most: INT8 kernels are only fast where the
CPU has integer dot-product instructions (x86 VNNI, ARM `asimddp`/`i8mm`), which is why INT8 can be slower
than FP32 on a laptop and faster on a Pi. Nothing here imports TensorFlow: versions come from package metadata.
"""
from __future__ import annotations

import os
import platform
import sys

from trashcam.edge.bundle import now_iso
from trashcam.edge.machine import cpu_info, read_text

PACKAGES = ("numpy", "pillow", "ai-edge-litert", "tflite-runtime", "onnxruntime", "tensorflow", "tensorflow-cpu",
            "keras", "opencv-python-headless")
THREAD_ENV = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "TF_ENABLE_ONEDNN_OPTS",
              "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def memory_total_mb() -> float | None:
    for line in read_text("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def package_versions(names=PACKAGES) -> dict[str, str]:
    from importlib import metadata
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return out


def collect(threads: tuple[int, ...] = ()) -> dict:
    return {
        "date": now_iso(),
        "hostname": platform.node(),
        "cpu": cpu_info(),
        "memory_mb": memory_total_mb(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "threads": list(threads),
        "thread_env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
    }


def describe(env: dict) -> str:
    """One line for the top of a table: 'Intel Xeon ... (x86_64, 2 cores; avx2 fma), Linux-..., Python 3.11'."""
    cpu = env.get("cpu", {})
    flags = " ".join(cpu.get("flags", [])) or "no SIMD flags read"
    return (f"{cpu.get('model')} ({cpu.get('arch')}, {cpu.get('cores_usable') or cpu.get('cores')} cores; {flags}), "
            f"{env.get('os')}, Python {env.get('python')}, {env.get('date')}")
