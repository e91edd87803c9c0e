#!/usr/bin/env bash
# The main job: a tiny end-to-end GRPO run on 2-digit addition whose held-out accuracy visibly rises.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export RLPOST_CACHE="${RLPOST_CACHE:-$PWD/.cache}"
exec .venv/bin/rlpost train configs/tiny/arith_grpo.yaml "$@"
