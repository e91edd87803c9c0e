#!/usr/bin/env python
"""Warm-start a tiny tool-using model for configs/tiny/arith_tool_calculator.yaml (CPU, about a minute).

    python scripts/tool_pretrain.py --out runs/tool_pretrain/sft
    rlpost train configs/tiny/arith_tool_calculator.yaml model.name_or_path=runs/tool_pretrain/sft

Starts from tiny:qwen2:arithmetic (2-digit addition) and trains, on 3-digit additions of the task's train split,
transcripts laid out exactly as the multi_turn workflow lays them out (rlpost/workflows/multi_turn.py): a share
``--tool-share`` of them call the calculator (Hermes ``<tool_call>`` JSON), read the tool message (no loss) and
answer; the rest answer directly ("The answer is N"), which a 2-layer model gets mostly wrong. Greedy decoding then
answers directly while sampling still calls the tool sometimes: RL has a better behaviour to find and reinforce.
"""
import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SYSTEM = "Use the calculator."


def call_text(question: str) -> str:
    expression = question.rstrip("=")
    return '<tool_call>{"name": "calculator", "arguments": {"expression": "' + expression + '"}}</tool_call>'


def transcripts(tok, rows, tool_share: float, seed: int):
    """(prompt text, [(segment text, trained)]) per row, tokenised the way the workflow tokenises an episode."""
    from rlpost.envs.base import tool_schemas, tool_table
    from rlpost.envs.examples import CalculatorEnv
    from rlpost.workflows.multi_turn import ChatDelta
    delta = ChatDelta(tok, tool_schemas(tool_table(CalculatorEnv().tools)))
    rng, eos = random.Random(seed), tok.eos_token
    pairs = []
    for row in rows:
        prompt = delta.render([{"role": "system", "content": SYSTEM}, {"role": "user", "content": row["prompt"]}],
                              add_generation_prompt=True)
        if rng.random() < tool_share:
            obs = tok.decode(delta.observation_ids(tok.eos_token_id, [{"role": "tool", "name": "calculator",
                                                                      "content": row["answer"]}]),
                             skip_special_tokens=False)
            pairs.append((prompt, [(call_text(row["prompt"]) + eos, True), (obs, False), (row["answer"], True)]))
        else:
            pairs.append((prompt, [(f"The answer is {row['answer']}", True)]))
    return pairs


def evaluate(model, tok, rows, temperature: float = 0.0, n: int = 1) -> dict:
    """Accuracy and tool-call share of the multi_turn workflow with CalculatorEnv on ``rows``."""
    from rlpost.data import build_prompts
    from rlpost.engines.base import SamplingParams
    from rlpost.engines.hf import HFEngine
    from rlpost.workflows.multi_turn import MultiTurnWorkflow
    wf = MultiTurnWorkflow(HFEngine(model, tok), tok, env="rlpost.envs.examples:CalculatorEnv",
                           env_kwargs={"system_prompt": SYSTEM}, max_turns=3, max_total_tokens=384)
    trajs = wf.rollout(build_prompts(rows, tok), SamplingParams(n=n, temperature=temperature, max_tokens=96, seed=0))
    return {"accuracy": sum(t.info["env_reward"] or 0.0 for t in trajs) / len(trajs),
            "tool_share": sum(t.info["tool_calls"] > 0 for t in trajs) / len(trajs)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/tool_pretrain/sft")
    p.add_argument("--examples", type=int, default=4000)
    p.add_argument("--tool-share", type=float, default=0.3, help="share of transcripts that call the tool")
    p.add_argument("--epochs", type=float, default=10.0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--tokens-per-batch", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--init", default="tiny:qwen2:arithmetic", help="tiny ref or folder to start from")
    p.add_argument("--time-budget", type=float, default=None, help="stop SFT after this many seconds")
    args = p.parse_args(argv)
    import logging

    import torch
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlpost.models.tiny import ensure_tiny
    from rlpost.studies.common import save_model, sft
    from rlpost.tasks import TASKS
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    base = ensure_tiny(args.init) if args.init.startswith("tiny:") else args.init
    tok, model = AutoTokenizer.from_pretrained(base), AutoModelForCausalLM.from_pretrained(base)
    train_rows = TASKS.get("arithmetic")("train", args.examples, seed=args.seed, digits=3)
    held_out = TASKS.get("arithmetic")("test", 128, seed=args.seed, digits=3)
    stats = sft(model, tok, transcripts(tok, train_rows, args.tool_share, args.seed), epochs=args.epochs, lr=args.lr,
                tokens_per_batch=args.tokens_per_batch, seed=args.seed, log_every=50, time_budget_s=args.time_budget)
    stats["greedy"] = evaluate(model, tok, held_out)
    stats["sampled"] = evaluate(model, tok, held_out, temperature=1.0, n=4)
    out = save_model(model, tok, args.out, {"args": vars(args), **stats})
    print(json.dumps(stats, indent=2))
    print(f"model: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
