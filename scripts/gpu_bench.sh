#!/usr/bin/env bash
# rlpost vs TRL GRPOTrainer (vLLM colocated on both sides) on one GPU; sized to finish within 10 minutes on an
# H200 (model build ~1 min, each framework <= 270 s including vLLM start-up). See scripts/gpu_bench.py.
#   scripts/gpu_bench.sh                  # GPU run; results in runs/gpu_bench/results.json
#   scripts/gpu_bench.sh --dry-run        # CPU, tiny model, transformers generation (what CI runs)
#   scripts/gpu_bench.sh --steps 10 --max-completion 512 --strict
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-WARNING}"
exec timeout --signal=TERM 590 "$PY" scripts/gpu_bench.py "$@"
