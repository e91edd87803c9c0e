#!/usr/bin/env python
"""Train a tiny APR (or SoS+) model from scratch on Countdown solver traces (CPU, minutes).

    python scripts/apr_pretrain.py                                  # APR + SoS+ traces -> runs/apr_pretrain/model
    python scripts/apr_pretrain.py --kind apr --out runs/apr_pretrain/apr --time-budget 600
    rlpost train recipes/apr/tiny.yaml

Data: the symbolic solver of rlpost.workflows.apr (APR: every call of a spawn/join tree is one sequence;
SoS+: one serial trace with a ``Token Budget`` prefix), on 3-number problems (1..9, targets 10..25, + and - only).
With ``--kind both`` (default) one model learns both; the root prompt selects (SoS+ roots carry the budget).
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
    p.add_argument("--kind", choices=["apr", "sos", "both"], default="both",
                   help="traces to train on: APR trees, SoS+ serial traces, or both (one model; the prompt selects)")
    p.add_argument("--out", default="runs/apr_pretrain/model", help="output folder")
    p.add_argument("--traces", type=int, default=6000, help="solver runs per kind (an APR tree gives several sequences)")
    p.add_argument("--epochs", type=float, default=20.0)
    p.add_argument("--time-budget", type=float, default=1500.0, help="seconds per stage (0: no limit)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--stages", type=int, default=2,
                   help="SFT stages, each on fresh traces within --time-budget; stage 2+ continues at LR 2e-3 (as the study)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import torch

    from rlpost.studies.apr import pretrain
    torch.set_num_threads(args.threads)
    out = pretrain(args.kind, args.out, n_traces=args.traces, seed=args.seed,
                   time_budget_s=args.time_budget or None, epochs=args.epochs, lr=args.lr)
    for stage in range(1, args.stages):
        out = pretrain(args.kind, args.out, n_traces=args.traces, seed=args.seed + 1000 * stage,
                       time_budget_s=args.time_budget or None, epochs=args.epochs, lr=2e-3, init_from=args.out)
    print(f"model: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
