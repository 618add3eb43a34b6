#!/usr/bin/env bash
# Time and peak memory of inference on one full-size subject (8 runs, 132 x 175 x 48, 3599 volumes).
# Makes a full-size realistic synthetic subject, trains a throw-away model on runs 1-2 (1 epoch:
# only its grid matters here), then times inference on all 8 runs through the model's contract.
# Usage: bash tools/bench_inference.sh [WORKDIR]   (needs ~10 GB of disk in WORKDIR)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/bench_inference}
export MONAI_EMOTION_HOME=$work/home
mkdir -p "$work"
if [ ! -f "$work/data/.complete" ]; then
  python -m monai_emotion make-synthetic --out "$work/data" --subjects 1 --preset realistic --overwrite
  touch "$work/data/.complete"
fi
rm -rf "$work/bundle" && cp -r bundles/emotion_3dcnn "$work/bundle" && rm -rf "$work/bundle/models" "$work/bundle/runs"
python -m monai.bundle run training --config_file "$work/bundle/configs/train.json" \
  --dataset_dir "$work/data" --annotations_dir "$work/data/annotations" --data#runs "[1,2]" \
  --data#split '{"kind": "runs", "validate_runs": [2], "test_runs": []}' --epochs 1 > "$work/train.log" 2>&1
/usr/bin/time -v python -m monai.bundle run inferring --config_file "$work/bundle/configs/inference.json" \
  --dataset_dir "$work/data" --cache_dir "$work/inference_cache" 2> "$work/inference_time.txt" | tail -3
grep -E "Elapsed|Maximum resident" "$work/inference_time.txt"
