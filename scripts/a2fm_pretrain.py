#!/usr/bin/env python
"""Warm-start a tiny A²FM model from scratch: route tags + each mode's format (CPU, minutes).

    python scripts/a2fm_pretrain.py --out runs/a2fm_pretrain/sft
    rlpost train recipes/a2fm/tiny.yaml model.name_or_path=runs/a2fm_pretrain/sft

Data: synthetic route-then-align traces (rlpost.studies.a2fm_data) on rlpost/tasks/a2fm_mini.py questions;
tool responses come from the real tools and are not trained on.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlpost.studies.pretrain_cli import add_stage_args, run_stages  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/a2fm_pretrain/sft")
    p.add_argument("--examples", type=int, default=6000)
    add_stage_args(p, time_budget=1200.0)
    args = p.parse_args(argv)
    from rlpost.studies.a2fm import pretrain
    out = run_stages(pretrain, args, n_examples=args.examples)
    print(f"model: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
