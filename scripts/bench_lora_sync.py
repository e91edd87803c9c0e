"""Bytes and seconds per weight sync with LoRA: adapter-only (model.lora.sync=adapter) vs merged full weights.

    python scripts/bench_lora_sync.py                         # CPU: the ~20M model, r=16, colocated vllm + 1 worker
    python scripts/bench_lora_sync.py --ranks 8 64 --repeats 5 --transports file dist

The policy is the ~20M-parameter Qwen2 of scripts/bench_engines.py (random weights, hidden 384, 9 layers) wrapped
in a peft LoRA on all linear layers. One sync is what the trainer does per version (rlpost/rollout/pipeline.py):

- merged: ``merged_named_parameters`` (W + scale * B @ A for every adapted layer, every other weight as is), then
  ``engine.load_weights`` (the colocated engine reloads them in place; a worker gets them by the transport);
- adapter: ``adapter_weights`` (the A and B tensors alone), then ``engine.load_adapter`` (vLLM's LoRA loads them).

Engines: the colocated ``vllm`` engine and one ``rlpost serve`` worker per transport (file: shared-memory file;
dist: gloo broadcast). The adapter is perturbed before every sync, so each sync moves new values. Seconds are the
median of ``--repeats`` syncs after one warm-up sync, wall time on the learner's side (until the engine answered);
bytes are the tensor bytes sent (float32 here). Printed: a table and the merged / adapter ratios.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def policy(path: str, rank: int):
    from peft import LoraConfig, get_peft_model

    from rlpost.config import ModelConfig
    from rlpost.models.loading import load_model
    torch.manual_seed(0)
    return get_peft_model(load_model(path, ModelConfig(), "cpu"),
                          LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False))


def perturb(model) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 1e-3)


def one_sync(engine, model, mode: str, version: int) -> tuple[float, int]:
    """(seconds, bytes) of one sync of ``model`` to ``engine`` in ``mode`` (merged | adapter)."""
    from rlpost.models.lora import merged_named_parameters
    from rlpost.models.lora_sync import adapter_weights
    start = time.perf_counter()
    if mode == "merged":
        tensors = list(merged_named_parameters(model))
        engine.load_weights(tensors)
        nbytes = sum(t.numel() * t.element_size() for _, t in tensors)
    else:
        adapter = adapter_weights(model, f"policy-v{version}")
        engine.load_adapter(adapter)
        nbytes = adapter.nbytes
    return time.perf_counter() - start, nbytes


def measure(engine, model, mode: str, repeats: int) -> dict:
    one_sync(engine, model, mode, 0)   # warm-up: first-call allocations, the broadcast group, vLLM's LoRA slots
    seconds, nbytes = [], 0
    for v in range(1, repeats + 1):
        perturb(model)
        s, nbytes = one_sync(engine, model, mode, v)
        seconds.append(s)
    return {"seconds": statistics.median(seconds), "bytes": nbytes}


def engines(path: str, tok, rank: int, transports: list[str], log_dir: str):
    """(label, engine) for the colocated engine and one worker per transport; the caller closes them."""
    from rlpost.engines.vllm_engine import VLLMEngine
    from rlpost.engines.vllm_server import VLLMServerEngine, start_workers
    from rlpost.models.lora_sync import vllm_max_lora_rank
    max_rank = vllm_max_lora_rank(rank)
    yield "vllm (colocated)", VLLMEngine(path, tok, dtype="float32", gpu_memory_utilization=0.1, max_model_len=256,
                                         max_lora_rank=max_rank, max_loras=2)
    for transport in transports:
        handles = start_workers(path, 1, log_dir=log_dir, engine_args=[
            "--dtype", "float32", "--gpu-memory-utilization", "0.1", "--max-model-len", "256",
            "--max-lora-rank", str(max_rank), "--max-loras", "2"])
        yield f"vllm_server ({transport})", VLLMServerEngine([h.url for h in handles], tok, weight_sync=transport,
                                                             workers=handles, max_lora_rank=max_rank, max_loras=2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", nargs="+", type=int, default=[16])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--transports", nargs="*", default=["file"], choices=["file", "dist"])
    args = p.parse_args()
    from bench_engines import build_20m

    from rlpost.config import ModelConfig
    from rlpost.models.loading import load_tokenizer
    rows = []
    with tempfile.TemporaryDirectory(prefix="rlpost-bench-lora-") as tmp:
        path = str(build_20m(Path(tmp) / "m20"))
        tok = load_tokenizer(path, ModelConfig())
        for rank in args.ranks:
            model = policy(path, rank)
            total = sum(p.numel() for p in model.parameters() if not p.requires_grad)
            for label, engine in engines(path, tok, rank, args.transports, tmp):
                try:
                    merged, adapter = (measure(engine, model, mode, args.repeats) for mode in ("merged", "adapter"))
                finally:
                    engine.close()
                rows.append((rank, label, merged, adapter))
                print(f"r={rank} {label}: merged {merged['bytes'] / 1e6:.2f} MB {merged['seconds'] * 1e3:.1f} ms, "
                      f"adapter {adapter['bytes'] / 1e6:.3f} MB {adapter['seconds'] * 1e3:.1f} ms", flush=True)
    print(f"\n~20M model ({total / 1e6:.1f}M base parameters), float32, median of {args.repeats} syncs\n")
    print("| r | engine | merged MB | adapter MB | bytes ratio | merged ms | adapter ms | seconds ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for rank, label, m, a in rows:
        print(f"| {rank} | {label} | {m['bytes'] / 1e6:.2f} | {a['bytes'] / 1e6:.3f} | {m['bytes'] / a['bytes']:.1f}x | "
              f"{m['seconds'] * 1e3:.1f} | {a['seconds'] * 1e3:.1f} | {m['seconds'] / a['seconds']:.1f}x |")
    return 0


if __name__ == "__main__":   # vLLM may spawn processes: keep module-level code import-safe
    sys.exit(main())
