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
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlpost.studies.pretrain_cli import add_stage_args, run_stages  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=["apr", "sos", "both"], default="both",
                   help="traces to train on: APR trees, SoS+ serial traces, or both (one model; the prompt selects)")
    p.add_argument("--out", default="runs/apr_pretrain/model", help="output folder")
    p.add_argument("--traces", type=int, default=6000, help="solver runs per kind (an APR tree gives several sequences)")
    add_stage_args(p, time_budget=1500.0)
    args = p.parse_args(argv)
    from rlpost.studies.apr import pretrain
    out = run_stages(partial(pretrain, args.kind), args, n_traces=args.traces)
    print(f"model: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
