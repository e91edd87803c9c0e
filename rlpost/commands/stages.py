"""``rlpost sft`` and ``rlpost dpo``: the supervised and preference stages on TRL's SFTTrainer / DPOTrainer.

Both take ``CONFIG [key=value ...]``, run the stage (rlpost/sft.py, rlpost/dpo.py) and print the same summary.
"""
from __future__ import annotations

import argparse

SFT_EPILOG = """examples:
  rlpost sft recipes/implicit_sft/tiny_sft.yaml
  rlpost sft recipes/implicit_sft/tiny_sft.yaml sft.lr.lr_scale=0.25          # the learning-rate reduction
  rlpost sft recipes/implicit_sft/tiny_sft.yaml sft.loss.name=f_pearson sft.loss.beta=0.1
  rlpost sft recipes/implicit_sft/tiny_sft.yaml trainer.output_dir=runs/sft_lr1 trainer.max_steps=50
"""

DPO_EPILOG = """examples:
  rlpost dpo recipes/implicit_sft/tiny_dpo.yaml model.name_or_path=runs/implicit_sft/sft/final_model
  rlpost dpo recipes/implicit_sft/tiny_dpo.yaml dpo.beta=0.05 dpo.learning_rate=1e-5
  rlpost dpo recipes/implicit_sft/full_dpo.yaml data.train_path=HuggingFaceH4/ultrafeedback_binarized
"""


def _run_stage(args, stage: str) -> int:
    from rlpost.sft import load_stage_config

    if stage == "sft":
        from rlpost.sft import SFTRunConfig as config_cls, run_sft as run
    else:
        from rlpost.dpo import DPORunConfig as config_cls, run_dpo as run
    summary = run(load_stage_config(config_cls, args.config, args.overrides))   # bad input: rlpost.cli.error_boundary
    what = summary["sft_loss"] if stage == "sft" else f"beta {summary['beta']}"
    print(f"\nfinished {summary['steps']} {stage.upper()} steps ({what}, lr {summary['learning_rate']:.3g}): "
          f"loss {summary['first_loss']} -> {summary['last_loss']}; held-out score "
          f"{summary['heldout_score_initial']} -> {summary['heldout_score']}")
    print(f"metrics:     {summary['metrics']}\nfinal model: {summary['final_model']}")
    return 0


def _add(subparsers, stage: str, help_: str, description: str, epilog: str, example: str) -> None:
    p = subparsers.add_parser(stage, help=help_, description=description, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config (recipes/implicit_sft/...)")
    p.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {example}")
    p.set_defaults(func=lambda args: _run_stage(args, stage))


def register(subparsers) -> None:
    _add(subparsers, "sft", "supervised fine-tuning (TRL SFTTrainer; NLL or f-divergence objectives)",
         "Supervised fine-tuning on TRL's SFTTrainer. sft.loss picks an SFT_LOSSES entry (nll, f_pearson, "
         "f_hellinger, f_js, f_kl, f_tv; the f-divergence ones are reconstructions), sft.lr the learning-rate "
         "reduction (base_lr * lr_scale). Logs the implicit reward and the KL to the initial model.",
         SFT_EPILOG, "sft.lr.lr_scale=0.5")
    _add(subparsers, "dpo", "direct preference optimisation (TRL DPOTrainer), e.g. from an rlpost sft checkpoint",
         "DPO on TRL's DPOTrainer. The reference model is a copy of model.name_or_path (the SFT checkpoint). "
         "Preference data from data.train_path (prompt/chosen/rejected) or generated from data.task "
         "(chosen = gold answer, rejected = a near miss).",
         DPO_EPILOG, "dpo.beta=0.1")
