"""This machine as inference sees it: the cores this process may use, the thread count it defaults to, the CPU.

TensorFlow-free and dependency-free, so the edge runtime, training (which records the CPU its float rounding came
from) and the benchmarks (which record where a latency was measured) read the same facts.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

# Flags that change which kernels the runtimes pick (x86 and ARM spellings as /proc/cpuinfo writes them).
INTERESTING_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                     "avx512_bf16", "amx_int8", "amx_bf16", "neon", "asimd", "asimdhp", "asimddp", "fphp",
                     "i8mm", "bf16", "sve", "sve2")


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: a container or `taskset` may allow fewer)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """Interpreter threads when none are asked for: the usable cores, at most 4. The affinity mask, not
    os.cpu_count(): a container given 2 cores of a 64-core host would otherwise run 4 threads on 2 cores."""
    return max(1, min(4, usable_cores()))


def read_text(path: str) -> str:
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
    info = parse_cpuinfo(read_text("/proc/cpuinfo"))
    board = read_text("/proc/device-tree/model").strip("\x00\n ")  # "Raspberry Pi 5 Model B Rev 1.0"
    if board:
        info["board"] = board
    info["model"] = info["model"] or board or platform.processor() or platform.machine()
    info["arch"] = platform.machine()
    info["cores"] = os.cpu_count()
    info["cores_usable"] = usable_cores()
    gov = read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").strip()
    if gov:  # "powersave"/"ondemand" make short benchmarks noisy on a Pi
        info["governor"] = gov
    return info
