"""The command line shared by scripts/apr_pretrain.py and scripts/a2fm_pretrain.py: staged SFT from scratch.

Importing this module is light (no torch), so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path


def add_stage_args(p: argparse.ArgumentParser, time_budget: float) -> None:
    """The options of :func:`run_stages`: epochs, seconds per stage, LR, stages, seed and torch threads."""
    p.add_argument("--epochs", type=float, default=20.0)
    p.add_argument("--time-budget", type=float, default=time_budget, help="seconds per stage (0: no limit)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--stages", type=int, default=2,
                   help="SFT stages, each on fresh traces within --time-budget; stage 2+ continues at LR 2e-3 (as the study)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)


def run_stages(pretrain, args: argparse.Namespace, **kwargs) -> Path:
    """:func:`~rlpost.studies.common.pretrain_stages` of ``pretrain`` into ``args.out`` with the parsed options
    (``kwargs`` go to every stage); logs to stderr. Returns the model folder."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import torch

    from rlpost.studies.common import pretrain_stages
    torch.set_num_threads(args.threads)
    return pretrain_stages(pretrain, args.out, stages=args.stages, seed=args.seed,
                           time_budget_s=args.time_budget or None, epochs=args.epochs, lr=args.lr, **kwargs)
