#!/usr/bin/env python
"""How much `rlpost eval --batch-size` still changes the samples (docs/eval.md "Seeds and batch size").

    python scripts/eval_batch_size_check.py                      # fp32 and bf16, on the hf engine, CPU
    python scripts/eval_batch_size_check.py --dtype bf16 --device cuda

Every (problem, sample) has its own seed, so the random numbers do not depend on the batch; what can still change
a sample is its logits, when prompts of different lengths are left-padded differently in another batch. This
evaluates the shipped tiny model on 200 generated additions (gsm8k format, 90-98 prompt tokens; n=4, temperature 1,
max 16 tokens) at several batch sizes and prints, per dtype, the largest logit difference of a prompt in a batch of
64 against alone, and how many of the 800 samples differ from the first batch size's. Not part of CI.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def problems(path: Path, count: int = 200) -> None:
    rnd = random.Random(0)
    with path.open("w") as f:
        for _ in range(count):
            a, b = rnd.randint(0, 10 ** rnd.randint(1, 3)), rnd.randint(0, 10 ** rnd.randint(1, 3))
            f.write(json.dumps({"question": f"{a}+{b}=" + " " * rnd.randint(0, 4), "answer": f"#### {a + b}"}) + "\n")


def last_logits(model, tok, batch: list[list[int]]) -> torch.Tensor:
    width = max(map(len, batch))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in batch], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=model.device)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    return out.logits[:, -1].float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=sorted(DTYPES), action="append", help="default: fp32 and bf16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", default="16,8,2,1")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlpost.engines.hf import HFEngine
    from rlpost.eval.benchmarks import load_rows, render_prompt, resolve_benchmark
    from rlpost.eval.runner import encode_prompt, evaluate, format_prompt
    from rlpost.models.tiny import ensure_tiny

    path = ensure_tiny("tiny:qwen2:arithmetic")
    tok = AutoTokenizer.from_pretrained(path)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "sums.jsonl"
        problems(data)
        spec = resolve_benchmark(f"gsm8k={data}")
        rows = load_rows(spec)
        prompts = [encode_prompt(tok, format_prompt(tok, render_prompt(spec, r)), True) for r in rows]
        for name in args.dtype or ["fp32", "bf16"]:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[name]).to(args.device).eval()
            batch = last_logits(model, tok, prompts[:64])
            alone = torch.cat([last_logits(model, tok, [p]) for p in prompts[:64]])
            print(f"{name}: prompt lengths {min(map(len, prompts))}-{max(map(len, prompts))}, max |logit diff| "
                  f"batch of 64 vs alone {float((batch - alone).abs().max()):.3g}")
            samples = {}
            for bs in [int(b) for b in args.batch_sizes.split(",")]:
                out = Path(tmp) / f"{name}_bs{bs}"
                evaluate(HFEngine(model, tok), tok, spec, rows, n=4, temperature=1.0, max_tokens=16, batch_size=bs,
                         progress=False, n_boot=0, seed=0, out_path=out)
                recs = [json.loads(line) for line in Path(f"{out}.samples.jsonl").read_text().splitlines()[1:]]
                samples[bs] = {(r["row"], r["sample"]): r["completion"] for r in recs}
            first, *others = samples
            for bs in others:
                differ = sum(samples[first][k] != samples[bs][k] for k in samples[first])
                print(f"  --batch-size {first} vs {bs}: {differ} of {len(samples[first])} samples differ")


if __name__ == "__main__":
    main()
