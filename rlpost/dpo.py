"""``rlpost dpo``: DPO on TRL's DPOTrainer, usually starting from an ``rlpost sft`` checkpoint.

    rlpost dpo recipes/implicit_sft/tiny_dpo.yaml model.name_or_path=runs/implicit_sft/sft/final_model

The policy and the reference both start from ``model.name_or_path`` (TRL copies the model as π_ref),
so with an SFT checkpoint the DPO reference is the SFT model, as in the paper's SFT → DPO pipeline.
Preference data: ``data.train_path`` (rows with prompt / chosen / rejected, standard or conversational),
or, with ``data.task`` set, pairs generated from the task by :func:`rlpost.reward_modeling.make_preference_pairs`
(``data.preference_kind``: chosen = the gold answer, rejected = a near miss). TRL logs the implicit
rewards (``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``); the
held-out score (greedy task accuracy) is logged at the start, every ``trainer.eval_steps`` and at the end.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlpost.config import ConfigError, ModelConfig
from rlpost.tracking import plot_metrics
from rlpost.sft import (StageDataConfig, StageTrainerConfig, _model_path, _summary, train_score_save, _trl_common_args,
                        heldout_rows, heldout_score, jsonl_callback, render_prompt, save_stage_config, source_rows)


@dataclass
class DPOSection:
    beta: float = 0.1                         # DPO β (TRL DPOConfig.beta)
    loss_type: list = field(default_factory=lambda: ["sigmoid"])  # TRL loss types (sigmoid = DPO, ipo, ...)
    learning_rate: float = 5.0e-7             # peak learning rate
    lr_scheduler_type: str = "linear"         # linear | cosine | constant (after warmup)
    warmup_ratio: float = 0.1
    label_smoothing: float = 0.0
    precompute_ref_log_probs: bool = False    # drop the reference model from memory after one pass


@dataclass
class DPORunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: StageDataConfig = field(default_factory=StageDataConfig)
    dpo: DPOSection = field(default_factory=DPOSection)
    trainer: StageTrainerConfig = field(default_factory=lambda: StageTrainerConfig(output_dir="runs/dpo"))


def preference_rows(cfg: DPORunConfig, tokenizer) -> list[dict]:
    """Standard-format ``{prompt, chosen, rejected}`` rows; prompts rendered with the chat template."""
    d, seed = cfg.data, cfg.trainer.seed
    if d.train_path is None:
        from rlpost.reward_modeling import make_preference_pairs
        pairs = make_preference_pairs(d.task, kind=d.preference_kind, n=d.num_train, seed=seed, split="train",
                                      tokenizer=tokenizer, chat_template=d.chat_template, task_kwargs=d.task_kwargs)
        return [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]
    rows = source_rows(d, d.train_split, d.num_train, seed)
    out = []
    for i, r in enumerate(rows):
        for col in (d.chosen_column, d.rejected_column) if isinstance(r.get(d.chosen_column), list) else \
                (d.prompt_column, d.chosen_column, d.rejected_column):
            if col not in r:
                raise ConfigError(f"{d.train_path} row {i} has no column {col!r} (columns: {sorted(r)})")
        prompt, chosen, rejected = r.get(d.prompt_column), r[d.chosen_column], r[d.rejected_column]
        if isinstance(chosen, list):   # conversational (e.g. UltraFeedback): TRL extracts the shared prompt turns
            out.append({"chosen": chosen, "rejected": rejected})
        else:
            out.append({"prompt": render_prompt(tokenizer, prompt, d, f"row {i}"), "chosen": str(chosen),
                        "rejected": str(rejected)})
    return out


def run_dpo(cfg: DPORunConfig) -> dict:
    """Train, save ``<output_dir>/final_model``, write ``metrics.jsonl`` and ``summary.json``; return the summary."""
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from rlpost.models.loading import load_model, load_tokenizer

    t, p = cfg.trainer, cfg.dpo
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    out = Path(t.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_stage_config(cfg, out / "config.yaml")
    metrics_path = out / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    torch.manual_seed(t.seed)

    path = _model_path(cfg.model)
    tokenizer = load_tokenizer(path, cfg.model)
    model = load_model(path, cfg.model, "cpu")
    train_ds = Dataset.from_list(preference_rows(cfg, tokenizer))
    held_out = heldout_rows(cfg.data, t.seed)

    def score():
        return heldout_score(model, tokenizer, cfg.data, held_out, t.eval_max_new_tokens)

    common = _trl_common_args(t, p.learning_rate, p.warmup_ratio, p.lr_scheduler_type)
    args = DPOConfig(**common, beta=p.beta, loss_type=list(p.loss_type), label_smoothing=p.label_smoothing,
                     precompute_ref_log_probs=p.precompute_ref_log_probs, dataset_num_proc=None)
    start = time.perf_counter()
    initial = score()
    if initial is not None:
        metrics_path.write_text(json.dumps({"step": 0, "eval/heldout_score": initial}) + "\n")
    trainer = DPOTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer,
                         callbacks=[jsonl_callback(metrics_path, score if held_out else None, t.eval_steps)])
    result, final, step, final_dir = train_score_save(trainer, score, metrics_path, out)
    summary = _summary(metrics_path, final_dir, step, time.perf_counter() - start,
                       {"heldout_score_initial": initial, "heldout_score": final, "beta": p.beta,
                        "learning_rate": p.learning_rate, "train_loss": result.training_loss})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_metrics(metrics_path, out / "curves.png", ("loss", "rewards/margins", "rewards/accuracies", "eval/heldout_score"))
    return summary
