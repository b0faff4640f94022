#!/usr/bin/env bash
# The whole pipeline on the offline defaults: train (QAT) -> export -> quantize -> evaluate.
# Extra arguments go to every step (e.g. --model, --data-dir, --run-name, --batch-size, --max-length, --seed);
# TRAIN_ARGS adds training-only ones, e.g. TRAIN_ARGS="--epochs 1 --max-train-samples 2000".
set -euo pipefail
source "$(dirname "$0")/scripts/setup_env.sh"
read -r -a train_args <<< "${TRAIN_ARGS:-}"
set -x
python train_eager_qat.py "${train_args[@]}" "$@"
python export_to_onnx.py "$@"
python quantize_onnx_dynamic.py "$@"
python eval_eager_qat.py "$@"
python eval_onnx_qat.py "$@"
python eval_onnx_int8_dynamic.py "$@"
python eval_eager_qat.py --per-text "$@"        # per-text: the simulation of what the service computes
python eval_onnx_int8_dynamic.py --per-text "$@"   # the metrics of the service's default (one text per batch)
