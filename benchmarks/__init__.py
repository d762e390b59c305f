"""trashcam.benchmarks: `edge-bench` (size, accuracy, latency and memory of every variant of a bundle).

Library entry: `run_benchmark(bundle_dir, BenchConfig(...)) -> dict` (the JSON that `edge-bench --json` writes).
"""
from .config import BenchConfig
from .pipeline import run_benchmark

__all__ = ["BenchConfig", "run_benchmark"]
