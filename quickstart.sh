#!/usr/bin/env bash
# From a fresh clone to a checked INT8 model classifying images, on the bundled sample, in a few minutes on a
# 2-core CPU: venv + install, train (quick recipe), convert + accuracy check, calibrate, benchmark, run.
# Everything lands in runs/quickstart/. Re-running retrains from scratch (the decoded images stay cached).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${TRASHCAM_VENV:-.venv}
OUT=${OUT:-runs/quickstart}
DATA=${DATA:-data/sample}
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "install into $VENV (TensorFlow for training; the edge runtime alone needs only pip install '.[edge]')"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
"$VENV/bin/python" -m pip install -q -e ".[train-cpu,edge]"  # [train] where a GPU tensorflow is installed
export PATH="$PWD/$VENV/bin:$PATH" TF_CPP_MIN_LOG_LEVEL=2 TF_ENABLE_ONEDNN_OPTS=1
mkdir -p "$OUT"

step "train: edge-train --recipe quick on $DATA"
edge-train --data "$DATA" --out "$OUT/bundle" --recipe quick --overwrite

step "convert: TFLite fp32/fp16/int8 + ONNX, each checked against the Keras model"
edge-convert "$OUT/bundle"

step "calibrate: temperature + 'uncertain' threshold on the validation split"
edge-calibrate "$OUT/bundle"

step "benchmark: size, accuracy and latency per variant"
edge-bench "$OUT/bundle" --threads 2 --runs 30 --warmup 5 --json "$OUT/bench.json"

step "run: classify the sample images with the TensorFlow-free edge runtime"
edge-run "$OUT/bundle" --source "$DATA" --max-frames 40 --log "$OUT/events.jsonl"

step "done"
echo "bundle:  $OUT/bundle (report.md, metrics.json, convert_report.json, plots)"
echo "bench:   $OUT/bench.json"
echo "next:    edge-train --data ../shared/data/trashnet5 --out runs/trashnet   # the real data, default recipe"
