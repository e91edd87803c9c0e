"""Prompts from ``datasets`` (local JSONL/JSON/Parquet/CSV, a folder, a hub id, or an in-memory list).

Rows become :class:`rlpost.types.Prompt`: the prompt column (text, or a list of chat messages) is
formatted with the tokenizer's chat template; every other column is kept for the reward functions.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from rlpost.config import ConfigError
from rlpost.types import Prompt

log = logging.getLogger("rlpost")

_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class DataError(ValueError):
    """A dataset problem, naming the file, column or row."""


def load_rows(source: str | list[dict], split: str = "train") -> list[dict]:
    """Rows as dicts from a local file/folder, a hub id (cached or online), or a list of dicts."""
    if isinstance(source, list):
        return [dict(r) for r in source]
    import datasets

    path = Path(source)
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{source}: the file is empty (no rows)")
    if path.is_file() and path.suffix.lower() == ".jsonl":
        return read_jsonl_rows(path)
    if not path.exists() and (str(source).startswith(("/", "./", "../", "~")) or path.suffix.lower() in _FORMATS):
        # a file name (data/dailydialog/train.jsonl), not a hub id: say so instead of asking a hub for it
        raise DataError(f"{source}: no such file or folder (the recipe's README says how to make it)")
    try:
        if path.is_file():
            fmt = _FORMATS.get(path.suffix.lower())
            if fmt is None:
                raise DataError(f"{source}: unsupported file type {path.suffix!r} (use .jsonl, .json, .parquet or .csv)")
            ds = datasets.load_dataset(fmt, data_files=str(path), split="train")
        elif path.is_dir():
            ds = datasets.load_dataset(str(path), split=split)
        else:
            ds = datasets.load_dataset(source, split=split)
    except DataError:
        raise
    except Exception as err:  # datasets raises many types; keep the cause, name the source
        raise DataError(f"could not load dataset {source!r} (split {split!r}): {err}") from err
    return [dict(r) for r in ds]


def read_jsonl_rows(path: Path) -> list[dict]:
    """One JSON object per line (blank lines skipped); a bad line is a DataError naming the file and line number."""
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {number}: not valid JSON ({err.msg}, column {err.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {number}: expected a JSON object per line, got {type(row).__name__}")
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows (only blank lines)")
    return rows


def format_prompt(tokenizer, prompt: Any, system_prompt: str | None, chat_template: bool, where: str,
                  few_shot: list | None = None) -> tuple[str, list | None]:
    """Prompt column value -> (text for the engine, chat messages or None).

    Messages: [system_prompt] + few_shot turns + the prompt (a string becomes one user turn). GAIN-RL's code
    puts a system prompt and one worked example before every question (the shared prefix its C_inter needs).
    """
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        messages = list(prompt)
    else:
        raise DataError(f"{where}: the prompt must be a string or a list of {{role, content}} messages, got {prompt!r:.80}")
    if few_shot:
        head = messages[:1] if messages[0]["role"] == "system" else []
        messages = head + [dict(m) for m in few_shot] + messages[len(head):]
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}] + messages
    if chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, messages
    if few_shot:
        raise DataError(f"{where}: data.few_shot needs a tokenizer with a chat template (set data.chat_template=true)")
    if not isinstance(prompt, str):
        raise DataError(f"{where}: chat messages need a tokenizer with a chat template (set data.chat_template=true)")
    return (system_prompt + "\n" if system_prompt else "") + prompt, None


def build_prompts(rows: list[dict], tokenizer, *, prompt_column: str = "prompt", answer_column: str | None = "answer",
                  system_prompt: str | None = None, chat_template: bool = True, source: str = "dataset",
                  few_shot: list | None = None) -> list[Prompt]:
    """Validate columns and format every row. Empty data or a missing column is a :class:`DataError`."""
    if not rows:
        raise DataError(f"{source}: the dataset is empty")
    needed = [c for c in (prompt_column, answer_column) if c]
    for i, row in enumerate(rows):
        missing = [c for c in needed if c not in row]
        if missing:
            key = "data.prompt_column" if prompt_column in missing else "data.answer_column"
            raise DataError(f"{source}, row {i}: missing column {missing[0]!r} (set {key}); "
                            f"the row has columns {sorted(row)}")
    prompts = []
    for i, row in enumerate(rows):
        text, messages = format_prompt(tokenizer, row[prompt_column], system_prompt, chat_template, f"{source}, row {i}",
                                       few_shot)
        columns = {k: v for k, v in row.items() if k != prompt_column}
        prompts.append(Prompt(id=i, text=text, messages=messages, columns=columns, row=dict(row)))
    return prompts


def task_or_file_rows(task: str | None, task_kwargs: dict, path: str | None, split: str, n: int, seed: int) -> list[dict]:
    """Rows from a synthetic task's split (``n`` of them) or from ``path``."""
    if path is not None:
        return load_rows(path, split)
    from rlpost.tasks import TASKS
    return TASKS.get(task)(split, n, seed=seed, **task_kwargs)


def fit_prompts(prompts: list[Prompt], tokenizer, room: int, policy: str, which: str) -> list[Prompt]:
    """Prompts longer than ``room`` tokens (the context minus rollout.max_completion_length), handled before step 0
    by data.overlong_prompts: ``error`` (a ConfigError naming the first one), ``drop`` (a counted warning) or
    ``truncate_left`` (keep the last ``room`` tokens: the question usually sits at the end)."""
    if policy not in ("error", "drop", "truncate_left"):
        raise ConfigError(f"data.overlong_prompts: {policy!r} is not one of error, drop, truncate_left")
    ids = [tokenizer(p.text, add_special_tokens=False)["input_ids"] for p in prompts]
    lengths = [len(x) for x in ids]
    over = [i for i, n in enumerate(lengths) if n > room]
    if not over:
        return prompts
    first = over[0]
    if policy == "error" or room <= 0:
        raise ConfigError(f"{len(over)} of {len(prompts)} {which} prompts do not fit the model's context with "
                          f"rollout.max_completion_length room (first: row {prompts[first].id}, {lengths[first]} tokens > "
                          f"{room}); set data.overlong_prompts=drop or truncate_left, a smaller max_completion_length "
                          "or a larger rollout.max_model_len")
    log.warning("data.overlong_prompts=%s: %d of %d %s prompts are longer than %d tokens", policy, len(over),
                len(prompts), which, room)
    if policy == "drop":
        dropped = set(over)
        kept = [p for i, p in enumerate(prompts) if i not in dropped]
        if not kept:
            raise ConfigError(f"data.overlong_prompts=drop: every {which} prompt is longer than {room} tokens")
        return kept
    out = list(prompts)
    for i in over:
        out[i] = dataclasses.replace(prompts[i], text=tokenizer.decode(ids[i][-room:]))
    return out
