"""`--strategy multiworker`: two local workers (TF_CONFIG on 127.0.0.1, CPU) train together, and only the
chief writes: one valid bundle at --out, nothing left by the other worker. The `quick` recipe on data/sample with
the 3-block test backbone at 32 px, so it costs seconds of compute (most of the time is two TF start-ups)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import SAMPLE


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_two_workers_train_one_bundle_written_by_the_chief(tmp_path):
    from trashcam.edge.bundle import Bundle
    from trashcam.train.cluster import is_chief

    out = tmp_path / "bundle"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from conftest import build_tiny_backbone
        from types import SimpleNamespace
        import trashcam.train.backbones as registry
        registry.get = lambda name: SimpleNamespace(name="tiny", build=build_tiny_backbone)
        from trashcam.train.cli import main
        sys.exit(main(["--data", {str(SAMPLE)!r}, "--out", {str(out)!r}, "--recipe", "quick",
                       "--backbone", "tiny", "--weights", "none", "--image-size", "32", "--stage2-from", "block2a",
                       "--stage1-epochs", "3", "--stage2-epochs", "1", "--strategy", "multiworker",
                       "--batch-size", "16", "--threads", "1", "--cache-dir", sys.argv[1], "--quiet"]))
    """)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for i in range(2):
        scratch = tmp_path / f"tmp{i}"  # the worker's TMPDIR: where a non-chief writes, and must clean up
        scratch.mkdir()
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        assert is_chief(tf_config) == (i == 0)
        env = {**os.environ, "TF_CONFIG": tf_config, "TMPDIR": str(scratch), "CUDA_VISIBLE_DEVICES": "",
               "TF_CPP_MIN_LOG_LEVEL": "2"}
        procs.append(subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"cache{i}")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        results = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]

    b = Bundle.load(out)  # every checksum
    compute = b.metadata["training"]["compute"]
    # tf.distribute.MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy
    assert compute["strategy"] in ("MultiWorkerMirroredStrategy", "CollectiveAllReduceStrategy")
    assert compute["replicas"] == 2
    assert b.labels == ["cardboard", "glass", "metal", "paper", "plastic"]
    assert {"model.keras", "metrics.json", "report.md"} <= set(b.metadata["files"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "cache0", "cache1", "tmp0", "tmp1"]
    assert not any((tmp_path / "tmp1").iterdir()), "the non-chief worker left its scratch output behind"
