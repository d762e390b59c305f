"""What a training run's float arithmetic depended on, recorded in metrics.json.

The same recipe and seed give a different model on another CPU or with other oneDNN/thread settings: the float
rounding differs, early stopping lands elsewhere, and test accuracy moved by 3 pp between two machines (issue 12).
So every bundle says which seed, split fold, thread counts, oneDNN setting, TensorFlow and CPU made it.
"""
from __future__ import annotations

import os

from .config import TrainConfig


def record(cfg: TrainConfig) -> dict:
    """Call after `setup_compute` (threads set, TensorFlow imported)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from trashcam.edge.machine import cpu_info

    cpu = cpu_info()
    return {
        "seed": cfg.seed,
        "split_seed": cfg.split_seed_used,
        "fold": cfg.fold or None,
        "threads": cfg.threads,  # 0: TensorFlow's default (all usable cores)
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        # as this process saw it; pipeline.setup_compute sets "1" where it was unset, before TF is imported
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__,
        "cpu_model": cpu.get("model"), "cpu_flags": cpu.get("flags"), "cores_usable": cpu.get("cores_usable"),
    }
