#!/usr/bin/env python
"""Train a reward model (a one-label sequence-classification head on any causal-LM checkpoint) with TRL's
RewardTrainer on preference pairs, and save it with save_pretrained.

    python reward_models/train_rm.py --model tiny:qwen2:arithmetic \
        --data reward_models/data/correct_train.jsonl --eval-data reward_models/data/correct_test.jsonl \
        --out reward_models/out/rm_correct --max-steps 150

The result loads with ``AutoModelForSequenceClassification.from_pretrained`` and plugs into an RL config:

    rewards:
      - {name: reward_model, kwargs: {path: reward_models/out/rm_correct, name: rm_correct, batch_size: 32, device: cpu}}
"""
import argparse
import json
import sys

from rlpost.reward_modeling import read_jsonl, train_reward_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny:qwen2:arithmetic", help="causal-LM checkpoint: folder, hub id or tiny:...")
    p.add_argument("--data", required=True, help="JSONL with prompt, chosen, rejected")
    p.add_argument("--eval-data", default=None, help="held-out pairs: report the pair accuracy")
    p.add_argument("--out", required=True)
    p.add_argument("--max-steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    result = train_reward_model(a.model, a.data, a.out, max_steps=a.max_steps, learning_rate=a.lr,
                                batch_size=a.batch_size, seed=a.seed, max_length=a.max_length, device=a.device,
                                eval_pairs=read_jsonl(a.eval_data) if a.eval_data else None)
    print(json.dumps({k: v for k, v in result.items() if k != "log_history"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
