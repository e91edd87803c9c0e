#!/usr/bin/env bash
# The test command from the README: the whole suite, offline, on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# tiny models gain nothing from intra-op threads; one thread per process avoids oversubscription
# when tests start several processes (torchrun, rlpost serve workers)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export RLPOST_CACHE="${RLPOST_CACHE:-$PWD/.cache}"
exec .venv/bin/python -m pytest tests -q -p no:cacheprovider --timeout 900 "$@"
