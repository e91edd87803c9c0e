#!/usr/bin/env python
"""Write tiny preference data sets (JSONL: prompt, chosen, rejected, answer) from a synthetic task.

    python reward_models/make_preferences.py --kind correct --n 512 --out reward_models/data/correct_train.jsonl
    python reward_models/make_preferences.py --kind length  --n 512 --out reward_models/data/length_train.jsonl
    python reward_models/make_preferences.py --kind correct --split test --n 128 --out reward_models/data/correct_test.jsonl

Kinds (rlpost/reward_modeling.py):
  correct     chosen = gold answer, rejected = a near miss (one digit changed, or off by 1..10)
  last_digit  chosen = gold answer, rejected = the answer with its last digit changed
  length      chosen = the longer of two digit strings grown from / cut off the gold answer (verbosity proxy)
  digit       chosen = the string with more copies of --digit (surface-pattern proxy)

``correct`` / ``last_digit`` train a (partial) correctness RM; ``length`` / ``digit`` are proxies that
reward surface features, so a sum of a correctness RM and a proxy RM can be over-optimised.
Prompts carry the tokenizer's chat template, exactly as the RL trainer hands them to reward functions.
"""
import argparse
import sys

from rlpost.reward_modeling import PREFERENCE_KINDS, make_preference_pairs, write_jsonl


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="arithmetic")
    p.add_argument("--kind", default="correct", choices=PREFERENCE_KINDS)
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--digit", default="7", help="kind=digit: the preferred digit")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder for the chat template (default: the tiny char tokenizer)")
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    tok = None
    if a.tokenizer:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(a.tokenizer)
    extra = {"digit": a.digit} if a.kind == "digit" else {}
    rows = make_preference_pairs(a.task, a.kind, a.n, a.seed, a.split, tokenizer=tok,
                                 chat_template=not a.no_chat_template, **extra)
    path = write_jsonl(rows, a.out)
    print(f"{len(rows)} {a.kind} pairs from {a.task} ({a.split}) -> {path}\n  e.g. {rows[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
