"""Where a benchmark ran: CPU, its SIMD features, OS, Python, runtime versions and thread settings.

Latency numbers mean little without these. The CPU flags matter most: INT8 kernels are only fast where the
CPU has integer dot-product instructions (x86 VNNI, ARM `asimddp`/`i8mm`), which is why INT8 can be slower
than FP32 on a laptop and faster on a Pi. Nothing here imports TensorFlow: versions come from package metadata.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from trashcam.edge.bundle import now_iso
from trashcam.edge.runtime import usable_cores

# Flags that change which kernels the runtimes pick (x86 and ARM spellings as /proc/cpuinfo writes them).
INTERESTING_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                     "avx512_bf16", "amx_int8", "amx_bf16", "neon", "asimd", "asimdhp", "asimddp", "fphp",
                     "i8mm", "bf16", "sve", "sve2")
PACKAGES = ("numpy", "pillow", "ai-edge-litert", "tflite-runtime", "onnxruntime", "tensorflow", "tensorflow-cpu",
            "keras", "opencv-python-headless")
THREAD_ENV = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "TF_ENABLE_ONEDNN_OPTS",
              "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def parse_cpuinfo(text: str) -> dict:
    """Model name and the interesting feature flags from /proc/cpuinfo text (x86 or ARM layout)."""
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key in ("model name", "hardware", "processor") and not model and value and not value.isdigit():
            model = value
        elif key in ("flags", "features"):
            flags.update(value.split())
    return {"model": model, "flags": [f for f in INTERESTING_FLAGS if f in flags]}


def cpu_info() -> dict:
    info = parse_cpuinfo(_read("/proc/cpuinfo"))
    board = _read("/proc/device-tree/model").strip("\x00\n ")  # "Raspberry Pi 5 Model B Rev 1.0"
    if board:
        info["board"] = board
    info["model"] = info["model"] or board or platform.processor() or platform.machine()
    info["arch"] = platform.machine()
    info["cores"] = os.cpu_count()
    info["cores_usable"] = usable_cores()
    gov = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").strip()
    if gov:  # "powersave"/"ondemand" make short benchmarks noisy on a Pi
        info["governor"] = gov
    return info


def memory_total_mb() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
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
