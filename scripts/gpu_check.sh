#!/usr/bin/env bash
# GPU checks for the vLLM engines (issue 3). Prepared and dry-run on CPU; run it on a machine with an NVIDIA GPU
# and the gpu extra installed (pip install -e .[gpu]):
#
#   bash scripts/gpu_check.sh             # about 5-10 minutes on one H100/H200
#   bash scripts/gpu_check.sh --dry-run   # print every step, check that configs and CLIs parse (works on CPU)
#
# 1. throughput table, hf vs vLLM, tiny + ~20M model (scripts/bench_engines.py) on the GPU
# 2. a 20-step GRPO run with rollout.engine=vllm (colocated, sleep mode on), accuracy at steps 0/10/20
# 3. the same run with rollout.engine=hf, for the accuracy comparison
# 4. one `rlpost serve` worker on the GPU + 5 steps with rollout.engine=vllm_server (weight_sync=file), then the
#    same 5 steps with rollout.async_level=1 (one-step-off: staleness, learner wait and step time in the summary)
# 5. the shared-prefix learner pass (optim.shared_prefix) in bf16 on CUDA: agreement and speed-up
# 5b. LoRA sync, adapter-only vs merged: bytes and seconds per sync on the ~20M model (scripts/bench_lora_sync.py)
# 6. the vLLM test modules (CPU-sized, they run on the GPU build too; the TP=2 module skips with one GPU)
# 7. FSDP2 learner (distributed.backend=fsdp2): 2 ranks on 2 GPUs against one process (step-1 loss and grad norm);
#    with one GPU only one rank runs (the script says so)
# 8. LoRA weight sync to the colocated vLLM engine: model.lora.sync=adapter against merged (weight_sync seconds)
# 9. rollout tensor parallelism: `rlpost serve --tensor-parallel-size 1` vs `2` (needs 2 GPUs; else skipped, said)
# Results go to $OUT (default runs/gpu_check); summary.txt collects the numbers.
#
# Not checked here: weight_sync=dist over NCCL needs the trainer and each worker on different GPUs (NCCL refuses
# two ranks on one device); with one GPU use weight_sync=file. On 2+ GPUs run step 4 with
# CUDA_VISIBLE_DEVICES=1 for the worker and rollout.weight_sync=dist.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}   # the setup.sh environment when present
OUT=${OUT:-runs/gpu_check}
PORT=${PORT:-8011}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
export RLPOST_CACHE=${RLPOST_CACHE:-$HOME/.cache/rlpost}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

run() {  # run a step (or, with --dry-run, only print it)
  echo "+ $*" | tee -a "$SUMMARY"
  if [[ $DRY == 0 ]]; then "$@"; fi
}

check_config() {  # a train command's config + overrides must load, even in a dry run
  $PY -c "import sys; from rlpost.resolve import load_checked; load_checked(sys.argv[1], sys.argv[2:])" "$@"
}

accuracy() {  # eval/accuracy rows of a run
  $PY -c "import json,sys; rows=[json.loads(l) for l in open(sys.argv[1])]; \
print(sys.argv[1], [(r['step'], round(r['eval/accuracy'], 3)) for r in rows if 'eval/accuracy' in r])" \
    "$1/metrics.jsonl" | tee -a "$SUMMARY"
}

COMMON=(trainer.max_steps=20 trainer.eval_steps=10 trainer.device=cuda trainer.report_to=[jsonl]
        trainer.progress_bar=false trainer.save_steps=0 rollout.gpu_memory_utilization=0.3)

echo "== 0. environment"
if [[ $DRY == 1 ]]; then
  $PY -c "import torch, vllm; print('torch', torch.__version__, 'vllm', vllm.__version__, 'cuda', torch.cuda.is_available())"
  $PY scripts/bench_engines.py --help > /dev/null && echo "bench_engines.py: ok"
  $PY -m rlpost.cli serve --help > /dev/null && echo "rlpost serve: ok"
  check_config configs/tiny/arith_grpo.yaml "${COMMON[@]}" rollout.engine=vllm rollout.enable_sleep_mode=true \
    && echo "train configs: ok"
else
  run $PY -c "import torch, vllm; print(torch.__version__, vllm.__version__, torch.cuda.get_device_name(0))"
fi

echo "== 1. throughput"
run bash -c "$PY scripts/bench_engines.py --device cuda --gpu-memory-utilization 0.3 --prompts 64 --n 8 \
  --max-tokens 128 2>&1 | tee $OUT/bench.txt"
if [[ $DRY == 0 ]]; then grep -E "^\||start-up" "$OUT/bench.txt" | tail -8 | tee -a "$SUMMARY"; fi

echo "== 2-3. 20-step GRPO: vllm (colocated, sleep mode) and hf"
run $PY -m rlpost.cli train configs/tiny/arith_grpo.yaml "${COMMON[@]}" rollout.engine=vllm \
  rollout.enable_sleep_mode=true trainer.output_dir="$OUT/grpo_vllm"
run $PY -m rlpost.cli train configs/tiny/arith_grpo.yaml "${COMMON[@]}" rollout.engine=hf \
  trainer.output_dir="$OUT/grpo_hf"
if [[ $DRY == 0 ]]; then accuracy "$OUT/grpo_vllm"; accuracy "$OUT/grpo_hf"; fi

echo "== 4. rlpost serve on the GPU + vllm_server"
TOKEN=$($PY -c "import secrets; print(secrets.token_hex(8))")
if [[ $DRY == 1 ]]; then
  echo "+ RLPOST_SERVE_TOKEN=*** rlpost serve tiny:qwen2:arithmetic --port $PORT --dtype float32 --log-file $OUT/worker.log &"
  check_config configs/tiny/arith_grpo.yaml "${COMMON[@]}" rollout.engine=vllm_server \
    "rollout.server_urls=[http://127.0.0.1:$PORT]" && echo "vllm_server config: ok"
  $PY -m rlpost.cli validate configs/tiny/arith_grpo.yaml "${COMMON[@]}" rollout.engine=vllm_server \
    "rollout.server_urls=[http://127.0.0.1:$PORT]" rollout.async_level=1 > /dev/null && echo "async config: ok"
else
  RLPOST_SERVE_TOKEN=$TOKEN $PY -m rlpost.cli serve tiny:qwen2:arithmetic --port "$PORT" --dtype float32 \
    --gpu-memory-utilization 0.3 --log-file "$OUT/worker.log" &
  WORKER=$!
  trap 'kill $WORKER 2>/dev/null || true' EXIT
  RLPOST_SERVE_TOKEN=$TOKEN run $PY -m rlpost.cli train configs/tiny/arith_grpo.yaml "${COMMON[@]}" \
    trainer.max_steps=5 rollout.engine=vllm_server "rollout.server_urls=[http://127.0.0.1:$PORT]" \
    rollout.timeout_s=300 trainer.output_dir="$OUT/grpo_server"
  RLPOST_SERVE_TOKEN=$TOKEN run $PY -m rlpost.cli train configs/tiny/arith_grpo.yaml "${COMMON[@]}" \
    trainer.max_steps=5 rollout.engine=vllm_server "rollout.server_urls=[http://127.0.0.1:$PORT]" \
    rollout.timeout_s=300 rollout.async_level=1 trainer.output_dir="$OUT/grpo_server_async"
  curl -s -X POST -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/shutdown" || true
  wait $WORKER || true
  accuracy "$OUT/grpo_server"
  accuracy "$OUT/grpo_server_async"
  $PY -c "import json,sys; rows=[json.loads(l) for l in open(sys.argv[1])][2:]; \
print('async_level=1: staleness', [r['async/staleness_max'] for r in rows], 'wait s', \
[round(r['timing/generate_wait'], 3) for r in rows], 'step s', [round(r['step_time'], 3) for r in rows])" \
    "$OUT/grpo_server_async/metrics.jsonl" | tee -a "$SUMMARY"
fi

echo "== 5. shared-prefix learner pass on CUDA in bf16: agreement with the plain pass and speed-up"
if [[ $DRY == 1 ]]; then
  $PY scripts/bench_shared_prefix.py --help > /dev/null && echo "bench_shared_prefix.py: ok"
else
  run bash -c "$PY scripts/bench_shared_prefix.py --model 20m --device cuda --dtype bfloat16 --groups 16 --n 8 \
    --prompt-len 256 --completion-len 128 2>&1 | tail -3 | tee -a $SUMMARY"
fi

echo "== 5b. LoRA adapter-only sync vs merged sync: bytes and seconds per sync"
if [[ $DRY == 1 ]]; then
  $PY scripts/bench_lora_sync.py --help > /dev/null && echo "bench_lora_sync.py: ok"
else
  run bash -c "$PY scripts/bench_lora_sync.py --ranks 16 64 --transports file 2>&1 | grep -E '^\\||^~20M' \
    | tee -a $SUMMARY"
fi

echo "== 6. vLLM tests"
run $PY -m pytest tests/engines tests/algos/test_mismatch.py -q -x -m "vllm or not vllm"

NGPU=0
if [[ $DRY == 0 ]]; then NGPU=$(nvidia-smi -L 2>/dev/null | wc -l); fi
step1() {  # step-1 loss and grad norm of a run
  $PY -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1]) if '\"loss\"' in l][0]; \
print(sys.argv[1], 'step', r['step'], 'loss', r['loss'], 'grad_norm', r['grad_norm'])" "$1/metrics.jsonl" | tee -a "$SUMMARY"
}
SHORT=(trainer.max_steps=3 trainer.eval_steps=0 trainer.device=cuda trainer.report_to=[jsonl] trainer.progress_bar=false
       trainer.save_steps=0 model.dtype=float32 rollout.engine=hf distributed.rollout=replicate)

echo "== 7. FSDP2 learner: 2 ranks (2 GPUs) against one process"
FSDP_RANKS=2
if [[ $DRY == 0 && $NGPU -lt 2 ]]; then
  FSDP_RANKS=1
  echo "only $NGPU GPU: FSDP2 runs with ONE rank (fully_shard over a world of 1; the 2-rank comparison needs 2 GPUs)" \
    | tee -a "$SUMMARY"
fi
if [[ $DRY == 1 ]]; then
  check_config configs/tiny/arith_grpo.yaml "${SHORT[@]}" distributed.backend=fsdp2 > /dev/null && echo "fsdp2 config: ok"
  check_config configs/tiny/arith_grpo.yaml "${SHORT[@]}" > /dev/null && echo "fsdp2 reference config: ok"
fi
run $PY -m torch.distributed.run --standalone --nproc_per_node "$FSDP_RANKS" -m rlpost.cli train \
  configs/tiny/arith_grpo.yaml "${SHORT[@]}" distributed.backend=fsdp2 trainer.output_dir="$OUT/fsdp2"
run $PY -m rlpost.cli train configs/tiny/arith_grpo.yaml "${SHORT[@]}" trainer.output_dir="$OUT/fsdp2_reference"
if [[ $DRY == 0 ]]; then step1 "$OUT/fsdp2"; step1 "$OUT/fsdp2_reference"; fi

echo "== 8. LoRA sync to vLLM: adapter-only (model.lora.sync=adapter) against merged weights"
LORA=(model.lora.r=16 "model.lora.target_modules=all-linear" rollout.engine=vllm trainer.max_steps=5)
if [[ $DRY == 1 ]]; then
  for SYNC in adapter merged; do
    check_config configs/tiny/arith_grpo.yaml "${COMMON[@]}" "${LORA[@]}" model.lora.sync=$SYNC > /dev/null \
      && echo "lora config (sync=$SYNC): ok"
  done
fi
for SYNC in adapter merged; do
  run $PY -m rlpost.cli train configs/tiny/arith_grpo.yaml "${COMMON[@]}" "${LORA[@]}" model.lora.sync=$SYNC \
    trainer.output_dir="$OUT/lora_$SYNC"
  if [[ $DRY == 0 ]]; then
    $PY -c "import json,sys; rows=[json.loads(l) for l in open(sys.argv[1])]; \
print(sys.argv[1], 'weight_sync s', [round(r.get('timing/weight_sync', float('nan')), 4) for r in rows if 'loss' in r])" \
      "$OUT/lora_$SYNC/metrics.jsonl" | tee -a "$SUMMARY"
    accuracy "$OUT/lora_$SYNC"
  fi
done

echo "== 9. rollout tensor parallelism: rlpost serve --tensor-parallel-size 1 vs 2"
if [[ $DRY == 1 ]]; then
  $PY -m rlpost.cli serve --help | grep -q -- "--tensor-parallel-size" && echo "serve --tensor-parallel-size: ok"
  check_config configs/tiny/arith_grpo.yaml "${COMMON[@]}" rollout.engine=vllm rollout.tensor_parallel_size=2 \
    > /dev/null && echo "rollout.tensor_parallel_size config: ok"
fi
if [[ $DRY == 0 && $NGPU -lt 2 ]]; then
  echo "only $NGPU GPU: rollout TP=2 skipped (needs 2 GPUs)" | tee -a "$SUMMARY"
else
  for TP in 1 2; do
    TP_PORT=$((PORT + 10 + TP))
    if [[ $DRY == 1 ]]; then
      echo "+ rlpost serve tiny:qwen2:arithmetic --port $TP_PORT --dtype float32 --tensor-parallel-size $TP &"
    else
      RLPOST_SERVE_TOKEN=$TOKEN $PY -m rlpost.cli serve tiny:qwen2:arithmetic --port "$TP_PORT" --dtype float32 \
        --gpu-memory-utilization 0.3 --tensor-parallel-size "$TP" --log-file "$OUT/worker_tp$TP.log" &
      TP_WORKER=$!
    fi
    RLPOST_SERVE_TOKEN=$TOKEN run $PY -m rlpost.cli train configs/tiny/arith_grpo.yaml "${COMMON[@]}" \
      trainer.max_steps=5 rollout.engine=vllm_server "rollout.server_urls=[http://127.0.0.1:$TP_PORT]" \
      rollout.timeout_s=600 trainer.output_dir="$OUT/grpo_serve_tp$TP"
    if [[ $DRY == 0 ]]; then
      curl -s -X POST -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$TP_PORT/shutdown" || true
      wait $TP_WORKER || true
      accuracy "$OUT/grpo_serve_tp$TP"
      $PY -c "import json,sys; rows=[json.loads(l) for l in open(sys.argv[1])]; \
print(sys.argv[1], 'generate s', [round(r['timing/generate'], 3) for r in rows if 'timing/generate' in r])" \
        "$OUT/grpo_serve_tp$TP/metrics.jsonl" | tee -a "$SUMMARY"
    fi
  done
  run $PY -m pytest tests/engines/test_vllm_tp.py -q -x
fi

echo "== done: $SUMMARY"
