#!/usr/bin/env bash
# Set up a virtual environment (once) and run the test suite. `.ci/run` calls exactly this.
#   ./test.sh            fast suite (default; ~5-8 min on 2 cores)
#   ./test.sh -m slow    full-data runs on ../shared/data/trashnet5 (tens of minutes)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${TRASHCAM_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
# Editable, so the tests exercise this checkout; [train-cpu] pulls TensorFlow (CPU wheel; TRASHCAM_TRAIN_EXTRA=train
# on a machine with a GPU tensorflow), [dev] pytest, OpenCV, mediapipe and the notebook runner.
"$VENV/bin/python" -m pip install -q -e ".[${TRASHCAM_TRAIN_EXTRA:-train-cpu},edge,dev]"
export TF_CPP_MIN_LOG_LEVEL=2 TF_ENABLE_ONEDNN_OPTS=1 PYTHONUNBUFFERED=1
exec "$VENV/bin/python" -m pytest -q "$@"
