"""``rlpost doctor CONFIG [key=value ...]``: what ``rlpost validate`` checks, plus what would stop or spoil the run here.

One line per check, ``ok`` / ``warn`` / ``FAIL`` / ``skip``; exit 2 when a check fails, else 0. Nothing loads weights
unless ``--probe`` asks for a few sampled completions.

    config     the config resolves (everything ``rlpost validate`` checks)
    data       the data files (or hub datasets, or synthetic tasks) exist and their first rows have the configured
               columns and the columns the reward functions read
    packages   the packages the configured rewards, eval metrics, workflow / environment, methods, engine, learner
               backend, optimizer and trackers import are installed (reported by name, with what needs them)
    resources  files the rewards load (reward-model folders, nltk data) exist
    model      the model's config and tokenizer load (no weights); parameters counted on the meta device
    template   the chat template suits the workflow: present where needed, honours add_generation_prompt, the
               first prompt renders and fits the context with room for the completion
    workers    every ``rollout.server_urls`` worker answers /health and serves the configured model
    disk       free space under ``trainer.output_dir`` for the checkpoints the run keeps
    memory     per-rank estimate: weights, gradients, optimizer state, reference model, activations and logits at
               the micro-batch and length, plus the colocated vLLM share, against the device
    probe      (``--probe``) a few sampled completions: sampler vs learner log-probs of the same tokens
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import importlib.util
import inspect
import os
import shutil
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

DOCTOR_EPILOG = """examples:
  rlpost doctor configs/tiny/arith_grpo.yaml
  rlpost doctor recipes/hapo/qwen2.5-math-1.5b.yaml --world-size 8 --device-memory-gb 80
  rlpost doctor configs/tiny/arith_grpo.yaml --probe          # also sample a few completions and compare log-probs
"""
GIB = 1 << 30
STATUS = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "skip": "skip"}
PACKAGE_HINTS = {"math_verify": "math-verify", "rouge_score": "rouge-score", "flash_attn": "flash-attn",
                 "lion_pytorch": "lion-pytorch", "pytorch_optimizer": "pytorch-optimizer", "sklearn": "scikit-learn",
                 "yaml": "pyyaml"}


@dataclass
class Check:
    name: str
    status: str      # ok | warn | fail | skip
    detail: str

    def line(self) -> str:
        return f"{STATUS[self.status]}  {self.name:<10} {' '.join(str(self.detail).split())}"


@dataclass
class Context:
    """What the checks share: the config (as loaded and as resolved) and what earlier checks found."""
    path: str
    kind: str
    cfg: object
    resolved: dict
    world_size: int
    device_memory_gb: float | None = None
    first_rows: list = field(default_factory=list)
    tokenizer: object = None
    model_config: object = None
    n_params: int | None = None
    lora_params: int | None = None
    size_source: str | None = None       # where n_params came from when the model did not fully load
    size_unknown: str = "the model's size is unknown (see model)"   # why disk and memory are skipped


# ---------------------------------------------------------------------------------------------- data

def first_rows(source: str, split: str, n: int = 3) -> list[dict]:
    """The first ``n`` rows of a local jsonl/json/parquet/csv file or folder, or of a hub dataset (streamed; the
    offline cache when HF_DATASETS_OFFLINE is set), without reading the whole source."""
    import itertools
    import json

    from rlpost.data import DataError, load_rows, read_jsonl_rows
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".jsonl":
        with open(path) as f:
            lines = [line for line in itertools.islice(f, 50 * n) if line.strip()][:n]
        try:
            rows = [json.loads(line) for line in lines]
            if rows and all(isinstance(r, dict) for r in rows):
                return rows
        except json.JSONDecodeError:
            pass
        return read_jsonl_rows(path)[:n]   # raises the reader's own error, naming the line
    if path.is_file() and path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq
        batch = next(pq.ParquetFile(path).iter_batches(batch_size=n))
        return batch.to_pylist()
    if path.exists() or not _looks_like_hub_id(source):
        return load_rows(source, split)[:n]
    import datasets
    try:
        stream = datasets.load_dataset(source, split=split, streaming=True)
        return [dict(r) for r in itertools.islice(stream, n)]
    except Exception as err:   # offline, unknown id, no such split: one line
        raise DataError(f"hub dataset {source!r} (split {split!r}) cannot be read here: "
                        f"{(str(err).strip() or type(err).__name__).splitlines()[0]}") from None


def _looks_like_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/", "~")) and not Path(source).suffix


def reward_columns(fn, kwargs: dict) -> list[str]:
    """Dataset columns a reward function reads: its required parameters after (prompts, completions), or what its
    ``required_columns(**kwargs)`` hook says (a class such as code_exec reads a column its kwargs name)."""
    hook = getattr(fn, "required_columns", None)
    if callable(hook):
        return list(hook(**kwargs))
    target = fn.__call__ if inspect.isclass(fn) else fn
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return []
    if inspect.isclass(fn):
        params = params[1:]   # self
    provided = {"completion_ids", "finish_reasons", "max_completion_length"} | set(kwargs)
    return [p.name for p in params[2:] if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in provided]


def reward_functions(ctx: Context) -> list[tuple[str, str, object, dict]]:
    """(config key, name, function or class, kwargs) of each configured reward (not built: no model loads)."""
    from rlpost.rewards import REWARDS
    out = []
    for i, r in enumerate(ctx.resolved.get("rewards", [])):
        kwargs = {k: v for k, v in r["kwargs"].items() if k != "call_timeout_s"}
        if ":" in r["name"]:
            module, attr = r["name"].split(":", 1)
            fn = getattr(importlib.import_module(module), attr)
        else:
            fn = REWARDS.get(r["name"])
        out.append((f"rewards.{i}", r["name"], fn, kwargs))
    return out


def check_data(ctx: Context) -> list[Check]:
    d = ctx.cfg.data
    needed = {}
    if ctx.kind == "train":
        needed = {d.prompt_column: "data.prompt_column"}
        if d.answer_column:
            needed[d.answer_column] = "data.answer_column"
        for key, name, fn, kwargs in reward_functions(ctx):
            for column in reward_columns(fn, kwargs):
                needed.setdefault(column, f"{key} ({name})")
    elif ctx.kind == "sft":
        needed = ({d.messages_column: "data.messages_column"} if d.messages_column else
                  {d.prompt_column: "data.prompt_column", d.completion_column: "data.completion_column"})
    elif ctx.kind == "dpo" and d.train_path:
        needed = {d.chosen_column: "data.chosen_column", d.rejected_column: "data.rejected_column"}
    sources = [("train", d.train_path, d.train_split, "data.train_path")]
    if getattr(d, "eval_path", None):
        sources.append(("eval", d.eval_path, d.eval_split, "data.eval_path"))
    checks = []
    for label, path, split, key in sources:
        name = f"data.{label}"
        try:
            if path:
                rows, where = first_rows(path, split), f"{path} ({key})"
            elif d.task:
                from rlpost.tasks import TASKS
                rows, where = TASKS.get(d.task)("train" if label == "train" else "test", 3, seed=0, **d.task_kwargs), \
                    f"synthetic task {d.task!r}"
            else:
                checks.append(Check(name, "skip", "no file or task"))
                continue
        except Exception as err:   # DataError, FileNotFoundError, a parser's error: report, never crash
            text = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
            where = f"{path} ({key})" if path else f"synthetic task {d.task!r} (data.task)"
            checks.append(Check(name, "fail", f"{where}: {text.removeprefix(f'{path}: ') if path else text}"))
            continue
        if not rows:
            checks.append(Check(name, "fail", f"{where}: no rows"))
            continue
        missing = [f"{col!r} ({who})" for col, who in needed.items() if col not in rows[0]]
        if missing:
            checks.append(Check(name, "fail", f"{where}: the first row has no column {', '.join(missing)}; it has "
                                              f"{sorted(rows[0])}"))
            continue
        problems = row_problems(ctx, rows)
        if problems:
            checks.append(Check(name, "fail", f"{where}: {problems}"))
            continue
        if label == "train":
            ctx.first_rows = rows
        columns = f" have {', '.join(sorted(needed))}" if needed else " read"
        checks.append(Check(name, "ok", f"{where}: first {len(rows)} rows{columns}"))
    return checks


def row_problems(ctx: Context, rows: list[dict]) -> str:
    """A reward's own check of the first rows (``check_rows(rows, **kwargs)``, e.g. code_exec's tests), as text."""
    if ctx.kind != "train":
        return ""
    for key, name, fn, kwargs in reward_functions(ctx):
        hook = getattr(fn, "check_rows", None)
        if callable(hook):
            try:
                hook(rows, **kwargs)
            except (ValueError, KeyError) as err:
                return f"{key} ({name}): {err}"
    return ""


# ---------------------------------------------------------------------------------------------- packages

def imports_of(obj) -> set[str]:
    """Top-level modules that ``obj``'s source imports (``import x``, ``from x import y``, rlpost's lazy
    ``_require("x", ...)``), anywhere in its body: rewards and metrics import their packages when built or called."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    except (OSError, TypeError, SyntaxError):
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_require" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("rlpost", "__future__")}


def _import_path(ref: str):
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


def required_packages(ctx: Context) -> dict[str, list[str]]:
    """{module: [what needs it]} for everything the config names."""
    cfg, need = ctx.cfg, {}

    def add(modules, who):
        for m in modules:
            need.setdefault(m, []).append(who)

    if ctx.kind != "train":
        add(["trl"], f"rlpost {ctx.kind}")
    else:
        from rlpost.rewards.dialog import EVAL_METRICS
        for key, name, fn, _ in reward_functions(ctx):
            add(imports_of(fn) | set(getattr(fn, "requires", ())), f"{key} {name}")
        for name in cfg.trainer.eval_metrics:
            fn = _import_path(name) if ":" in name else EVAL_METRICS.get(name)
            add(imports_of(fn), f"trainer.eval_metrics {name}")
        workflow = ctx.resolved["rollout"]["workflow"]
        wname = workflow if isinstance(workflow, str) else workflow["name"]
        from rlpost.workflows import WORKFLOWS
        add(imports_of(WORKFLOWS.get(wname)), f"rollout.workflow {wname}")
        if isinstance(workflow, dict) and isinstance(workflow.get("env"), str) and ":" in workflow["env"]:
            add(imports_of(_import_path(workflow["env"])), f"rollout.workflow.env {workflow['env']}")
        from rlpost.methods import METHODS
        for name in ctx.resolved.get("method", {}):
            add(imports_of(METHODS.get(name)), f"method.{name}")
        if cfg.rollout.engine == "vllm":
            add(["vllm"], "rollout.engine vllm")
        if cfg.distributed.backend == "deepspeed":
            add(["deepspeed"], "distributed.backend deepspeed")
        opt = cfg.optim.optimizer.lower()
        if opt == "lion":
            add(["lion_pytorch"], "optim.optimizer lion")
        elif opt not in ("adamw", "adam", "sgd"):
            add(["pytorch_optimizer"], f"optim.optimizer {opt}")
        for tracker in cfg.trainer.report_to:
            if tracker in ("tensorboard", "wandb", "trackio"):
                add(["tensorboard" if tracker == "tensorboard" else tracker], f"trainer.report_to {tracker}")
    m = cfg.model
    if m.attn_implementation == "flash_attention_2":
        add(["flash_attn"], "model.attn_implementation flash_attention_2")
    if getattr(m.lora, "r", 0) > 0:
        add(["peft"], "model.lora.r > 0")
    if m.load_in_4bit:
        add(["bitsandbytes"], "model.load_in_4bit")
    return need


def check_packages(ctx: Context) -> list[Check]:
    need = required_packages(ctx)
    missing = {m: who for m, who in need.items() if importlib.util.find_spec(m) is None}
    if missing:
        text = "; ".join(f"{m} (needed by {', '.join(who)}; pip install {PACKAGE_HINTS.get(m, m)})"
                         for m, who in sorted(missing.items()))
        return [Check("packages", "fail", f"missing {text}")]
    return [Check("packages", "ok", f"installed: {', '.join(sorted(need)) or 'nothing beyond rlpost'}")]


def check_resources(ctx: Context) -> list[Check]:
    """Local files the rewards load (``path`` kwargs) and their own ``preflight(**kwargs)`` problems."""
    if ctx.kind != "train":
        return []
    problems = []
    for key, name, fn, kwargs in reward_functions(ctx):
        path = kwargs.get("path")
        if isinstance(path, str) and not _looks_like_hub_id(path) and not Path(path).exists():
            problems.append(f"{key} ({name}): kwargs.path {path!r} does not exist")
        hook = getattr(fn, "preflight", None)
        if callable(hook):
            problems += [f"{key} ({name}): {p}" for p in hook(**kwargs)]
    if problems:
        return [Check("resources", "fail", "; ".join(problems))]
    return [Check("resources", "ok", "files the rewards load are present")]


# ---------------------------------------------------------------------------------------------- model

def count_parameters(model_config, lora=None) -> tuple[int, int | None]:
    """(parameters, LoRA adapter parameters or None) of the model ``model_config`` describes, built on the meta
    device (no memory, no weights). Adapter: r (in + out) per targeted linear layer."""
    import torch
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    total = sum(p.numel() for p in model.parameters())
    if lora is None or getattr(lora, "r", 0) <= 0:
        return total, None
    targets = lora.target_modules
    adapter = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lm_head" not in name:
            leaf = name.rsplit(".", 1)[-1]
            if targets == "all-linear" or (isinstance(targets, (list, tuple)) and leaf in targets):
                adapter += lora.r * (module.in_features + module.out_features)
    return total, adapter


def check_model(ctx: Context) -> list[Check]:
    from transformers import AutoConfig

    from rlpost.models.loading import load_tokenizer, model_ref_errors, resolve_model_path
    m = ctx.cfg.model
    try:
        path = resolve_model_path(m)
        with model_ref_errors(m.name_or_path):
            ctx.model_config = AutoConfig.from_pretrained(path, trust_remote_code=m.trust_remote_code,
                                                          revision=m.revision)
        ctx.tokenizer = load_tokenizer(path, m)
    except Exception as err:
        text = str(err)
        text = text if text.startswith("model.") else f"model.name_or_path {m.name_or_path!r}: {text}"
        return [Check("model", "fail", text + size_without_weights(ctx))]
    size = count_size(ctx)
    window = getattr(ctx.model_config, "max_position_embeddings", None)
    return [Check("model", "ok", f"{m.name_or_path}: config ({ctx.model_config.model_type}, context {window}) and "
                                 f"tokenizer (vocab {len(ctx.tokenizer)}) load{size}")]


def count_size(ctx: Context) -> str:
    """Count ctx.model_config's parameters into ctx.n_params / ctx.lora_params; the text that reports it."""
    try:
        ctx.n_params, ctx.lora_params = count_parameters(ctx.model_config, ctx.cfg.model.lora)
    except Exception as err:   # a config transformers cannot build on the meta device: the count is skipped
        ctx.size_unknown = f"transformers cannot build its config on the meta device ({type(err).__name__}: {err})"
        return f" (parameters not counted: {type(err).__name__}: {err})"
    return f", {ctx.n_params / 1e6:,.1f}M parameters" + (f" (LoRA adapter {ctx.lora_params / 1e6:,.2f}M)"
                                                          if ctx.lora_params else "")


def size_without_weights(ctx: Context) -> str:
    """When the model's config or tokenizer did not load: its size from whatever describes it, so that disk and
    memory can still be estimated. The config itself if it loaded (a local config.json without a tokenizer), else
    rlpost's table of the recipes' hub models (rlpost/models/known_configs.py); otherwise ``ctx.size_unknown``
    says why no estimate is possible."""
    from rlpost.models.known_configs import known_config
    name = ctx.cfg.model.name_or_path
    if ctx.model_config is None:
        ctx.model_config = known_config(name)
        if ctx.model_config is None:
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
            hub = "switched off (HF_HUB_OFFLINE)" if offline else "unreachable or has no such model"
            ctx.size_unknown = (f"no config.json of {name!r} can be read here (not a local folder, not in the hub "
                                f"cache, and the hub is {hub}) and it is not in rlpost/models/known_configs.py: "
                                "estimate skipped")
            return ""
        ctx.size_source = "rlpost/models/known_configs.py (its hub config.json is not readable here)"
    else:
        ctx.size_source = "its config.json alone"
    size = count_size(ctx)
    return f"; sized from {ctx.size_source}{size}" if ctx.n_params is not None else ""


def check_template(ctx: Context) -> list[Check]:
    tok, d = ctx.tokenizer, ctx.cfg.data
    if tok is None:
        return [Check("template", "skip", "no tokenizer (see model)")]
    problems, warnings, sizes = [], [], ""
    has_template = bool(getattr(tok, "chat_template", None))
    workflow = ctx.resolved.get("rollout", {}).get("workflow", "single_turn")
    wname = workflow if isinstance(workflow, str) else workflow.get("name")
    chat_workflow = wname in ("multi_turn", "a2fm")
    prompt = ctx.first_rows[0].get(d.prompt_column) if ctx.first_rows else None
    if d.chat_template and not has_template:
        if isinstance(prompt, list) or chat_workflow or getattr(d, "few_shot", None):
            problems.append("data.chat_template is true but the tokenizer has no chat template, and "
                            + ("the prompts are chat messages" if isinstance(prompt, list) else
                               f"rollout.workflow {wname} renders conversations" if chat_workflow else "data.few_shot needs one"))
        else:
            warnings.append("the tokenizer has no chat template: prompts go in as raw text")
    if not d.chat_template and isinstance(prompt, list):
        problems.append(f"data.chat_template is false but the prompt column {d.prompt_column!r} holds chat messages")
    if d.chat_template and has_template:
        messages = [{"role": "user", "content": "2+2?"}]
        try:
            with_gp = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            without = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
            if with_gp == without:
                warnings.append("the chat template ignores add_generation_prompt: the model is not cued to answer")
        except Exception as err:
            problems.append(f"the chat template does not render a user turn: {type(err).__name__}: {err}")
    if tok.eos_token is None:
        warnings.append("the tokenizer has no EOS token: completions stop only at the length cap")
    if ctx.kind == "train" and prompt is not None and not problems:
        from rlpost.data import format_prompt
        try:
            text, _ = format_prompt(tok, prompt, d.system_prompt, d.chat_template, "the first training row", d.few_shot)
            n_prompt = len(tok(text, add_special_tokens=False)["input_ids"])
            sizes = f" (first prompt {n_prompt} tokens)"
            r = ctx.cfg.rollout
            window = r.max_model_len or getattr(ctx.model_config, "max_position_embeddings", None)
            if window and n_prompt + r.max_completion_length > window:
                (problems if d.overlong_prompts == "error" else warnings).append(
                    f"the first prompt has {n_prompt} tokens: with rollout.max_completion_length "
                    f"{r.max_completion_length} it exceeds the context of {window} (data.overlong_prompts "
                    f"{d.overlong_prompts})")
        except Exception as err:
            problems.append(f"the first training row does not render: {err}")
    status = "fail" if problems else "warn" if warnings else "ok"
    detail = "; ".join(problems + warnings) or (
        f"{'the chat template suits' if d.chat_template else 'raw text prompts suit'} rollout.workflow {wname}{sizes}"
        if ctx.kind == "train" else "chat template present" if has_template else "raw text")
    return [Check("template", status, detail)]


# ---------------------------------------------------------------------------------------------- workers

def check_workers(ctx: Context) -> list[Check]:
    """Each ``rlpost serve`` worker answers /health and serves the configured model (by name or resolved path)."""
    if ctx.kind != "train" or ctx.cfg.rollout.engine != "vllm_server":
        return []
    import requests

    from rlpost.models.loading import resolve_model_path
    r = ctx.cfg.rollout
    token = r.server_token or os.environ.get("RLPOST_SERVE_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    names = {ctx.cfg.model.name_or_path}
    try:
        names.add(os.path.realpath(resolve_model_path(ctx.cfg.model)))
    except Exception:
        pass
    checks = []
    for url in r.server_urls:
        url = url.rstrip("/")
        try:
            resp = requests.get(f"{url}/health", headers=headers, timeout=5)
        except requests.RequestException as err:
            checks.append(Check("workers", "fail", f"{url} (rollout.server_urls) does not answer: {type(err).__name__}"))
            continue
        if resp.status_code == 401:
            checks.append(Check("workers", "fail", f"{url} refused the token (401): set rollout.server_token"))
            continue
        if resp.status_code != 200:
            checks.append(Check("workers", "fail", f"{url}/health answered {resp.status_code}"))
            continue
        info = resp.json()
        served = str(info.get("model"))
        if served not in names and os.path.realpath(served) not in names:
            checks.append(Check("workers", "fail", f"{url} serves {served!r}, the config trains "
                                                   f"{ctx.cfg.model.name_or_path!r} (model.name_or_path)"))
        elif info.get("weights_version"):
            checks.append(Check("workers", "warn", f"{url} serves {served!r} after {info['weights_version']} weight "
                                                   "updates (another run's weights); the trainer re-sends its own first"))
        else:
            checks.append(Check("workers", "ok", f"{url} serves {served!r} with its own weights (version 0)"))
    return checks


# ---------------------------------------------------------------------------------------------- disk and memory

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}


def checkpoint_bytes(n_params: int, dtype: str, trainable: int, optimizer: str) -> tuple[int, int]:
    """(bytes of one saved model, bytes of one resumable checkpoint = model + optimizer state)."""
    b = BYTES.get(dtype, 4)
    weights = n_params * b
    return weights, weights + optimizer_slots(optimizer) * trainable * b


def optimizer_slots(optimizer: str) -> int:
    """Tensors of optimizer state per trainable parameter: Adam/AdamW 2 (m, v), Lion 1, SGD 0 (no momentum by
    default), other pytorch_optimizer names counted as 2."""
    return {"adamw": 2, "adam": 2, "lion": 1, "sgd": 0}.get(optimizer.lower(), 2)


def check_disk(ctx: Context) -> list[Check]:
    if ctx.n_params is None:
        return [Check("disk", "skip", ctx.size_unknown)]
    t = ctx.cfg.trainer
    out = Path(t.output_dir)
    base = out
    while not base.exists() and base != base.parent:
        base = base.parent
    free = shutil.disk_usage(base).free
    if ctx.kind == "train":
        trainable = ctx.lora_params or ctx.n_params
        model_b, ckpt_b = checkpoint_bytes(ctx.n_params if not ctx.lora_params else trainable, ctx.cfg.model.dtype,
                                           trainable, ctx.cfg.optim.optimizer)
        kept = t.save_total_limit if t.save_steps > 0 else 0
        need = kept * ckpt_b + model_b + (ctx.n_params * BYTES.get(ctx.cfg.model.dtype, 4)
                                          if ctx.lora_params and ctx.cfg.model.lora.save_merged else 0)
        what = f"{kept} checkpoints x {ckpt_b / GIB:.2f} GiB + final model"
    else:
        model_b = ctx.n_params * BYTES.get(ctx.cfg.model.dtype, 4)
        need, what = model_b * 2, "final model (+ one TRL checkpoint)"
    status = "ok" if free >= need else "fail"
    return [Check("disk", status, f"{t.output_dir} (trainer.output_dir): needs ~{need / GIB:.2f} GiB ({what}), "
                                  f"{free / GIB:.1f} GiB free on {base}")]


@dataclass
class MemoryEstimate:
    """Bytes per learner rank. Activations follow Korthikanti et al. 2022 (eq. 2) with a fused (flash / sdpa)
    attention: 34·N·h bytes per layer at 2 bytes per value, N = micro-batch tokens, h = hidden size, i.e.
    17·N·h·bytes; with gradient checkpointing each layer keeps only its input (N·h·bytes) plus one layer in full.
    Logits: N·V fp32 values and their gradient (2·N·V·4), or a chunk of ``logprob_chunk_size`` tokens."""
    weights: float
    gradients: float
    optimizer: float
    reference: float
    activations: float
    logits: float
    vllm: float = 0.0

    @property
    def learner(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.reference + self.activations + self.logits


def estimate_memory(n_params: int, hidden: int, layers: int, vocab: int, *, dtype: str, trainable: int | None = None,
                    optimizer: str = "adamw", micro_batch: int, seq_len: int, gradient_checkpointing: bool = False,
                    logprob_chunk: int = 0, reference: bool = False, zero_stage: int = 0, world_size: int = 1,
                    offload_optimizer: bool = False, vllm_bytes: float = 0.0) -> MemoryEstimate:
    """Per-rank memory of one learner step (see :class:`MemoryEstimate`). ZeRO-2 shards gradients and optimizer
    state over ``world_size`` ranks, ZeRO-3 the weights (and the reference model's) too."""
    b = BYTES.get(dtype, 4)
    trainable = n_params if trainable is None else trainable
    shard = world_size if zero_stage >= 2 else 1
    wshard = world_size if zero_stage >= 3 else 1
    weights = n_params * b / wshard + (trainable * b if trainable != n_params else 0)   # LoRA: adapter on top
    gradients = trainable * b / shard
    opt = 0.0 if offload_optimizer else optimizer_slots(optimizer) * trainable * b / shard
    tokens = micro_batch * seq_len
    per_layer_full = 17 * tokens * hidden * b
    acts = (layers * tokens * hidden * b + per_layer_full) if gradient_checkpointing else layers * per_layer_full
    logit_tokens = min(tokens, logprob_chunk) if logprob_chunk > 0 else tokens
    return MemoryEstimate(weights=weights, gradients=gradients, optimizer=opt,
                          reference=n_params * b / wshard if reference else 0.0, activations=acts,
                          logits=2 * logit_tokens * vocab * 4, vllm=vllm_bytes)


def device_memory(ctx: Context) -> tuple[float, str]:
    """(bytes, description) of the device the run's learner uses: --device-memory-gb, else CUDA device 0, else RAM."""
    if ctx.device_memory_gb:
        return ctx.device_memory_gb * GIB, f"{ctx.device_memory_gb:g} GiB (--device-memory-gb)"
    import torch
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return float(props.total_memory), f"{props.total_memory / GIB:.0f} GiB ({props.name})"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return float(ram), f"{ram / GIB:.0f} GiB (CPU memory: no CUDA device here)"


def check_memory(ctx: Context) -> list[Check]:
    mc = ctx.model_config
    if ctx.n_params is None or mc is None:
        return [Check("memory", "skip", ctx.size_unknown)]
    cfg = ctx.cfg
    hidden = getattr(mc, "hidden_size", None) or getattr(mc, "n_embd", 0)
    layers = getattr(mc, "num_hidden_layers", None) or getattr(mc, "n_layer", 0)
    vocab = getattr(mc, "vocab_size", 0)
    total, where = device_memory(ctx)
    if ctx.kind == "train":
        r, o, dist = cfg.rollout, cfg.optim, cfg.distributed
        prompt_tokens = 0
        if ctx.first_rows and ctx.tokenizer is not None:
            from rlpost.data import format_prompt
            try:
                text, _ = format_prompt(ctx.tokenizer, ctx.first_rows[0][cfg.data.prompt_column], cfg.data.system_prompt,
                                        cfg.data.chat_template, "row 0", cfg.data.few_shot)
                prompt_tokens = len(ctx.tokenizer(text, add_special_tokens=False)["input_ids"])
            except Exception:
                prompt_tokens = 0
        workflow = ctx.resolved["rollout"]["workflow"]
        episode = (workflow.get("max_total_tokens") or workflow.get("max_context")) if isinstance(workflow, dict) else None
        seq = episode or r.max_model_len or prompt_tokens + r.max_completion_length   # a multi-call episode's cap first
        micro = (max(1, o.max_tokens_per_micro_batch // seq) if o.max_tokens_per_micro_batch else o.micro_batch_size)
        vllm = r.gpu_memory_utilization * total if r.engine == "vllm" else 0.0
        est = estimate_memory(ctx.n_params, hidden, layers, vocab, dtype=cfg.model.dtype, trainable=ctx.lora_params,
                              optimizer=o.optimizer, micro_batch=micro, seq_len=seq,
                              gradient_checkpointing=cfg.model.gradient_checkpointing, logprob_chunk=o.logprob_chunk_size,
                              reference=cfg.algo.beta > 0 or cfg.algo.kl_reward.coef > 0,
                              zero_stage=dist.zero_stage if dist.backend == "deepspeed" else 0,
                              world_size=ctx.world_size, offload_optimizer=dist.offload_optimizer,
                              vllm_bytes=0.0 if r.enable_sleep_mode else vllm)
        shape = f"micro-batch {micro} x {seq} tokens"
    else:
        t = cfg.trainer
        reference = ctx.kind == "dpo" or bool(getattr(getattr(cfg, "sft", None), "log_reference", False))
        est = estimate_memory(ctx.n_params, hidden, layers, vocab, dtype=cfg.model.dtype, trainable=ctx.lora_params,
                              micro_batch=t.per_device_train_batch_size, seq_len=t.max_length or 1024,
                              gradient_checkpointing=cfg.model.gradient_checkpointing, reference=reference)
        shape = f"batch {t.per_device_train_batch_size} x {t.max_length} tokens"
    parts = ", ".join(f"{k} {getattr(est, k) / GIB:.2f}" for k in ("weights", "gradients", "optimizer", "reference",
                                                                    "activations", "logits"))
    need = est.learner + est.vllm
    vllm = f" + vLLM {est.vllm / GIB:.2f} GiB" if est.vllm else ""
    status = "fail" if need > total else "warn" if need > 0.9 * total else "ok"
    return [Check("memory", status, f"~{est.learner / GIB:.2f} GiB per learner rank ({parts} GiB; {shape}, "
                                    f"world size {ctx.world_size}){vllm} against {where}" +
                                    (f"; parameters from {ctx.size_source}" if ctx.size_source else ""))]


# ---------------------------------------------------------------------------------------------- probe

def check_probe(ctx: Context, overrides: list[str], tolerance: float) -> list[Check]:
    """Sample two prompts x two completions with the configured engine and compare the sampler's log-probs with
    the learner's for the same tokens (mean and max |difference| over completion tokens)."""
    if ctx.kind != "train":
        return [Check("probe", "skip", f"a {ctx.kind} config samples nothing")]
    import tempfile

    from rlpost.batch import collate
    from rlpost.config import load_config
    from rlpost.learner import batched_logprobs
    from rlpost.trainer import Trainer
    out = tempfile.mkdtemp(prefix="rlpost-doctor-")
    probe = ["rollout.prompts_per_step=2", "rollout.num_generations=2", f"trainer.output_dir={out}",
             "trainer.report_to=[]", "trainer.eval_steps=0", "trainer.save_steps=0", "trainer.progress_bar=false"]
    trainer = None
    try:
        trainer = Trainer(load_config(ctx.path, list(overrides) + probe))
        trainer.setup()
        trajectories, _ = trainer.pipeline.batch(0)     # the first step's scored batch, as training draws it
        batch = collate(trajectories, trainer.tokenizer.pad_token_id, False)
        learner_lp = batched_logprobs(trainer.model, batch, trainer.learner.settings, False)[0]
        mask = batch.response_mask.bool()
        diff = (learner_lp - batch.sampler_logprobs).abs()[mask]
        mean, worst = float(diff.mean()), float(diff.max())
    except Exception as err:
        return [Check("probe", "fail", f"{type(err).__name__}: {err}")]
    finally:
        if trainer is not None and hasattr(trainer, "engine"):
            trainer.close()
        shutil.rmtree(out, ignore_errors=True)
    status = "ok" if mean <= tolerance else "fail"
    return [Check("probe", status, f"{len(trajectories)} completions, {int(mask.sum())} tokens: sampler vs learner "
                                   f"log-probs |diff| mean {mean:.2e}, max {worst:.2e} (tolerance {tolerance:g} on the mean)")]


# ---------------------------------------------------------------------------------------------- driver

def run_checks(path: str, overrides: list[str] | None = None, kind: str | None = None, world_size: int | None = None,
               device_memory_gb: float | None = None, probe: bool = False, probe_tolerance: float = 0.05) -> list[Check]:
    """Every check in order; the config check first (nothing else runs when it fails). Never raises for a failed
    check: each becomes a FAIL line naming the key, file, package or URL."""
    from rlpost.resolve import resolve_file
    overrides = list(overrides or [])
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    try:
        kind, resolved = resolve_file(path, overrides, kind, world)
        cfg = _load(kind, path, overrides)
    except Exception as err:
        text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        return [Check("config", "fail", text)]
    ctx = Context(path=str(path), kind=kind, cfg=cfg, resolved=resolved, world_size=world,
                  device_memory_gb=device_memory_gb)
    checks = [Check("config", "ok", f"a valid {kind} config (everything rlpost validate checks)")]
    steps = [check_data, check_packages, check_resources, check_model, check_template, check_workers, check_disk,
             check_memory]
    for step in steps:
        try:
            checks += step(ctx)
        except Exception as err:   # a check that breaks reports itself, the others still run
            checks.append(Check(step.__name__.removeprefix("check_"), "fail", f"{type(err).__name__}: {err}"))
    if probe:
        checks += check_probe(ctx, overrides, probe_tolerance)
    return checks


def _load(kind: str, path, overrides):
    if kind == "train":
        from rlpost.config import load_config
        return load_config(path, overrides)
    from rlpost.sft import load_stage_config
    if kind == "sft":
        from rlpost.sft import SFTRunConfig as cls
    else:
        from rlpost.dpo import DPORunConfig as cls
    return load_stage_config(cls, path, overrides)


def cmd_doctor(args) -> int:
    checks = run_checks(args.config, args.overrides, args.kind, args.world_size, args.device_memory_gb, args.probe,
                        args.probe_tolerance)
    print(f"# rlpost doctor {args.config}")
    for check in checks:
        print(check.line())
    failed = [c.name for c in checks if c.status == "fail"]
    print(f"# {'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'}")
    return 2 if failed else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("doctor", help="check a config and this machine before a run (config, data, packages, "
                                             "model, template, workers, disk, memory)",
                              description=__doc__.split("\n\n")[1].replace("\n", " "), epilog=DOCTOR_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config (train, sft or dpo)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, as the command that runs it takes them")
    p.add_argument("--kind", choices=["train", "sft", "dpo"], help="the config's kind (default: from its sections)")
    p.add_argument("--world-size", type=int, default=None,
                   help="learner processes the run will have (default: $WORLD_SIZE or 1): distributed rules, ZeRO shards")
    p.add_argument("--device-memory-gb", type=float, default=None,
                   help="memory of the device the run will use (default: this machine's CUDA device 0, else its RAM)")
    p.add_argument("--probe", action="store_true",
                   help="load the model, sample 2 prompts x 2 completions and compare sampler and learner log-probs")
    p.add_argument("--probe-tolerance", type=float, default=0.05,
                   help="largest mean |log-prob difference| the probe accepts (default 0.05)")
    p.set_defaults(func=cmd_doctor)
