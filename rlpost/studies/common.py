"""Helpers shared by the study miniatures: tiny from-scratch models, a lean SFT loop on CPU and RL runs.

The SFT loop trains on (prompt, completion) text pairs, loss on the completion tokens and the EOS
only (the prompt is context), with length-bucketed batches so little compute goes to padding.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

import torch

log = logging.getLogger("rlpost")


STD_NOTE = "std: the sample standard deviation over seeds (ddof 1), as in every rlpost results table."


def mean_std(values) -> dict:
    """{"mean", "std"} of a list of numbers, std the sample std (ddof 1; 0 for one value):
    s = sqrt(sum (x - mean)^2 / (n - 1))."""
    vals = [float(v) for v in values]
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": m, "std": sd}


def scratch_model(arch: str = "llama", hidden_size: int = 128, num_layers: int = 2, num_heads: int = 4,
                  num_kv_heads: int = 2, intermediate_size: int = 512, max_position_embeddings: int = 2048,
                  seed: int = 0, tokenizer=None):
    """A randomly initialised LLaMA/Qwen2 (head_dim = hidden/heads >= 32) and its tokenizer (default: the
    char tokenizer; pass one with added phrase tokens to shorten protocol-heavy text)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from rlpost.models.tokenizer import build_char_tokenizer
    if hidden_size // num_heads < 32:
        raise ValueError("head_dim = hidden_size / num_heads must be >= 32 (vLLM on CPU)")
    tok = tokenizer if tokenizer is not None else build_char_tokenizer()
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=num_layers,
                  num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, intermediate_size=intermediate_size,
                  max_position_embeddings=max_position_embeddings, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, bos_token_id=None, tie_word_embeddings=True)
    model = (LlamaForCausalLM(LlamaConfig(**common)) if arch == "llama" else Qwen2ForCausalLM(Qwen2Config(**common)))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def encode_pairs(tokenizer, pairs, max_len: int | None = None) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt ids, completion ids + EOS, loss mask) per pair; pairs longer than ``max_len`` are dropped.

    A completion is a string (all trained) or a list of ``(text, trained)`` segments, each tokenized on
    its own as a rollout workflow does (e.g. A²FM tool responses: ``trained=False``, no loss).
    """
    out = []
    for prompt, completion in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        segments = [(completion, True)] if isinstance(completion, str) else completion
        c, m = [], []
        for text, trained in segments:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            c += ids
            m += [int(bool(trained))] * len(ids)
        c, m = c + [tokenizer.eos_token_id], m + [1]
        if max_len is None or len(p) + len(c) <= max_len:
            out.append((p, c, m))
    return out


def _batches(examples, tokens_per_batch: int, rng: random.Random):
    """Length-bucketed batches of at most ``tokens_per_batch`` padded tokens, in random order."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]) + len(examples[i][1]) + rng.random())
    batches, cur, width = [], [], 0
    for i in order:
        n = len(examples[i][0]) + len(examples[i][1])
        if cur and max(width, n) * (len(cur) + 1) > tokens_per_batch:
            batches.append(cur)
            cur, width = [], 0
        cur.append(i)
        width = max(width, n)
    if cur:
        batches.append(cur)
    rng.shuffle(batches)
    return batches


def _tensors(examples, idx, pad_id):
    width = max(len(examples[i][0]) + len(examples[i][1]) for i in idx)
    ids = torch.full((len(idx), width), pad_id)
    labels = torch.full((len(idx), width), -100)
    attn = torch.zeros((len(idx), width), dtype=torch.long)
    for r, i in enumerate(idx):
        p, c, m = examples[i]
        ids[r, :len(p) + len(c)] = torch.tensor(p + c)
        attn[r, :len(p) + len(c)] = 1
        labels[r, len(p):len(p) + len(c)] = torch.tensor([t if k else -100 for t, k in zip(c, m)])
    return ids, attn, labels


def sft(model, tokenizer, pairs: list[tuple[str, str]], *, epochs: float = 1.0, tokens_per_batch: int = 8192,
        lr: float = 2e-3, warmup_steps: int = 20, min_lr_ratio: float = 0.1, seed: int = 0,
        max_len: int | None = None, time_budget_s: float | None = None, log_every: int = 25,
        metrics_path: str | Path | None = None, callback=None, callback_every: int = 0) -> dict:
    """Train on completions (cross-entropy, token mean); AdamW, linear warm-up then cosine decay.

    Stops after ``epochs`` passes over the pairs or once ``time_budget_s`` has elapsed; the cosine decay
    follows whichever of the two budgets is further along (so a time-bounded run still anneals). With
    ``callback_every`` > 0, ``callback(step) -> dict`` runs every that many steps (model in eval mode)
    and its values are logged.
    """
    rng = random.Random(seed)
    examples = encode_pairs(tokenizer, pairs, max_len)
    if not examples:
        raise ValueError("sft: no example fits max_len")
    per_epoch = _batches(examples, tokens_per_batch, rng)
    total = max(1, int(math.ceil(epochs * len(per_epoch))))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))

    clock = {"start": time.perf_counter()}

    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total - warmup_steps)
        if time_budget_s:  # decay by whichever budget binds first: steps or time
            progress = max(progress, (time.perf_counter() - clock["start"]) / time_budget_s)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    start, step, losses, queue = time.perf_counter(), 0, [], []
    clock["start"] = start
    sink = open(metrics_path, "a") if metrics_path else None
    try:
        while step < total:
            if not queue:
                queue = _batches(examples, tokens_per_batch, rng) if step else list(per_epoch)
            ids, attn, labels = _tensors(examples, queue.pop(), tokenizer.pad_token_id)
            loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            losses.append(loss.item())
            if step % log_every == 0 or step == total:
                row = {"sft_step": step, "loss": sum(losses[-log_every:]) / len(losses[-log_every:]),
                       "lr": sched.get_last_lr()[0], "elapsed_s": time.perf_counter() - start}
                log.info("sft step %d/%d loss %.4f (%.0fs)", step, total, row["loss"], row["elapsed_s"])
                if sink:
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
            if callback is not None and callback_every and step % callback_every == 0:
                model.eval()
                row = {"sft_step": step, **callback(step), "elapsed_s": time.perf_counter() - start}
                model.train()
                log.info("sft step %d: %s", step, row)
                if sink:
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
            if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
                log.info("sft: time budget reached after %d/%d steps", step, total)
                break
    finally:
        if sink:
            sink.close()
    model.eval()
    return {"sft_steps": step, "planned_steps": total, "examples": len(examples),
            "final_loss": sum(losses[-log_every:]) / max(1, len(losses[-log_every:])),
            "seconds": time.perf_counter() - start}


def save_model(model, tokenizer, out_dir: str | Path, info: dict | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if info is not None:
        (out_dir / "rlpost_study.json").write_text(json.dumps(info, indent=2))
    return out_dir


def run_trainer(cfg) -> None:
    """Train ``cfg`` to the end with a :class:`~rlpost.trainer.Trainer`, closing it after (once it has an engine)."""
    from rlpost.trainer import Trainer
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        trainer.train()
    finally:
        if hasattr(trainer, "engine"):
            trainer.close()


def train_rl(recipe: str | Path, sft_dir: str | Path, out_dir: str | Path, steps: int, seed: int = 0,
             overrides=()) -> Path:
    """RL with ``recipe`` from ``sft_dir`` (no progress bar, reports or checkpoints); returns the final model folder."""
    from rlpost.config import load_config
    extra = [f"model.name_or_path={sft_dir}", f"trainer.output_dir={out_dir}", f"trainer.max_steps={steps}",
             f"trainer.seed={seed}", "trainer.progress_bar=false", "trainer.report_to=[]", "trainer.save_steps=0"]
    run_trainer(load_config(recipe, extra + list(overrides)))
    return Path(out_dir) / "final_model"


def pretrain_stages(pretrain, out_dir: str | Path, *, stages: int, seed: int, **kwargs) -> Path:
    """``pretrain(out_dir, seed=seed, **kwargs)``, then ``stages - 1`` more stages on fresh traces (seed + 1000 *
    stage) at peak LR 2e-3, each continuing from the model the previous one saved to ``out_dir``."""
    out = pretrain(out_dir, seed=seed, **kwargs)
    for stage in range(1, stages):
        out = pretrain(out_dir, **{**kwargs, "seed": seed + 1000 * stage, "lr": 2e-3, "init_from": out_dir})
    return out


def warm_start(pretrain, runs_dir: str | Path, seed: int, *, reuse: bool, stages: int, shipped: str | None = None,
               **kwargs) -> tuple[Path, dict]:
    """The SFT model and the info its ``rlpost_study.json`` holds: the committed checkpoint ``shipped``
    (a folder of rlpost/models/tiny_checkpoints, used for seed 0 with the default settings when ``reuse``: an SFT of
    this length on another machine is another model), else ``runs_dir/sft-s<seed>`` (trained by
    :func:`pretrain_stages` unless ``reuse`` and it is there)."""
    from rlpost.models.tiny import SHIPPED_DIR
    if shipped and reuse and seed == 0 and (SHIPPED_DIR / shipped / "rlpost_study.json").exists():
        return SHIPPED_DIR / shipped, json.loads((SHIPPED_DIR / shipped / "rlpost_study.json").read_text())
    sft_dir = Path(runs_dir) / f"sft-s{seed}"
    if not (reuse and (sft_dir / "config.json").exists()):
        pretrain_stages(pretrain, sft_dir, stages=stages, seed=seed, **kwargs)
    return sft_dir, json.loads((sft_dir / "rlpost_study.json").read_text())


def activity_section(runs: dict, components, method: str | None = None) -> list[str]:
    """Markdown lines: whether each component acted in the training runs, and how much.

    runs: row label -> list of metrics-row lists (one per seed); components: rlpost.reproduce.Component. The first
    line states plainly which components of ``method`` (default: every row) never acted on any training step.
    """
    from rlpost.reproduce import activity

    def values(rows_list, metric):
        return [r[metric] for rows in rows_list for r in rows
                if r.get("step", 0) > 0 and isinstance(r.get(metric), (int, float))]

    table = ["| run | component | metric | acted on steps | mean | min..max |", "|---|---|---|---|---|---|"]
    fired: dict[str, int] = {}
    for label, rows_list in runs.items():
        for comp in components:
            a = activity(values(rows_list, comp.metric), comp)
            if not a["steps"]:
                continue
            if method is None or label == method:
                fired[comp.name] = fired.get(comp.name, 0) + a["fired"]
            table.append(f"| {label} | {comp.name} | `{comp.metric}` ({comp.what}) | {a['fired']}/{a['steps']} "
                         f"| {a['mean']:.3g} | {a['min']:.3g}..{a['max']:.3g} |")
    idle = [name for name, n in fired.items() if n == 0]
    missing = [c.name for c in components if c.name not in fired]
    head = (f"**Never acted: {', '.join(dict.fromkeys(idle + missing))}.** Rows that depend on them do not test them."
            if idle or missing else "Every component acted in its runs.")
    return ["## Activity", "", head, "", *table, ""]


def sft_budget_text(results: dict) -> str:
    """What the time-boxed warm start actually trained, per stage, from the runs' SFT record: e.g. "SFT time-boxed:
    stage 1 trained 7290 of 36300 planned steps in 1500 s, stage 2 5428 of 36760 in 1500 s"."""
    sft = next(iter(results["runs"].values()), {}).get("sft", {})
    stages = sft.get("stages") or [sft]
    parts = [f"{st.get('sft_steps', '?')} of {st.get('planned_steps', '?')} planned steps in {st.get('seconds', 0):.0f} s"
             for st in stages]
    if not parts:
        return "SFT: no record"
    cut = any(st.get("planned_steps") and st.get("sft_steps", 0) < st["planned_steps"] for st in stages)
    head = "SFT time-boxed" if cut else "SFT"
    return f"{head}: " + ", ".join(f"stage {i + 1} trained {p}" for i, p in enumerate(parts))
