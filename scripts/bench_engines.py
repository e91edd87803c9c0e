"""Generation throughput of the rollout engines: rlpost's hf engine vs the colocated vLLM engine.

    python scripts/bench_engines.py                      # CPU: tiny arithmetic model + a ~20M-parameter model
    python scripts/bench_engines.py --device cuda        # on a GPU machine (scripts/gpu_check.sh)
    python scripts/bench_engines.py --models 20m --prompts 32 --n 8 --max-tokens 128

Both engines get the same prompts and SamplingParams (temperature 1, seeded); throughput is generated tokens
(EOS included) / wall time, the median of ``--repeats`` timed calls after one warm-up call. The ~20M model is a
Qwen2 built from its config with random weights (hidden 384, 9 layers, head_dim 64, char vocabulary), so its
completions run long; the tiny model is the warm-started arithmetic model, whose answers end after ~3 tokens.
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


def timed(engine, reqs, params, repeats: int) -> tuple[float, int]:
    engine.generate(reqs, params)                                     # warm-up (allocations, kernel selection)
    times, tokens = [], 0
    for r in range(repeats):
        params.seed = 1000 + r
        start = time.perf_counter()
        samples = engine.generate(reqs, params)
        times.append(time.perf_counter() - start)
        tokens = sum(len(s.completion_ids) for s in samples)
    return statistics.median(times), tokens


def bench_model(name: str, path: str, args) -> list[dict]:
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
    n_params = sum(p.numel() for p in model.parameters())
    rows = []
    t, tokens = timed(HFEngine(model, tok), reqs, params, args.repeats)
    rows.append(dict(model=name, params=n_params, engine="hf", seqs=len(reqs) * args.n, tokens=tokens, seconds=t))
    del model
    start = time.perf_counter()
    engine = VLLMEngine(path, tok, dtype=args.dtype, gpu_memory_utilization=args.gpu_memory_utilization,
                        max_model_len=args.max_model_len, seed=0)
    startup = time.perf_counter() - start
    try:
        t, tokens = timed(engine, reqs, params, args.repeats)
    finally:
        engine.close()
    rows.append(dict(model=name, params=n_params, engine="vllm", seqs=len(reqs) * args.n, tokens=tokens,
                     seconds=t, startup=startup))
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\n| model | params | engine | sequences | tokens | seconds | tokens/s | vs hf |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    hf_rate = {}
    for r in rows:
        rate = r["tokens"] / r["seconds"]
        if r["engine"] == "hf":
            hf_rate[r["model"]] = rate
        ratio = rate / hf_rate[r["model"]] if r["model"] in hf_rate else float("nan")
        print(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['engine']} | {r['seqs']} | {r['tokens']} | "
              f"{r['seconds']:.2f} | {rate:,.0f} | {ratio:.2f}x |")
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
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from rlpost.models.tiny import ensure_tiny
    rows = []
    with tempfile.TemporaryDirectory(prefix="rlpost-bench-") as tmp:
        for name in args.models:
            path = str(ensure_tiny("tiny:qwen2:arithmetic")) if name == "tiny" else str(build_20m(Path(tmp) / "m20"))
            rows += bench_model(name, path, args)
            print_table(rows)
    return 0


if __name__ == "__main__":   # vLLM may spawn processes: keep module-level code import-safe
    sys.exit(main())
