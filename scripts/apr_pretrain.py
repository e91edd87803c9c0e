#!/usr/bin/env python
"""Train a tiny APR (or SoS+) model from scratch on Countdown solver traces (CPU, minutes).

    python scripts/apr_pretrain.py --kind apr --out runs/apr_pretrain/apr
    python scripts/apr_pretrain.py --kind sos --out runs/apr_pretrain/sos --time-budget 300
    rlpost train recipes/apr/tiny.yaml model.name_or_path=runs/apr_pretrain/apr

Data: the symbolic solver of rlpost.workflows.apr (APR: every call of a spawn/join tree is one sequence;
SoS+: one serial trace with a ``Token Budget`` prefix), on 3-number problems (1..9, targets 10..25, + and - only).
Model: a 2-layer LLaMA (d=128, head_dim 32, 2048 positions) with the char tokenizer plus the protocol
phrases as tokens (rlpost.studies.phrase_tokenizer). Loss on each call's completion only.
"""
import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=["apr", "sos"], default="apr")
    p.add_argument("--out", default=None, help="output folder (default runs/apr_pretrain/<kind>)")
    p.add_argument("--traces", type=int, default=4000, help="solver runs (each APR tree gives several sequences)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--time-budget", type=float, default=300.0, help="stop SFT after this many seconds (0: none)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import torch

    from rlpost.studies.apr import pretrain
    torch.set_num_threads(args.threads)
    out = pretrain(args.kind, args.out or f"runs/apr_pretrain/{args.kind}", n_traces=args.traces, seed=args.seed,
                   time_budget_s=args.time_budget or None, epochs=args.epochs, lr=args.lr)
    print(f"model: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
