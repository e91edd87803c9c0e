#!/usr/bin/env python
"""Warm-start a tiny A²FM model from scratch: route tags + each mode's format (CPU, minutes).

    python scripts/a2fm_pretrain.py --out runs/a2fm_pretrain/sft
    rlpost train recipes/a2fm/tiny.yaml model.name_or_path=runs/a2fm_pretrain/sft

Data: synthetic route-then-align traces (rlpost.studies.a2fm_data) on rlpost/tasks/a2fm_mini.py questions;
tool responses come from the real tools and are not trained on.
"""
import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/a2fm_pretrain/sft")
    p.add_argument("--examples", type=int, default=6000)
    p.add_argument("--epochs", type=float, default=20.0)
    p.add_argument("--time-budget", type=float, default=1200.0, help="seconds per stage (0: no limit)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--stages", type=int, default=2,
                   help="SFT stages, each on fresh traces within --time-budget; stage 2+ continues at LR 2e-3 (as the study)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import torch

    from rlpost.studies.a2fm import pretrain
    torch.set_num_threads(args.threads)
    out = pretrain(args.out, n_examples=args.examples, seed=args.seed, time_budget_s=args.time_budget or None,
                   epochs=args.epochs, lr=args.lr)
    for stage in range(1, args.stages):
        out = pretrain(args.out, n_examples=args.examples, seed=args.seed + 1000 * stage,
                       time_budget_s=args.time_budget or None, epochs=args.epochs, lr=2e-3, init_from=args.out)
    print(f"model: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
