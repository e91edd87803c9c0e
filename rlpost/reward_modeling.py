"""Learned reward models: preference pairs from the synthetic tasks, and RM training on TRL's RewardTrainer.

    pairs = make_preference_pairs("arithmetic", kind="correct", n=512, tokenizer=tok)
    train_reward_model("tiny:qwen2:arithmetic", pairs, "reward_models/out/rm_correct", max_steps=200)

Pairs are ``{"prompt", "chosen", "rejected"}`` rows in TRL's *standard, explicit-prompt* preference
format. ``prompt`` is the text the policy sees (the chat template already applied, exactly as
``rlpost.data.build_prompts`` renders it), so a reward model trained here scores
``prompt + completion + eos`` at RL time the same way RewardTrainer saw it in training.

Kinds (``PREFERENCE_KINDS``):
  correct  chosen = the gold answer, rejected = a near miss (one digit changed, or off by a small amount)
  length   chosen = the longer of two digit strings grown from the gold answer (a pure verbosity proxy)
  digit    chosen = the completion with more copies of ``digit`` (default "7"): a surface-pattern proxy
  last_digit  chosen = the gold answer, rejected = the answer with only its last digit changed
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

log = logging.getLogger(__name__)

PREFERENCE_KINDS = ("correct", "length", "digit", "last_digit")


# ---------------------------------------------------------------------------------------------- pairs

def _near_miss(answer: str, rng: random.Random) -> str:
    """A wrong answer close to ``answer``: one digit changed, or ±1..±10 for integers."""
    text = str(answer).strip()
    if text.lstrip("-").isdigit() and rng.random() < 0.5:
        value = int(text) + rng.choice([-1, 1]) * rng.randint(1, 10)
        return str(value)
    digits = [i for i, ch in enumerate(text) if ch.isdigit()]
    if not digits:
        return text + "0"
    i = rng.choice(digits)
    new = rng.choice([d for d in "0123456789" if d != text[i]])
    return text[:i] + new + text[i + 1:]


def _change_last_digit(answer: str, rng: random.Random) -> str:
    text = str(answer).strip()
    digits = [i for i, ch in enumerate(text) if ch.isdigit()]
    if not digits:
        return text + "0"
    i = digits[-1]
    return text[:i] + rng.choice([d for d in "0123456789" if d != text[i]]) + text[i + 1:]


def _random_digits(rng: random.Random, k: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(k))


def make_pair(kind: str, answer: str, rng: random.Random, max_extra: int = 5, digit: str = "7") -> tuple[str, str]:
    """(chosen, rejected) completions for one gold ``answer``."""
    answer = str(answer).strip()
    if kind == "correct":
        return answer, _near_miss(answer, rng)
    if kind == "last_digit":
        return answer, _change_last_digit(answer, rng)
    if kind == "length":
        # two lengths around the gold one; the longer string is preferred whatever its content
        k_short, k_long = sorted(rng.sample(range(-(len(answer) - 1), max_extra + 1), 2))
        grow = lambda k: answer[:len(answer) + k] if k <= 0 else answer + _random_digits(rng, k)  # noqa: E731
        return grow(k_long), grow(k_short)
    if kind == "digit":
        # same length; the one with more copies of `digit` is preferred
        n = len(answer) + rng.randint(0, 2)
        few, many = sorted(rng.sample(range(0, n + 1), 2))
        make = lambda c: "".join(rng.sample([digit] * c + [rng.choice([d for d in "0123456789" if d != digit])  # noqa: E731
                                                         for _ in range(n - c)], n))
        return make(many), make(few)
    raise ValueError(f"unknown preference kind {kind!r} (known: {', '.join(PREFERENCE_KINDS)})")


def make_preference_pairs(task: str = "arithmetic", kind: str = "correct", n: int = 512, seed: int = 0,
                          split: str = "train", tokenizer=None, chat_template: bool = True,
                          task_kwargs: dict | None = None, **pair_kwargs) -> list[dict]:
    """``n`` preference rows ``{prompt, chosen, rejected, answer}`` from a synthetic task's ``split``.

    ``tokenizer`` (default: the tiny char tokenizer) renders the prompt with its chat template, so the
    prompt text equals what the RL trainer passes to reward functions.
    """
    from rlpost.data import format_prompt
    from rlpost.tasks import TASKS

    if kind not in PREFERENCE_KINDS:
        raise ValueError(f"unknown preference kind {kind!r} (known: {', '.join(PREFERENCE_KINDS)})")
    if tokenizer is None:
        from rlpost.models.tokenizer import build_char_tokenizer
        tokenizer = build_char_tokenizer()
    rows = TASKS.get(task)(split, n, seed=seed, **(task_kwargs or {}))
    rng = random.Random(f"pairs-{task}-{kind}-{split}-{seed}")
    out = []
    for i, row in enumerate(rows):
        text, _ = format_prompt(tokenizer, row["prompt"], None, chat_template, f"{task} row {i}")
        chosen, rejected = make_pair(kind, row["answer"], rng, **pair_kwargs)
        while rejected == chosen:
            chosen, rejected = make_pair(kind, row["answer"], rng, **pair_kwargs)
        out.append({"prompt": text, "chosen": chosen, "rejected": rejected, "answer": str(row["answer"])})
    return out


def policy_preference_pairs(model: str, task: str = "arithmetic", n: int = 512, samples: int = 4, seed: int = 0,
                            split: str = "train", temperature: float = 1.0, max_tokens: int = 8,
                            task_kwargs: dict | None = None) -> list[dict]:
    """Pairs from a model's own samples, labelled by the task's checker (as human raters would label):
    chosen = the gold answer, rejected = one of the model's wrong samples for that prompt (prompts where every
    sample was right are skipped). ``model``: folder, hub id or ``tiny:...``. Up to ``n`` rows."""
    from rlpost.config import ModelConfig
    from rlpost.data import build_prompts
    from rlpost.engines.base import SamplingParams
    from rlpost.engines.hf import HFEngine
    from rlpost.models.loading import load_model, load_tokenizer, resolve_model_path
    from rlpost.tasks import TASK_CHECKERS
    from rlpost.tasks import TASKS
    from rlpost.workflows.single_turn import SingleTurnWorkflow

    mc = ModelConfig(name_or_path=model)
    path = resolve_model_path(mc)
    tok, lm = load_tokenizer(path, mc), load_model(path, mc, "cpu", frozen=True)
    rows = TASKS.get(task)(split, n, seed=seed, **(task_kwargs or {}))
    check = TASK_CHECKERS[task]
    prompts = build_prompts(rows, tok)
    workflow = SingleTurnWorkflow(HFEngine(lm, tok), tok)
    rng = random.Random(f"policy-pairs-{task}-{split}-{seed}")
    out = []
    for start in range(0, len(prompts), 64):
        trajs = workflow.rollout(prompts[start:start + 64], SamplingParams(
            n=samples, temperature=temperature, max_tokens=max_tokens, seed=seed * 100_003 + start))
        by_prompt: dict[int, list] = {}
        for t in trajs:
            by_prompt.setdefault(t.prompt.id, []).append(t)
        for pid, group in by_prompt.items():
            row = rows[pid]
            wrong = sorted({t.final_text for t in group if not check(t.final_text, row) and t.final_text.strip()})
            if wrong:
                out.append({"prompt": group[0].prompt.text, "chosen": str(row["answer"]),
                            "rejected": rng.choice(wrong), "answer": str(row["answer"])})
    return out


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- training

def train_reward_model(model: str, pairs: list[dict] | str, output_dir: str | Path, *, max_steps: int = 200,
                       learning_rate: float = 1e-4, batch_size: int = 16, seed: int = 0, max_length: int | None = 256,
                       center_rewards_coefficient: float | None = 0.01, eval_pairs: list[dict] | None = None,
                       logging_steps: int = 10, device: str = "cpu", report_to: list | None = None,
                       num_threads: int | None = None) -> dict:
    """Fit a scalar reward head on any causal-LM checkpoint with TRL's ``RewardTrainer``; ``save_pretrained``.

    ``model``: a folder, hub id or ``tiny:...`` reference; it is loaded with
    ``AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)`` (a fresh ``score`` head on
    the LM's body). ``pairs``: rows or a JSONL path. Returns ``{"path", "train_accuracy", "eval_accuracy",
    "log_history"}``, the accuracies being the share of pairs whose chosen score beats the rejected one.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from rlpost.models.loading import resolve_model_path

    class _Ref:  # resolve_model_path reads .name_or_path
        name_or_path = model

    if num_threads:
        torch.set_num_threads(num_threads)
    path = resolve_model_path(_Ref)
    rows = read_jsonl(pairs) if isinstance(pairs, (str, Path)) else list(pairs)
    keep = ("prompt", "chosen", "rejected")
    train_ds = Dataset.from_list([{k: r[k] for k in keep} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(seed)
    rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    rm.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(
        output_dir=str(output_dir), max_steps=max_steps, learning_rate=learning_rate,
        per_device_train_batch_size=batch_size, logging_steps=logging_steps, save_strategy="no",
        report_to=report_to or [], use_cpu=device == "cpu", bf16=False, gradient_checkpointing=False,
        seed=seed, max_length=max_length, center_rewards_coefficient=center_rewards_coefficient,
        disable_tqdm=True, dataloader_num_workers=0, lr_scheduler_type="linear", warmup_steps=0,
    )
    trainer = RewardTrainer(model=rm, args=args, train_dataset=train_ds, processing_class=tokenizer)
    trainer.train()
    output_dir = Path(output_dir)
    trainer.model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    trained = trainer.model.eval()
    result = {"path": str(output_dir), "log_history": trainer.state.log_history,
              "train_accuracy": pair_accuracy(trained, tokenizer, rows)}
    if eval_pairs:
        result["eval_accuracy"] = pair_accuracy(trained, tokenizer, eval_pairs)
    (output_dir / "rlpost_rm.json").write_text(json.dumps(
        {"base_model": model, "num_pairs": len(rows), "max_steps": max_steps, "learning_rate": learning_rate,
         "train_accuracy": result["train_accuracy"], "eval_accuracy": result.get("eval_accuracy")}, indent=2))
    return result


def pair_accuracy(model, tokenizer, pairs: list[dict], batch_size: int = 64) -> float:
    """Share of pairs where score(prompt + chosen) > score(prompt + rejected)."""
    from rlpost.rewards.reward_model import score_texts

    chosen = score_texts(model, tokenizer, [p["prompt"] for p in pairs], [p["chosen"] for p in pairs], batch_size)
    rejected = score_texts(model, tokenizer, [p["prompt"] for p in pairs], [p["rejected"] for p in pairs], batch_size)
    return sum(c > r for c, r in zip(chosen, rejected)) / max(len(pairs), 1)
