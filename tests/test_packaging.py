"""What `pip install` would do with our extras and constraints, resolved against the package index.

Each test is one `pip install --dry-run --report` (10-25 s, mostly waiting on the index). They need the index:
without it they skip, saying so.

- [train] on a machine that already has a (GPU) `tensorflow`, as Kaggle and Colab do, adds no second
  TensorFlow distribution (tensorflow-cpu would overwrite the GPU build's files);
- [train-cpu] on a bare machine brings exactly one TensorFlow: the CPU wheel;
- the Raspberry Pi constraints (docs/constraints/) resolve as a Pi resolves them: aarch64 manylinux wheels
  only, for Bookworm's Python 3.11 (numpy < 2, which picamera2 from apt needs, with and without OpenCV) and
  Trixie's Python 3.13.
"""
from __future__ import annotations

import configparser
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

TF_DISTS = {"tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-gpu", "tf-nightly",
            "tensorflow-macos", "tensorflow-aarch64"}
CONSTRAINTS = REPO / "docs" / "constraints"


def requirements(extras: str) -> list[str]:
    """install_requires + the extras' requirements, as setup.cfg declares them: resolving these is resolving
    `.[extras]` without building the project (which costs a build environment per run)."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in extras.split(","):
        lines += cfg["options.extras_require"][extra].splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@functools.lru_cache(maxsize=1)
def _index_problem() -> str | None:
    try:
        p = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "pip"], capture_output=True,
                           text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "the package index did not answer in 60 s"
    return None if p.returncode == 0 and "pip" in p.stdout else f"the package index is unreachable: {p.stderr[-300:]}"


@pytest.fixture
def index():
    problem = _index_problem()
    if problem:
        pytest.skip(problem)


def dry_run(tmp_path: Path, *args: str) -> dict[str, str]:
    """{normalised name: version} that `pip install --dry-run` would install."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", *args[:args.index("install") + 1], "--dry-run", "--quiet",
           "--report", str(report), *args[args.index("install") + 1:]]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stderr[-3000:]}"
    return {_norm(i["metadata"]["name"]): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}


def venv_with(tmp_path: Path, dists: dict[str, str]) -> Path:
    """A venv (no pip) whose site-packages holds stub distributions: name -> version, metadata only."""
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    site = next((env / "lib").glob("python3*/site-packages"))
    for name, version in dists.items():
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("pip\n")
        (info / "RECORD").write_text("")
    return env / "bin" / "python"


def test_train_extra_keeps_a_preinstalled_gpu_tensorflow(index, tmp_path):
    # What Kaggle's and Colab's GPU images ship: the `tensorflow` distribution (with CUDA) and Keras 3.
    py = venv_with(tmp_path, {"tensorflow": "2.19.0", "keras": "3.8.0"})
    plan = dry_run(tmp_path, "--python", str(py), "install", *requirements("train"))
    assert not TF_DISTS & set(plan), f"[train] would install {sorted(TF_DISTS & set(plan))} beside tensorflow"
    assert "keras" not in plan and "tf2onnx" in plan  # the rest of [train] still comes


def test_train_cpu_extra_brings_one_cpu_tensorflow_to_a_bare_machine(index, tmp_path):
    if not (sys.platform == "linux" and __import__("platform").machine() == "x86_64"):
        pytest.skip("tensorflow-cpu wheels are the x86_64 Linux case")
    py = venv_with(tmp_path, {})
    # --no-deps: the markers pick the distribution; tensorflow-cpu's own dependencies name no other TensorFlow
    # (that full resolution takes ~40 s; the test above resolves everything else of [train] in full).
    plan = dry_run(tmp_path, "--python", str(py), "install", "--no-deps", *requirements("train-cpu"))
    assert TF_DISTS & set(plan) == {"tensorflow-cpu"}, plan


def _pi_resolve(tmp_path: Path, python: str, glibc_minor: int, extras: str, constraints: Path) -> dict[str, str]:
    # A Pi's pip takes any manylinux_2_x aarch64 wheel with x up to its glibc (Bookworm 2.36, Trixie 2.41).
    platforms = [a for x in range(glibc_minor, 16, -1) for a in ("--platform", f"manylinux_2_{x}_aarch64")]
    return dry_run(tmp_path, "install", "--only-binary=:all:", *platforms, "--python-version", python,
                   "--target", str(tmp_path / "target"), *requirements(extras), "-c", str(constraints))


def _major(version: str) -> int:
    return int(version.split(".")[0])


@pytest.mark.parametrize("extras", ["edge", "edge,video"])
def test_bookworm_constraints_keep_numpy_1_for_apt_picamera2(index, tmp_path, extras):
    plan = _pi_resolve(tmp_path, "3.11", 36, extras, CONSTRAINTS / "bookworm.txt")
    assert _major(plan["numpy"]) < 2, plan
    assert plan["ai-edge-litert"].startswith("2.")
    if "video" in extras:  # an OpenCV that accepts numpy 1.x (>= 4.12 needs numpy 2)
        assert tuple(int(v) for v in plan["opencv-python-headless"].split(".")[:2]) < (4, 12), plan
    else:
        assert "opencv-python-headless" not in plan


def test_trixie_constraints_resolve_for_python_3_13(index, tmp_path):
    plan = _pi_resolve(tmp_path, "3.13", 41, "edge,video", CONSTRAINTS / "trixie.txt")
    assert plan["numpy"].startswith("2.2."), plan  # the series Trixie's apt picamera2 is built against
    assert plan["ai-edge-litert"].startswith("2.") and "opencv-python-headless" in plan
