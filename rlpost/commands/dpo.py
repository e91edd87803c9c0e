"""``rlpost dpo CONFIG [key=value ...]``: DPO on TRL's DPOTrainer (typically from an rlpost sft checkpoint)."""
from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  rlpost dpo recipes/implicit_sft/tiny_dpo.yaml model.name_or_path=runs/implicit_sft/sft/final_model
  rlpost dpo recipes/implicit_sft/tiny_dpo.yaml dpo.beta=0.05 dpo.learning_rate=1e-5
  rlpost dpo recipes/implicit_sft/full_dpo.yaml data.train_path=HuggingFaceH4/ultrafeedback_binarized
"""


def cmd_dpo(args) -> int:
    from rlpost.config import ConfigError
    from rlpost.dpo import DPORunConfig, run_dpo
    from rlpost.sft import load_stage_config

    try:
        cfg = load_stage_config(DPORunConfig, args.config, args.overrides)
        summary = run_dpo(cfg)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    print(f"\nfinished {summary['steps']} DPO steps (beta {summary['beta']}, lr {summary['learning_rate']:.3g}): "
          f"loss {summary['first_loss']} -> {summary['last_loss']}; held-out score "
          f"{summary['heldout_score_initial']} -> {summary['heldout_score']}")
    print(f"metrics:     {summary['metrics']}\nfinal model: {summary['final_model']}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dpo", help="direct preference optimisation (TRL DPOTrainer), e.g. from an rlpost sft checkpoint",
        description="DPO on TRL's DPOTrainer. The reference model is a copy of model.name_or_path (the SFT "
                    "checkpoint). Preference data from data.train_path (prompt/chosen/rejected) or generated from "
                    "data.task (chosen = gold answer, rejected = a near miss).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config (recipes/implicit_sft/...)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. dpo.beta=0.1")
    p.set_defaults(func=cmd_dpo)
