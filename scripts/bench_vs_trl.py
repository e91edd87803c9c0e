"""rlpost vs TRL GRPOTrainer: generation+training throughput on the same machine, same tiny model.

Settings on both sides: 8 prompts x 8 generations per step, no KL (no reference model), transformers
generation, temperature 1.0, GRPO loss, AdamW lr 1e-4, fp32, no gradient checkpointing, one optimizer
step per generation batch. Runs alternate (rlpost, TRL, rlpost, TRL, ...) in fresh subprocesses so
neither side benefits from warm caches. Throughput = completion tokens / wall time of the training
loop (from the start of training to the end of the last step; model loading and rlpost's final save
excluded); reward = mean training reward over the first 5 and the last 5 steps.

Where rlpost's time goes and why it is faster here: both sides run the same model for generation and
for the learner's forward/backward. rlpost's rollout prefills each distinct prompt once and shares its KV
cache among the prompt's 8 samples, and its learner does the same (rlpost/shared_prefix.py), so prompt
tokens are processed 8x less often; finished rows leave the sampling batch. The tiny arithmetic model
answers in ~4 tokens, so at this scale the prompt side dominates: read the ratio as "prompt-heavy, short
answer" workloads. ``--override optim.shared_prefix=false`` shows rlpost without the prompt sharing.

    python scripts/bench_vs_trl.py                      # max 32 and 128 new tokens, 2 repeats, 20 steps
    python scripts/bench_vs_trl.py --lengths 32 --repeats 1 --steps 5
    python scripts/bench_vs_trl.py --override optim.shared_prefix=false
    python scripts/bench_vs_trl.py --model random-tiny --steps 5   # untrained: every completion runs to the cap

``--model random-tiny`` is the same architecture with random weights: it almost never emits EOS, so every
completion is max-new-tokens long and generation dominates (the opposite regime; rewards are ~0 there).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PROMPTS, GENERATIONS, LR = 8, 8, 1e-4


def run_rlpost(model_path: str, max_tokens: int, steps: int, seed: int, overrides: tuple = ()) -> dict:
    from rlpost.config import load_config
    from rlpost.trainer import Trainer

    cfg = load_config("configs/tiny/arith_grpo.yaml", [
        f"model.name_or_path={model_path}", f"rollout.max_completion_length={max_tokens}",
        f"rollout.prompts_per_step={PROMPTS}", f"rollout.num_generations={GENERATIONS}", "algo.beta=0.0",
        "algo.loss=grpo", f"optim.learning_rate={LR}", f"optim.micro_batch_size={PROMPTS * GENERATIONS}",
        f"trainer.max_steps={steps}", "trainer.eval_steps=-1", "trainer.save_steps=0", "trainer.report_to=[]",
        "trainer.progress_bar=false", f"trainer.output_dir=runs/bench/rlpost_{max_tokens}_{seed}",
        f"trainer.seed={seed}", "data.num_eval=8", *overrides])
    trainer = Trainer(cfg).setup()
    rows, clock = [], {}
    orig_log, orig_finish = trainer.tracker.log, trainer.finish
    trainer.tracker.log = lambda m: (rows.append(m), orig_log(m))
    trainer.evaluate = lambda: {}
    # loop time: train() start to the final save (excluded, as TRL's run saves nothing)
    trainer.finish = lambda last: (clock.setdefault("end", time.perf_counter()), orig_finish(last))[1]
    clock["start"] = time.perf_counter()
    trainer.train()
    steps_rows = [r for r in rows if r["step"] > 0]
    tokens = sum(r["tokens"] for r in steps_rows)
    return {"tokens": tokens, "time": clock["end"] - clock["start"],
            "reward_first5": statistics.mean(r["reward/mean"] for r in steps_rows[:5]),
            "reward_last5": statistics.mean(r["reward/mean"] for r in steps_rows[-5:]),
            "mean_length": tokens / (len(steps_rows) * PROMPTS * GENERATIONS)}


def run_trl(model_path: str, max_tokens: int, steps: int, seed: int) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlpost.rewards.builtin import arithmetic_reward
    from rlpost.tasks.arithmetic import make_split

    rows = make_split("train", 2000, seed=seed)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]} for r in rows])
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="float32")
    args = GRPOConfig(output_dir=f"runs/bench/trl_{max_tokens}_{seed}", use_cpu=True, bf16=False, report_to=[],
                      per_device_train_batch_size=PROMPTS * GENERATIONS, gradient_accumulation_steps=1,
                      num_generations=GENERATIONS, max_completion_length=max_tokens, temperature=1.0, beta=0.0,
                      loss_type="grpo", scale_rewards="group", learning_rate=LR, lr_scheduler_type="constant",
                      max_steps=steps, logging_steps=1, save_strategy="no", seed=seed,
                      gradient_checkpointing=False, disable_tqdm=True, dataloader_num_workers=0,
                      max_grad_norm=1.0, weight_decay=0.0)

    def reward(prompts, completions, answer, **kw):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return arithmetic_reward(prompts, texts, answer)

    class Clock(TrainerCallback):
        start = end = None

        def on_train_begin(self, *a, **k):
            Clock.start = time.perf_counter()

        def on_train_end(self, *a, **k):
            Clock.end = time.perf_counter()

    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=ds, processing_class=tok,
                          callbacks=[Clock()])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    tokens = sum(h["completions/mean_length"] * PROMPTS * GENERATIONS for h in logs)
    return {"tokens": tokens, "time": Clock.end - Clock.start,
            "reward_first5": statistics.mean(h["reward"] for h in logs[:5]),
            "reward_last5": statistics.mean(h["reward"] for h in logs[-5:]),
            "mean_length": statistics.mean(h["completions/mean_length"] for h in logs)}


def worker(args) -> None:
    import torch
    torch.manual_seed(args.seed)
    if args.worker == "rlpost":
        result = run_rlpost(args.model, args.max_tokens, args.steps, args.seed, tuple(args.override))
    else:
        result = run_trl(args.model, args.max_tokens, args.steps, args.seed)
    print("RESULT " + json.dumps(result), flush=True)


def spawn(side: str, model: str, max_tokens: int, steps: int, seed: int, overrides: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--model", model, "--max-tokens", str(max_tokens),
           "--steps", str(steps), "--seed", str(seed)] + [f"--override={o}" for o in overrides]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{side} run failed:\n{out.stderr[-3000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder, or random-tiny (default: the tiny arithmetic model, built if needed)")
    p.add_argument("--lengths", type=int, nargs="+", default=[32, 128])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--worker", choices=["rlpost", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--max-tokens", type=int, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra rlpost config override for the rlpost side (repeatable)")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.model is None:
        from rlpost.models.tiny import ensure_tiny
        args.model = str(ensure_tiny("tiny:qwen2:arithmetic"))
    elif args.model == "random-tiny":
        from rlpost.models.tiny import save_random_tiny
        args.model = save_random_tiny("runs/bench/random-tiny")
    from rlpost.provenance import describe
    print(f"bench_vs_trl, {describe()}")
    print(f"model {args.model}; {PROMPTS} prompts x {GENERATIONS} generations, {args.steps} steps, "
          f"{args.repeats} alternating repeats, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}"
          + (f", rlpost overrides {args.override}" if args.override else "") + "\n")
    table = []
    for length in args.lengths:
        results = {"rlpost": [], "trl": []}
        for rep in range(args.repeats):
            for side in ("rlpost", "trl"):
                r = spawn(side, args.model, length, args.steps, args.seed + rep, args.override)
                results[side].append(r)
                print(f"  max_tokens={length} rep {rep} {side:6s}: {r['tokens'] / r['time']:8.0f} tok/s  "
                      f"{r['time'] / args.steps:6.3f} s/step  mean len {r['mean_length']:5.1f}  "
                      f"reward first 5 steps {r['reward_first5']:.3f}, last 5 {r['reward_last5']:.3f}", flush=True)
        tps = {s: statistics.mean(r["tokens"] / r["time"] for r in rs) for s, rs in results.items()}
        rew = {s: [statistics.mean(r[k] for r in rs) for k in ("reward_first5", "reward_last5")]
               for s, rs in results.items()}
        table.append((length, tps["rlpost"], tps["trl"], tps["rlpost"] / tps["trl"], rew["rlpost"], rew["trl"]))
    print("\n| max new tokens | rlpost tok/s | TRL tok/s | ratio | rlpost reward (first 5 -> last 5 steps) "
          "| TRL reward (first 5 -> last 5 steps) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for length, a, b, ratio, ra, rb in table:
        print(f"| {length} | {a:.0f} | {b:.0f} | {ratio:.2f}x | {ra[0]:.3f} -> {ra[1]:.3f} | {rb[0]:.3f} -> {rb[1]:.3f} |")


if __name__ == "__main__":
    main()
