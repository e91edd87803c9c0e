"""``rlpost sft``: supervised fine-tuning on TRL's SFTTrainer, with the implicit-reward view of SFT.

    rlpost sft recipes/implicit_sft/tiny_sft.yaml
    rlpost sft recipes/implicit_sft/tiny_sft.yaml sft.loss.name=f_pearson sft.lr.lr_scale=0.25

TRL's ``SFTTrainer`` does the data preparation (prompt-completion format, completion-only labels,
EOS), batching, optimiser, schedule and checkpoints. :class:`ImplicitRewardSFTTrainer` overrides
``compute_loss`` only, to call any entry of :data:`rlpost.algos.sft_losses.SFT_LOSSES` (``nll`` by
default; the f-divergence objectives are RECONSTRUCTIONS, see docs/algos/implicit_sft.md) and to log,
against a frozen copy of the initial model (π_ref):

    sft/implicit_reward   mean over sequences of β Σ_t (log π − log π_ref)
    sft/kl_to_initial     token-mean exact KL(π ‖ π_ref) over the completion tokens
    sft/nll, sft/log_ratio, and the f-divergence diagnostics (sft/u_mean, sft/phi_weight_mean, ...)

The learning-rate reduction recipe (remedy 1 of Wang et al. 2025) is ``sft.lr``: peak rate
``base_lr * lr_scale`` with the same warmup and decay (:class:`~rlpost.algos.sft_losses.LRReductionParams`).
With ``data.task`` set, the held-out score (greedy accuracy on the task's test split) is logged at
the start, every ``trainer.eval_steps`` steps and at the end. Every log line goes to ``metrics.jsonl``.

The config is its own small dataclass tree (:class:`SFTRunConfig`), loaded like ``rlpost train``
configs (YAML + dotted ``key=value`` overrides, unknown keys fail with the closest known key).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rlpost.config import (Component, ConfigError, ModelConfig, component, from_dict, parse_override,
                           read_yaml_sections, set_dotted)
from rlpost.tracking import plot_metrics

log = logging.getLogger("rlpost")


# --------------------------------------------------------------------------------------------- config

@dataclass
class StageDataConfig:
    task: str | None = "arithmetic"           # synthetic task (rlpost.tasks) or None to use train_path
    task_kwargs: dict = field(default_factory=dict)
    train_path: str | None = None             # local jsonl/json/parquet/csv, folder, or hub dataset id
    train_split: str = "train"
    num_train: int = 2000                     # rows drawn from the task's train split (or the first N of train_path; -1 all)
    num_eval: int = 128                       # held-out task rows for the greedy-accuracy score (0: none)
    prompt_column: str = "prompt"             # text or chat messages
    completion_column: str = "answer"         # sft: the demonstration (ignored by dpo)
    messages_column: str | None = None        # sft on conversations (e.g. UltraChat "messages"): train on the last turn
    chat_template_path: str | None = None     # sft: tokenizer or .jinja whose chat template TRL applies (base models)
    chosen_column: str = "chosen"             # dpo
    rejected_column: str = "rejected"         # dpo
    preference_kind: str = "correct"          # dpo on a task: pairs from rlpost.reward_modeling (correct | last_digit ...)
    system_prompt: str | None = None
    chat_template: bool = True                # render prompts with the tokenizer's chat template


@dataclass
class StageTrainerConfig:
    output_dir: str = "runs/sft"
    max_steps: int = -1                       # optimizer steps; -1: num_train_epochs
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int | None = 1024             # tokens per sequence (prompt + completion)
    logging_steps: int = 10
    eval_steps: int = 0                       # held-out score every N steps (0: start and end only)
    eval_max_new_tokens: int = 8              # greedy decoding budget of the held-out score
    save_steps: int = 0                       # TRL checkpoints every N steps (0: only the final model)
    seed: int = 0
    device: str = "auto"                      # auto | cpu | cuda
    report_to: list = field(default_factory=list)  # TRL/transformers integrations: tensorboard, wandb, ...
    num_threads: int | None = None            # torch intra-op threads
    bf16: bool = False                        # mixed precision (GPU)
    optim: str = "adamw_torch"                # any transformers optimizer name


@dataclass
class SFTSection:
    loss: Component = "nll"                   # SFT_LOSSES: nll | f_pearson | f_hellinger | f_js | f_kl | f_tv (+ its params)
    lr: dict = field(default_factory=dict)    # LRReductionParams: base_lr, lr_scale, warmup_ratio, schedule
    log_reference: bool = True                # forward the frozen initial model: implicit reward + KL to it


@dataclass
class SFTRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: StageDataConfig = field(default_factory=StageDataConfig)
    sft: SFTSection = field(default_factory=SFTSection)
    trainer: StageTrainerConfig = field(default_factory=StageTrainerConfig)


def load_stage_config(cls, path: str | Path | None = None, overrides: list[str] | None = None):
    """YAML file (optional) + ``key=value`` overrides -> dataclass ``cls`` (same rules as rlpost train)."""
    raw = read_yaml_sections(path)
    for item in overrides or []:
        key, text = item.split("=", 1) if "=" in item else (item, None)
        if text is None:
            parse_override(item)  # raises the standard message
        key = key.strip().lstrip("-")
        set_dotted(raw, key, yaml.safe_load(text) if text.strip() else "")
    cfg = from_dict(cls, raw, "")
    validate_stage(cfg)
    return cfg


def validate_stage(cfg) -> None:
    t, d = cfg.trainer, cfg.data
    if d.task is None and d.train_path is None:
        raise ConfigError("set data.task (a synthetic task) or data.train_path (your data)")
    if t.max_steps == 0 or (t.max_steps < 0 and t.num_train_epochs <= 0):
        raise ConfigError("trainer.max_steps must be > 0 (or -1 with trainer.num_train_epochs > 0)")
    if t.per_device_train_batch_size < 1 or t.gradient_accumulation_steps < 1:
        raise ConfigError("trainer.per_device_train_batch_size and trainer.gradient_accumulation_steps must be >= 1")
    if isinstance(cfg, SFTRunConfig):
        from rlpost.algos.sft_losses import SFT_LOSSES
        name, params = component(cfg.sft.loss)
        if name not in SFT_LOSSES:
            raise ConfigError(f"sft.loss: {SFT_LOSSES.unknown_message(name)}")
        sft_loss_params(cfg)
        lr_params(cfg)


def _floats(params_cls, node: dict) -> dict:
    """YAML reads 1e-5 as a string: convert the values of float-typed fields of ``params_cls``."""
    import typing
    hints = typing.get_type_hints(params_cls) if params_cls else {}
    out = dict(node)
    for key, value in node.items():
        if hints.get(key) is float and isinstance(value, (str, int)) and not isinstance(value, bool):
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def sft_loss_params(cfg: SFTRunConfig):
    from rlpost.algos.core import build_params
    from rlpost.algos.sft_losses import SFT_LOSSES
    name, overrides = component(cfg.sft.loss)
    try:
        cls = SFT_LOSSES.entry(name).params
        return name, build_params(cls, None, _floats(cls, overrides), where=f"sft.loss ({name})")
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None


def lr_params(cfg: SFTRunConfig):
    from rlpost.algos.sft_losses import LRReductionParams
    try:
        return LRReductionParams(**_floats(LRReductionParams, cfg.sft.lr))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"sft.lr: {err}") from None


def resolve_stage(cfg) -> dict:
    """An sft/dpo config as a plain mapping with its loss and LR recipe expanded (``rlpost validate``), checked
    like a run config: the task's name, the sequence length against a known model's context window."""
    from rlpost.checks import check_context, expanded, registry_entry
    out = dataclasses.asdict(cfg)
    if cfg.data.task is not None and cfg.data.train_path is None:
        from rlpost.tasks import TASKS
        registry_entry(TASKS, cfg.data.task, "data.task")
    if cfg.trainer.max_length:
        check_context(cfg.model, cfg.trainer.max_length, "trainer.max_length")
    if isinstance(cfg, SFTRunConfig):
        out["sft"]["loss"] = expanded(*sft_loss_params(cfg))
        out["sft"]["lr"] = dataclasses.asdict(lr_params(cfg))
    return out


def save_stage_config(cfg, path: Path) -> None:
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


# --------------------------------------------------------------------------------------------- data

def _model_path(model_cfg: ModelConfig) -> str:
    from rlpost.models.loading import resolve_model_path
    return resolve_model_path(model_cfg)


def render_prompt(tokenizer, prompt, d: StageDataConfig, where: str) -> str:
    from rlpost.data import format_prompt
    return format_prompt(tokenizer, prompt, d.system_prompt, d.chat_template, where)[0]


def source_rows(d: StageDataConfig, split: str, n: int, seed: int) -> list[dict]:
    from rlpost.data import task_or_file_rows
    rows = task_or_file_rows(d.task, d.task_kwargs, d.train_path, split, n, seed)
    return rows[:n] if n > 0 else rows


def sft_rows(cfg: SFTRunConfig, tokenizer) -> list[dict]:
    """Prompt-completion rows (TRL standard format) with the chat template applied to the prompt."""
    d = cfg.data
    rows = source_rows(d, d.train_split if d.train_path else "train", d.num_train, cfg.trainer.seed)
    out = []
    if d.messages_column:   # conversational prompt-completion: TRL applies the chat template
        for i, r in enumerate(rows):
            msgs = r.get(d.messages_column)
            if not isinstance(msgs, list) or len(msgs) < 2 or msgs[-1].get("role") != "assistant":
                raise ConfigError(f"row {i}: data.messages_column {d.messages_column!r} must hold chat messages "
                                  "ending with an assistant turn")
            prompt = ([{"role": "system", "content": d.system_prompt}] if d.system_prompt else []) + list(msgs[:-1])
            out.append({"prompt": prompt, "completion": [msgs[-1]]})
        return out
    for i, r in enumerate(rows):
        for col in (d.prompt_column, d.completion_column):
            if col not in r:
                raise ConfigError(f"data row {i} has no column {col!r} (columns: {sorted(r)}); "
                                  "set data.prompt_column / data.completion_column")
        out.append({"prompt": render_prompt(tokenizer, r[d.prompt_column], d, f"row {i}"),
                    "completion": str(r[d.completion_column])})
    return out


def heldout_rows(d: StageDataConfig, seed: int) -> list[dict]:
    if d.task is None or d.num_eval <= 0:
        return []
    from rlpost.tasks import TASKS
    return TASKS.get(d.task)("test", d.num_eval, seed=seed, **d.task_kwargs)


def heldout_score(model, tokenizer, d: StageDataConfig, rows: list[dict], max_new_tokens: int = 8) -> float | None:
    """Greedy accuracy on held-out task rows (the task's checker), or None without a task."""
    if not rows:
        return None
    import torch

    from rlpost.tasks import TASK_CHECKERS
    check = TASK_CHECKERS[d.task]
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    try:
        texts = [render_prompt(tokenizer, r[d.prompt_column], d, f"held-out row {i}") for i, r in enumerate(rows)]
        correct = 0
        with torch.no_grad():
            for start in range(0, len(texts), 64):
                enc = tokenizer(texts[start:start + 64], return_tensors="pt", padding=True, add_special_tokens=False)
                enc = {k: v.to(model.device) for k, v in enc.items()}
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                completions = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                correct += sum(check(c, r) for c, r in zip(completions, rows[start:start + 64]))
        return correct / len(rows)
    finally:
        model.train(was_training)
        tokenizer.padding_side = side


# --------------------------------------------------------------------------------------------- TRL glue

def jsonl_callback(path: Path, score_fn=None, eval_steps: int = 0):
    """A TrainerCallback that appends every log to ``path`` and logs ``eval/heldout_score`` when due."""
    from transformers import TrainerCallback

    class _CB(TrainerCallback):
        def __init__(self):
            self.f = path.open("a")

        def _write(self, row):
            self.f.write(json.dumps(row) + "\n")
            self.f.flush()

        def on_log(self, args, state, control, logs=None, **kw):
            row = {"step": state.global_step}
            row.update({k: v for k, v in (logs or {}).items() if isinstance(v, (int, float, str)) or v is None})
            self._write(row)

        def on_step_end(self, args, state, control, **kw):
            if score_fn is not None and eval_steps > 0 and state.global_step % eval_steps == 0 \
                    and state.global_step < state.max_steps:
                self._write({"step": state.global_step, "eval/heldout_score": score_fn()})

        def on_train_end(self, args, state, control, **kw):
            self.f.close()

    return _CB()


def _trl_common_args(t: StageTrainerConfig, learning_rate: float, warmup_ratio: float, scheduler: str) -> dict:
    import torch
    use_cpu = t.device == "cpu" or (t.device == "auto" and not torch.cuda.is_available())
    sched = {"constant": "constant_with_warmup"}.get(scheduler, scheduler)
    return dict(output_dir=t.output_dir, max_steps=t.max_steps, num_train_epochs=t.num_train_epochs,
                per_device_train_batch_size=t.per_device_train_batch_size,
                gradient_accumulation_steps=t.gradient_accumulation_steps, learning_rate=learning_rate,
                lr_scheduler_type=sched, warmup_steps=warmup_ratio, weight_decay=t.weight_decay,
                max_grad_norm=t.max_grad_norm, logging_steps=t.logging_steps, seed=t.seed,
                save_strategy="steps" if t.save_steps > 0 else "no", save_steps=t.save_steps or 500,
                report_to=[r for r in t.report_to if r != "none"], use_cpu=use_cpu, bf16=t.bf16,
                gradient_checkpointing=False, disable_tqdm=True, dataloader_num_workers=0,
                max_length=t.max_length, optim=t.optim)


def _trainer_class():
    import torch
    from trl import SFTTrainer

    from rlpost.algos.sft_losses import SFT_LOSSES, kl_to_initial

    class ImplicitRewardSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss is any ``SFT_LOSSES`` entry; logs the implicit reward and KL to π_ref."""
        loss_is_scaled_for_ga = False   # compute_loss returns a micro-batch mean; Trainer divides by GA steps

        def __init__(self, *args, sft_loss: str = "nll", sft_loss_params=None, ref_model=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.sft_loss_name = sft_loss
            self.sft_loss_fn = SFT_LOSSES.get(sft_loss)
            self.sft_loss_params = sft_loss_params
            self.ref_model = ref_model
            if ref_model is not None:
                size = self.model.get_input_embeddings().weight.shape[0]
                if ref_model.get_input_embeddings().weight.shape[0] != size:   # chat_template_path added tokens
                    ref_model.resize_token_embeddings(size)
                self.ref_model = ref_model.to(self.accelerator.device).eval().requires_grad_(False)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            labels = inputs["labels"]
            fwd = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
            outputs = model(**fwd, use_cache=False)
            target = labels[:, 1:]                                # position t predicts token t+1
            mask = (target != -100).float()
            sel = mask > 0
            # only the trained positions go through the log-softmax: [N, V], not [B, T, V]
            logp_all = torch.log_softmax(outputs.logits[:, :-1][sel].float(), dim=-1)          # [N, V]
            logp = torch.zeros(mask.shape, dtype=logp_all.dtype, device=logp_all.device)
            logp = logp.masked_scatter(sel, logp_all.gather(-1, target[sel][:, None]).squeeze(-1))  # [B, T]
            ref_lp = None
            if self.ref_model is not None:
                with torch.no_grad():
                    ref_all = torch.log_softmax(self.ref_model(**fwd, use_cache=False).logits[:, :-1][sel].float(), -1)
                    ref_lp = torch.zeros_like(logp).masked_scatter(sel, ref_all.gather(-1, target[sel][:, None]).squeeze(-1))
            loss, metrics = self.sft_loss_fn(logp, None, mask, self.sft_loss_params, ref_logprobs=ref_lp)
            if ref_lp is not None:   # exact per-token KL(π ‖ π_ref) over the vocabulary, token mean
                metrics["sft/kl_to_initial"] = kl_to_initial(logp_all.detach()[None], ref_all[None],
                                                             torch.ones(1, logp_all.shape[0], device=logp.device))[0].item()
            for key, value in metrics.items():
                self._metrics[mode][key].append(float(value))
            if mode == "train":
                self._total_train_tokens += int(inputs["attention_mask"].sum().item()) if "attention_mask" in inputs else 0
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, outputs) if return_outputs else loss

    return ImplicitRewardSFTTrainer


# --------------------------------------------------------------------------------------------- run

def run_sft(cfg: SFTRunConfig) -> dict:
    """Train, save ``<output_dir>/final_model``, write ``metrics.jsonl`` and ``summary.json``; return the summary."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig

    from rlpost.models.loading import load_model, load_tokenizer

    t = cfg.trainer
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    out = Path(t.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_stage_config(cfg, out / "config.yaml")
    (out / "metrics.jsonl").unlink(missing_ok=True)
    torch.manual_seed(t.seed)

    path = _model_path(cfg.model)
    tokenizer = load_tokenizer(path, cfg.model)
    model = load_model(path, cfg.model, "cpu")           # the Trainer moves it to its device
    ref_model = load_model(path, cfg.model, "cpu", frozen=True) \
        if cfg.sft.log_reference or component(cfg.sft.loss)[0] != "nll" else None
    loss_name, loss_params = sft_loss_params(cfg)
    lr = lr_params(cfg)
    train_ds = Dataset.from_list(sft_rows(cfg, tokenizer))
    held_out = heldout_rows(cfg.data, t.seed)

    def score():
        return heldout_score(model, tokenizer, cfg.data, held_out, t.eval_max_new_tokens)

    args = SFTConfig(**_trl_common_args(t, lr.base_lr * lr.lr_scale, lr.warmup_ratio, lr.schedule),
                     completion_only_loss=True, packing=False, dataset_num_proc=None,
                     chat_template_path=cfg.data.chat_template_path)
    start = time.perf_counter()
    initial = score()
    metrics_path = out / "metrics.jsonl"
    if initial is not None:
        metrics_path.write_text(json.dumps({"step": 0, "eval/heldout_score": initial}) + "\n")
    trainer = _trainer_class()(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer,
                               callbacks=[jsonl_callback(metrics_path, score if held_out else None, t.eval_steps)],
                               sft_loss=loss_name, sft_loss_params=loss_params, ref_model=ref_model)
    result, final, step, final_dir = train_score_save(trainer, score, metrics_path, out)
    summary = _summary(metrics_path, final_dir, step, time.perf_counter() - start,
                       {"heldout_score_initial": initial, "heldout_score": final, "sft_loss": loss_name,
                        "learning_rate": lr.base_lr * lr.lr_scale, "train_loss": result.training_loss})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_metrics(metrics_path, out / "curves.png", ("loss", "sft/implicit_reward", "sft/kl_to_initial", "eval/heldout_score"))
    return summary


def train_score_save(trainer, score, metrics_path: Path, out: Path):
    """Run a TRL trainer, append the final held-out score to metrics.jsonl, save model + tokenizer (the tokenizer
    carries a chat template set by chat_template_path). Returns (train result, final score, steps, final_dir)."""
    result = trainer.train()
    final = score()
    step = trainer.state.global_step
    if final is not None:
        with metrics_path.open("a") as f:
            f.write(json.dumps({"step": step, "eval/heldout_score": final}) + "\n")
    final_dir = out / "final_model"
    trainer.model.save_pretrained(final_dir)
    trainer.processing_class.save_pretrained(final_dir)
    return result, final, step, final_dir


def _summary(metrics_path: Path, final_dir: Path, steps: int, seconds: float, extra: dict) -> dict:
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train_logs = [r for r in rows if "loss" in r]
    last = train_logs[-1] if train_logs else {}
    return {"final_model": str(final_dir), "metrics": str(metrics_path), "steps": steps, "seconds": seconds,
            "first_loss": train_logs[0]["loss"] if train_logs else None, "last_loss": last.get("loss"),
            "last": last, **extra}

