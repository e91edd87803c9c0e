"""``rlpost sft CONFIG [key=value ...]``: SFT on TRL's SFTTrainer (NLL or an f-divergence objective)."""
from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  rlpost sft recipes/implicit_sft/tiny_sft.yaml
  rlpost sft recipes/implicit_sft/tiny_sft.yaml sft.lr.lr_scale=0.25          # the learning-rate reduction
  rlpost sft recipes/implicit_sft/tiny_sft.yaml sft.loss.name=f_pearson sft.loss.beta=0.1
  rlpost sft recipes/implicit_sft/tiny_sft.yaml trainer.output_dir=runs/sft_lr1 trainer.max_steps=50
"""


def cmd_sft(args) -> int:
    from rlpost.config import ConfigError
    from rlpost.sft import SFTRunConfig, load_stage_config, run_sft

    try:
        cfg = load_stage_config(SFTRunConfig, args.config, args.overrides)
        summary = run_sft(cfg)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    print(f"\nfinished {summary['steps']} SFT steps ({summary['sft_loss']}, lr {summary['learning_rate']:.3g}): "
          f"loss {summary['first_loss']} -> {summary['last_loss']}; held-out score "
          f"{summary['heldout_score_initial']} -> {summary['heldout_score']}")
    print(f"metrics:     {summary['metrics']}\nfinal model: {summary['final_model']}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sft", help="supervised fine-tuning (TRL SFTTrainer; NLL or f-divergence objectives)",
        description="Supervised fine-tuning on TRL's SFTTrainer. sft.loss picks an SFT_LOSSES entry (nll, f_pearson, "
                    "f_hellinger, f_js, f_kl, f_tv; the f-divergence ones are reconstructions), sft.lr the learning-rate "
                    "reduction (base_lr * lr_scale). Logs the implicit reward and the KL to the initial model.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config (recipes/implicit_sft/...)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sft.lr.lr_scale=0.5")
    p.set_defaults(func=cmd_sft)
