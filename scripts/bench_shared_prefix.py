"""Learner forward+backward with and without optim.shared_prefix: agreement and time, same model and batch.

A batch of G prompts x n completions (prompt length P, completion lengths uniform in [T/2, T]) goes through
``rlpost.learner.token_logprobs`` twice per repeat, plain and shared-prefix, each followed by a backward of
sum(log-probs). Printed: the largest log-prob and gradient differences, and the median time of each path.

    python scripts/bench_shared_prefix.py                                   # tiny model, CPU
    python scripts/bench_shared_prefix.py --model 20m --prompt-len 256 --completion-len 128
    python scripts/bench_shared_prefix.py --model 20m --device cuda --dtype bfloat16 --groups 16 --n 8
    python scripts/bench_shared_prefix.py --model PATH_OR_HUB_ID --device cuda --dtype bfloat16
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


def load_model(name: str, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM
    if name == "tiny":
        from rlpost.models.tiny import ensure_tiny
        name = str(ensure_tiny("tiny:qwen2:arithmetic"))
    elif name == "20m":
        from bench_engines import build_20m
        name = str(build_20m(Path(tempfile.mkdtemp()) / "m20"))
    return AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(device).train()


def make_batch(vocab: int, groups: int, n: int, prompt_len: int, completion_len: int, device: str, seed: int = 0):
    from rlpost.batch import collate
    from rlpost.types import Prompt, Sample, Trajectory
    g = torch.Generator().manual_seed(seed)
    trajs = []
    for gid in range(groups):
        prompt = torch.randint(3, vocab, (prompt_len,), generator=g).tolist()
        for _ in range(n):
            C = int(torch.randint(max(1, completion_len // 2), completion_len + 1, (1,), generator=g))
            s = Sample(prompt_ids=prompt, completion_ids=torch.randint(3, vocab, (C,), generator=g).tolist(),
                       logprobs=[-1.0] * C)
            trajs.append(Trajectory(Prompt(gid, "p"), group_id=gid, samples=[s], final_text=""))
    batch = collate(trajs, 0)
    for k, v in vars(batch).items():
        if isinstance(v, torch.Tensor):
            setattr(batch, k, v.to(device))
    return batch


def run(model, batch, shared: bool, device: str):
    from rlpost.learner import token_logprobs
    model.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    logp, _ = token_logprobs(model, batch, 1.0, False, shared_prefix=shared)
    (logp * batch.response_mask).sum().backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seconds, logp.detach().float(), {k: p.grad.detach().float().clone() for k, p in model.named_parameters()
                                            if p.grad is not None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny, 20m (random ~20M Qwen2) or a model path / hub id")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--n", type=int, default=8, help="completions per prompt")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--completion-len", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    model = load_model(args.model, getattr(torch, args.dtype), args.device)
    batch = make_batch(model.config.vocab_size, args.groups, args.n, args.prompt_len, args.completion_len, args.device)
    mask = batch.response_mask.bool()
    run(model, batch, True, args.device)  # warm-up (and the one-off agreement check of the shared path)
    times = {False: [], True: []}
    for _ in range(args.repeats):
        plain_s, ref_logp, ref_grads = run(model, batch, False, args.device)
        shared_s, logp, grads = run(model, batch, True, args.device)
        times[False].append(plain_s)
        times[True].append(shared_s)
        lp_gap = float((logp - ref_logp)[mask].abs().max())
        grad_gap = max(float((grads[k] - ref_grads[k]).abs().max()) / max(1e-12, float(ref_grads[k].abs().max()))
                       for k in grads)
    plain, shared = statistics.median(times[False]), statistics.median(times[True])
    print(f"model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {args.dtype}, "
          f"{args.device}); {args.groups} prompts x {args.n} completions, prompt {args.prompt_len} tokens, "
          f"completions {args.completion_len // 2}..{args.completion_len}")
    print(f"max |log-prob difference| {lp_gap:.3g}; max relative gradient difference (per tensor) {grad_gap:.3g}")
    print(f"forward+backward: plain {plain * 1e3:.1f} ms, shared prefix {shared * 1e3:.1f} ms, "
          f"speed-up {plain / shared:.2f}x (median of {args.repeats})")


if __name__ == "__main__":
    main()
