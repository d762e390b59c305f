"""The edge runtime must run on a Pi without TensorFlow: importing every trashcam.edge module, classifying and
running the live loop (with the HTTP view) leaves `tensorflow` and `keras` out of sys.modules."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from conftest import run_cli

PROBE = textwrap.dedent("""
    import importlib, json, pkgutil, sys, threading, urllib.request
    import trashcam.edge as edge
    names = [m.name for m in pkgutil.iter_modules(edge.__path__, "trashcam.edge.")]
    for n in names:
        importlib.import_module(n)
    from trashcam.edge.interpreters import load_tflite_interpreter_class
    from trashcam.edge.runtime import Classifier
    from trashcam.edge.config import RunConfig
    from trashcam.edge.live import LiveRunner
    from trashcam.edge.export import export_edge_bundle
    bundle, folder, out = sys.argv[1], sys.argv[2], sys.argv[3]
    pred = Classifier(bundle, "auto", threads=1).classify(sorted(__import__("glob").glob(folder + "/*/*.jpg"))[0])
    runner = LiveRunner(RunConfig(bundle=bundle, source=folder, max_frames=30, quiet=True, serve="0"))
    status = json.loads(urllib.request.urlopen(runner.server.url + "status", timeout=5).read())
    summary = runner.run()
    export_edge_bundle(bundle, out, "tflite-fp32")
    print(json.dumps({"modules": names, "label": pred.label, "runtime": load_tflite_interpreter_class()[1],
                      "frames": summary["frames"], "status": status["state"],
                      "tf": sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras",
                                                                                  "tf_keras"))}))
""")


def test_edge_runs_without_importing_tensorflow(tiny_tflite_bundle, synthetic_dataset, tmp_path):
    p = run_cli("-c", PROBE, str(tiny_tflite_bundle), str(synthetic_dataset), str(tmp_path / "slim"), check=True)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["tf"] == [], r["tf"]
    assert r["runtime"] in ("ai_edge_litert", "tflite_runtime")
    assert r["frames"] == 30 and r["status"] in ("starting", "running")
    assert r["label"] in ("red", "green", "blue")
    assert {"trashcam.edge.cli", "trashcam.edge.live", "trashcam.edge.sources", "trashcam.edge.server",
            "trashcam.edge.smoothing", "trashcam.edge.sinks", "trashcam.edge.export"} <= set(r["modules"])


def test_cli_help_is_instant_and_teaches():
    for mod in ("trashcam.edge.cli", "trashcam.edge.export_cli"):
        p = run_cli("-X", "importtime", "-m", mod, "--help", check=True)
        assert "examples:" in p.stdout
        heavy = [ln for ln in p.stderr.splitlines() if any(x in ln for x in ("tensorflow", "ai_edge_litert", "cv2"))]
        assert heavy == [], heavy[:3]


def test_tflite_runtime_fallback_order():
    """Without LiteRT and tflite_runtime, the interpreter comes from TensorFlow (last resort), named as such."""
    code = ("import sys; sys.modules['ai_edge_litert'] = None; sys.modules['tflite_runtime'] = None\n"
            "from trashcam.edge.interpreters import load_tflite_interpreter_class\n"
            "cls, name = load_tflite_interpreter_class(); print(name, cls.__name__)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split()[-2:] == ["tensorflow.lite", "Interpreter"]
