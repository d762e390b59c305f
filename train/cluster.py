"""Who writes under `--strategy multiworker`: the chief only.

Every worker runs the same program (the collective ops of training, evaluation and saving need all of them), so
non-chief workers also "write" their checkpoints, reports and bundle, but into a scratch directory of their own
that is deleted when the run ends: TensorFlow's documented multi-worker pattern. Only the chief's output lands
at `--out`, so a cluster produces one bundle, and workers on one shared filesystem never race on it.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path


def task(tf_config: str | None = None) -> tuple[str, int, dict]:
    """(task type, index, cluster) from TF_CONFIG; a lone process is ("chief", 0, {})."""
    raw = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not raw.strip():
        return "chief", 0, {}
    try:
        cfg = json.loads(raw)
        t = cfg.get("task", {})
        return str(t.get("type", "worker")), int(t.get("index", 0)), dict(cfg.get("cluster", {}))
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"TF_CONFIG is not valid JSON with a task: {e}") from e


def is_chief(tf_config: str | None = None) -> bool:
    """The chief task if the cluster names one, else worker 0 (TensorFlow's rule)."""
    kind, index, cluster = task(tf_config)
    if "chief" in cluster or kind == "chief":
        return kind == "chief"
    return kind == "worker" and index == 0


def scratch_out(out: str | os.PathLike) -> Path:
    """Where a non-chief worker writes its copy of the bundle: a temp dir removed at exit (and by `release`)."""
    root = Path(tempfile.mkdtemp(prefix="trashcam-worker-"))
    atexit.register(shutil.rmtree, root, True)
    return root / Path(out).name


def release(out: Path) -> None:
    """Delete a non-chief worker's scratch output now (the temp dir `scratch_out` made)."""
    shutil.rmtree(out.parent, ignore_errors=True)
