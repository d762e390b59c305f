"""notebooks/kaggle.ipynb runs top to bottom: its parameters cell swapped for CPU values (the `quick` recipe on
data/sample, fewer epochs, no install: CI already installed this checkout), executed with nbclient.
About 1.5 min of CPU (5.4 min wall here with the 2 cores shared by ~10 busy processes)."""
from __future__ import annotations

import zipfile

import pytest

from conftest import REPO, SAMPLE

NOTEBOOK = REPO / "notebooks" / "kaggle.ipynb"


def ci_parameters(work) -> str:
    return "\n".join([
        f"REPO = {str(REPO)!r}",
        "INSTALL = False",
        f"DATA = {str(SAMPLE)!r}",
        f"WORK = {str(work)!r}",
        "RECIPE = 'quick'",
        f"TRAIN_ARGS = ['--quiet', '--cache-dir', {str(work / 'cache')!r}, '--image-size', '96', "
        "'--stage1-epochs', '4', '--stage2-epochs', '1', '--tta-passes', 'identity']",
        "CONVERT_ARGS = ['--int8', '--calib-size', '40', '--max-drop', '25']",  # 20 test images: 1 image = 5 pp
        "CALIBRATE_ARGS = ['--no-plots', '--variant', 'tflite-int8']",
        "BENCH_ARGS = ['--variants', 'tflite-int8', '--runs', '3', '--warmup', '1', '--threads', '1', "
        "'--e2e-images', '4']",
    ])


def test_kaggle_notebook_runs_top_to_bottom_on_cpu(tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is in the [dev] extra")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is in the [dev] extra")
    from trashcam.edge.bundle import Bundle

    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    params[0].source = ci_parameters(tmp_path)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "TensorFlow distributions:" in text and "GPUs:" in text
    with zipfile.ZipFile(tmp_path / "bundle.zip") as zf:
        names = set(zf.namelist())
    assert {"metadata.json", "labels.txt", "model.keras", "model_int8.tflite"} <= names
    b = Bundle.load(tmp_path / "bundle")  # every checksum, after convert, calibrate and bench wrote to it
    assert b.variants["tflite-int8"]["check"]["status"] == "PASS"
    assert "tflite_metadata" in b.variants["tflite-int8"] and b.calibration
