#!/usr/bin/env bash
# The test command from the README: the whole suite, offline, on CPU.
#   bash scripts/test.sh                      # every test
#   bash scripts/test.sh tests/test_x.py -x   # only the named test files / folders (any pytest options may follow)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# tiny models gain nothing from intra-op threads; one thread per process avoids oversubscription
# when tests start several processes (torchrun, rlpost serve workers)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export RLPOST_CACHE="${RLPOST_CACHE:-$PWD/.cache}"
where=tests
for arg in "$@"; do
  case "$arg" in tests/*|tests) where="" ;; esac   # test paths given: run those only
done
exec .venv/bin/python -m pytest $where -q -p no:cacheprovider --timeout 900 "$@"
