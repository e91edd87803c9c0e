"""Generation throughput of the rollout engines: rlpost's hf engine vs the colocated vLLM engine.

    python scripts/bench_engines.py                      # CPU: tiny arithmetic model + a ~20M-parameter model
    python scripts/bench_engines.py --device cuda        # on a GPU machine (scripts/gpu_check.sh)
    python scripts/bench_engines.py --models 20m --prompts 32 --n 8 --max-tokens 128

Both engines get the same prompts and SamplingParams (temperature 1, seeded); throughput is generated tokens
(EOS included) / wall time of the best of ``--repeats`` calls after one warm-up call, each (model, engine) in a
fresh process; CPU seconds of that call (all threads of the process) are shown too, since on a shared machine
they are less disturbed by other processes than wall time. The ~20M model is a
Qwen2 built from its config with random weights (hidden 384, 9 layers, head_dim 64, char vocabulary), so its
completions run long; the tiny model is the warm-started arithmetic model, whose answers end after ~3 tokens.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_20m(out: Path) -> Path:
    """A ~20M-parameter Qwen2 (random weights, head_dim 64) + the char tokenizer, saved for both engines."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlpost.models.tokenizer import build_char_tokenizer
    tok = build_char_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=384, num_hidden_layers=9, num_attention_heads=6,
                      num_key_value_heads=2, intermediate_size=1536, max_position_embeddings=1024,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                      tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def prompts(tok, count: int) -> list[list[int]]:
    from rlpost.tasks import TASKS
    rows = TASKS.get("arithmetic")("test", count, seed=0)
    texts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                     add_generation_prompt=True) for r in rows]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def timed(engine, reqs, params, repeats: int) -> dict:
    """Best of ``repeats`` calls (wall and CPU seconds of this process), after a warm-up call. The minimum is the
    figure least disturbed by other processes on a shared machine."""
    engine.generate(reqs, params)                                     # warm-up (allocations, kernel selection)
    walls, cpus, tokens = [], [], []
    for r in range(repeats):
        params.seed = 1000 + r
        wall, cpu = time.perf_counter(), time.process_time()
        samples = engine.generate(reqs, params)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        tokens.append(sum(len(s.completion_ids) for s in samples))
    best = min(range(repeats), key=walls.__getitem__)
    return {"seconds": walls[best], "cpu_seconds": cpus[best], "tokens": tokens[best],
            "median_seconds": statistics.median(walls)}


def bench_one(name: str, path: str, engine_name: str, args) -> dict:
    """One (model, engine) measurement; run in its own process (see main)."""
    from rlpost.config import ModelConfig
    from rlpost.engines.base import GenRequest, SamplingParams
    from rlpost.engines.hf import HFEngine
    from rlpost.engines.vllm_engine import VLLMEngine
    from rlpost.models.loading import load_model, load_tokenizer

    mcfg = ModelConfig(name_or_path=path, dtype=args.dtype)
    tok = load_tokenizer(path, mcfg)
    reqs = [GenRequest(p) for p in prompts(tok, args.prompts)]
    params = SamplingParams(n=args.n, temperature=1.0, max_tokens=args.max_tokens, seed=0)
    model = load_model(path, mcfg, args.device).eval()
    row = dict(model=name, params=sum(p.numel() for p in model.parameters()), engine=engine_name,
               seqs=len(reqs) * args.n)
    if engine_name == "hf":
        row.update(timed(HFEngine(model, tok), reqs, params, args.repeats))
        return row
    del model
    start = time.perf_counter()
    engine = VLLMEngine(path, tok, dtype=args.dtype, gpu_memory_utilization=args.gpu_memory_utilization,
                        max_model_len=args.max_model_len, seed=0)
    row["startup"] = time.perf_counter() - start
    try:
        row.update(timed(engine, reqs, params, args.repeats))
    finally:
        engine.close()
    return row


def print_table(rows: list[dict]) -> None:
    from rlpost.provenance import describe
    print(f"\nbench_engines, {describe()}")
    print("\n| model | params | engine | sequences | tokens | seconds | tokens/s | vs hf | CPU s | tokens/CPU-s | vs hf |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    hf = {}
    for r in rows:
        rate, cpu_rate = r["tokens"] / r["seconds"], r["tokens"] / max(r["cpu_seconds"], 1e-9)
        if r["engine"] == "hf":
            hf[r["model"]] = (rate, cpu_rate)
        base = hf.get(r["model"], (float("nan"), float("nan")))
        print(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['engine']} | {r['seqs']} | {r['tokens']} | "
              f"{r['seconds']:.2f} | {rate:,.0f} | {rate / base[0]:.2f}x | {r['cpu_seconds']:.2f} | "
              f"{cpu_rate:,.0f} | {cpu_rate / base[1]:.2f}x |")
    for r in rows:
        if "startup" in r:
            print(f"(vLLM start-up for {r['model']}: {r['startup']:.1f} s, not included)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny", "20m"], choices=["tiny", "20m"])
    p.add_argument("--device", default="cpu", help="device of the hf engine: cpu | cuda")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.2)
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--one", nargs=3, metavar=("NAME", "PATH", "ENGINE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:   # child process: one measurement, printed as JSON on the last line
        print(json.dumps(bench_one(*args.one, args)))
        return 0
    from rlpost.models.tiny import ensure_tiny
    rows = []
    # Each measurement runs in a fresh process: an in-process vLLM engine re-binds the process's OpenMP threads
    # and patches torch.set_num_threads, which would slow every later hf measurement in the same process.
    child_args = ["--device", args.device, "--dtype", args.dtype, "--prompts", str(args.prompts), "--n", str(args.n),
                  "--max-tokens", str(args.max_tokens), "--repeats", str(args.repeats),
                  "--gpu-memory-utilization", str(args.gpu_memory_utilization),
                  "--max-model-len", str(args.max_model_len)] + (["--threads", str(args.threads)] if args.threads else [])
    with tempfile.TemporaryDirectory(prefix="rlpost-bench-") as tmp:
        for name in args.models:
            path = str(ensure_tiny("tiny:qwen2:arithmetic")) if name == "tiny" else str(build_20m(Path(tmp) / "m20"))
            for engine_name in ("hf", "vllm"):
                out = subprocess.run([sys.executable, __file__, *child_args, "--one", name, path, engine_name],
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
                    return out.returncode
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print_table(rows)
    return 0


if __name__ == "__main__":   # vLLM may spawn processes: keep module-level code import-safe
    sys.exit(main())
