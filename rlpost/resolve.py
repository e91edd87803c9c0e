"""Resolve a config completely before any model loads: ``rlpost validate`` and the first thing every command does.

Resolving a run config means: every name chosen from a registry exists (``algo.loss``, ``algo.advantage``,
``rollout.workflow``, ``data.sampler``, rewards, methods ...), every component's own params have declared names
and the declared types, each method's combination rules hold, the distributed rules hold for the world size,
and a length fits the context window of a known public model (rlpost/models/context_windows.py). The result is
the config as a plain mapping with each component expanded to its name and all its resolved params, which is
what ``<output_dir>/config.yaml`` holds and what ``rlpost validate`` prints. Nothing here loads weights.

    rlpost validate configs/tiny/arith_grpo.yaml algo.loss=gspo      # prints the resolved YAML, exit 2 on an error
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path

import yaml

from rlpost.checks import (check_call_kwargs, check_context, defaults_of, expanded, plain,  # noqa: F401
                           registry_entry, resolve_component)
from rlpost.config import Config, ConfigError, explicit_fields, load_config, read_yaml_sections, to_dict
from rlpost.models.lora_sync import lora_sync

KINDS = ("train", "sft", "dpo")


# ---------------------------------------------------------------------------------------------- train configs

def resolve_train(cfg: Config, world_size: int | None = None) -> dict:
    """The run config with every component expanded and checked; raises ConfigError (loads no weights)."""
    from rlpost.rollout.schedule import check_async, is_settings
    from rlpost.methods import validate_methods
    check_async(cfg)   # first: what cannot run asynchronously says so, before the methods' own rules
    validate_methods(cfg)
    out = to_dict(cfg)
    out["rollout"].update(resolve_rollout(cfg))
    out["algo"].update(resolve_algo(cfg))
    check_turn_credit(cfg)
    out["algo"].update(is_settings(cfg))   # async_level > 0: the off-policy correction on by default
    out["data"]["sampler"] = resolve_sampler(cfg)
    if cfg.model.lora.r > 0:
        out["model"]["lora"]["sync"] = lora_sync(cfg)[0]
    out["rewards"] = [resolve_reward(r, i) for i, r in enumerate(cfg.rewards)]
    out["method"] = resolve_methods(cfg.method)
    if cfg.data.task is not None and not cfg.data.train_path:
        from rlpost.tasks import TASKS
        registry_entry(TASKS, cfg.data.task, "data.task")
    check_world_size(cfg, world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1")))
    check_context(cfg.model, cfg.rollout.max_model_len or cfg.rollout.max_completion_length + 1,
                  "rollout.max_model_len" if cfg.rollout.max_model_len else "rollout.max_completion_length")
    if out["rollout"].get("server_token"):
        out["rollout"]["server_token"] = "<redacted>"
    return out


def resolve_rollout(cfg: Config) -> dict:
    from rlpost.algos.logits_processors import LOGITS_PROCESSORS
    from rlpost.engines import ENGINES
    from rlpost.workflows import WORKFLOWS
    r = cfg.rollout
    registry_entry(ENGINES, r.engine, "rollout.engine")
    check_tensor_parallel(r)
    resolved = {"workflow": expanded(*_name_params(resolve_component(WORKFLOWS, r.workflow, "rollout.workflow")))}
    if r.logits_processor is not None:
        rollout_knobs = {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}
        resolved["logits_processor"] = expanded(*_name_params(
            resolve_component(LOGITS_PROCESSORS, r.logits_processor, "rollout.logits_processor", rollout_knobs)))
    return resolved


def check_tensor_parallel(r) -> None:
    """rollout.tensor_parallel_size > 1 shards the colocated vLLM engine (rlpost/engines/vllm_engine.py); an
    ``rlpost serve`` worker takes its own --tensor-parallel-size."""
    tp = r.tensor_parallel_size
    if not isinstance(tp, int) or tp < 1:
        raise ConfigError(f"rollout.tensor_parallel_size must be an integer >= 1, got {tp!r}")
    if tp > 1 and r.engine != "vllm":
        where = ("each rlpost serve worker's --tensor-parallel-size" if r.engine == "vllm_server"
                 else "rollout.engine=vllm")
        raise ConfigError(f"rollout.tensor_parallel_size={tp} applies to rollout.engine=vllm only, not "
                          f"{r.engine!r}: use {where}")


def resolve_algo(cfg: Config) -> dict:
    """algo.advantage / loss / loss_agg / kl_estimator / lr_controller, with the TRL-named knobs the user set
    (algo.epsilon ...) passed to the components that declare them, exactly as the trainer builds them."""
    from rlpost.algos import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
    from rlpost.algos.losses import DEFAULT_AGGREGATION
    from rlpost.algos.lr_controllers import LR_CONTROLLERS
    a = cfg.algo
    shared = explicit_fields(a)
    adv_name, _, adv_params = resolve_component(ADVANTAGES, a.advantage, "algo.advantage", shared)
    loss_name, _, loss_params = resolve_component(POLICY_LOSSES, a.loss, "algo.loss", shared)
    agg = DEFAULT_AGGREGATION.get(loss_name, "token-mean") if a.loss_agg == "auto" else a.loss_agg
    registry_entry(AGGREGATIONS, agg, "algo.loss_agg")
    registry_entry(KL_ESTIMATORS, a.kl_estimator, "algo.kl_estimator")
    resolved = {"advantage": expanded(adv_name, adv_params), "loss": expanded(loss_name, loss_params), "loss_agg": agg}
    if a.lr_controller is not None:
        resolved["lr_controller"] = expanded(*_name_params(
            resolve_component(LR_CONTROLLERS, a.lr_controller, "algo.lr_controller")))
    return resolved


def check_turn_credit(cfg: Config) -> None:
    """algo.advantage turn_return / gigpo read per-turn rewards, which only a workflow that records them gives
    (``records_turns``: multi_turn, agent; rlpost/algos/turn_credit.py)."""
    from rlpost.algos.turn_credit import TURN_ESTIMATORS
    from rlpost.config import component
    from rlpost.workflows import WORKFLOWS
    advantage, workflow = component(cfg.algo.advantage)[0], component(cfg.rollout.workflow)[0]
    if advantage in TURN_ESTIMATORS and not getattr(WORKFLOWS.get(workflow), "records_turns", False):
        able = " or ".join(n for n in WORKFLOWS.names() if getattr(WORKFLOWS.get(n), "records_turns", False))
        raise ConfigError(f"algo.advantage {advantage} needs per-turn rewards, which rollout.workflow {workflow} does "
                          f"not record: use rollout.workflow {able} (or algo.advantage grpo)")


def _name_params(resolved: tuple) -> tuple:
    name, _, params = resolved
    return name, params


def resolve_sampler(cfg: Config):
    """data.sampler from the one sampler registry, with data.shuffle_dataset passed as the trainer does."""
    from rlpost.algos.data_samplers import DATA_SAMPLERS
    return expanded(*_name_params(resolve_component(DATA_SAMPLERS, cfg.data.sampler, "data.sampler",
                                                    {"shuffle": cfg.data.shuffle_dataset})))


def resolve_reward(reward, index: int) -> dict:
    """A reward entry with its function found (registered, or an importable ``module:function``) and its kwargs
    checked against the function's (or the factory class's) signature. A reward model is not loaded here."""
    import importlib

    from rlpost.rewards import REWARDS
    where = f"rewards.{index} ({reward.name})"
    if ":" in reward.name:
        module_name, fn_name = reward.name.split(":", 1)
        try:
            fn = getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"{where}: cannot import reward function {reward.name!r}: {err}") from None
    else:
        fn = registry_entry(REWARDS, reward.name, f"rewards.{index}.name").fn
    from rlpost.rewards.manager import split_call_options
    fn_kwargs, timeout = split_call_options(reward.kwargs, f"rewards.{index}")   # call_timeout_s is the manager's
    kwargs = check_call_kwargs(fn, fn_kwargs, where)
    if inspect.isclass(fn):   # a factory: its required arguments must be given (TRL's functions take **kwargs)
        missing = [n for n, p in inspect.signature(fn).parameters.items()
                   if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                   and n not in kwargs]
        if missing:
            raise ConfigError(f"{where}: missing kwargs {', '.join(missing)}")
    return {"name": reward.name, "weight": reward.weight, "kwargs": {**plain(kwargs), "call_timeout_s": timeout}}


def resolve_methods(method_cfg: dict) -> dict:
    from rlpost.methods import METHODS
    out = {}
    for name, params in (method_cfg or {}).items():
        if params is not None and not isinstance(params, dict):
            raise ConfigError(f"method.{name}: expected a mapping of its params, got {params!r}")
        cls = registry_entry(METHODS, name, f"method.{name}").fn
        out[name] = {**defaults_of(cls), **check_call_kwargs(cls, dict(params or {}), f"method.{name}")}
    return out


def check_world_size(cfg: Config, world_size: int) -> None:
    """The rules that depend on the number of learner processes (rlpost/distributed/sharding.py), for ``world_size``."""
    from rlpost import distributed
    tp = cfg.rollout.tensor_parallel_size
    if isinstance(tp, int) and tp > 1 and world_size > 1:
        raise ConfigError(f"rollout.tensor_parallel_size={tp} with WORLD_SIZE={world_size}: every learner rank would "
                          f"start its own {tp}-rank vLLM engine on the same local devices. Serve the policy from "
                          "`rlpost serve --tensor-parallel-size` workers instead (rollout.engine=vllm_server)")
    if cfg.distributed.backend == "none":
        if world_size > 1:
            raise ConfigError(f"launched with WORLD_SIZE={world_size} but distributed.backend is none: set "
                              "distributed.backend=ddp, deepspeed or fsdp2 (or start a single process)")
        return
    distributed.check_world_rules(cfg, world_size)


def load_resolved(path: str | Path | None = None, overrides: list[str] | None = None,
                  world_size: int | None = None) -> tuple[Config, dict]:
    """A train config and its resolution (every registry name, component param and method rule checked, before
    anything loads): what ``rlpost train`` hands the trainer."""
    cfg = load_config(path, overrides)
    return cfg, resolve_train(cfg, world_size)


def load_checked(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """:func:`load_resolved`'s config alone (for code that only needs to know the config runs)."""
    return load_resolved(path, overrides)[0]


# ---------------------------------------------------------------------------------------------- any config

def config_kind(path: str | Path | None, overrides: list[str] | None = None) -> str:
    """train, sft or dpo, from the file's sections (an ``sft:`` or ``dpo:`` section marks a stage config)."""
    sections = set(read_yaml_sections(path)) | {o.split("=", 1)[0].split(".")[0] for o in overrides or []}
    if "sft" in sections and "dpo" in sections:
        raise ConfigError(f"{path}: has both an sft: and a dpo: section; a stage config has one")
    return "sft" if "sft" in sections else "dpo" if "dpo" in sections else "train"


def resolve_file(path: str | Path | None, overrides: list[str] | None = None, kind: str | None = None,
                 world_size: int | None = None) -> tuple[str, dict]:
    """Load, resolve and check any rlpost config file -> (kind, the resolved mapping). Raises ConfigError."""
    kind = kind or config_kind(path, overrides)
    if kind == "train":
        return kind, resolve_train(load_config(path, overrides), world_size)
    from rlpost.sft import load_stage_config, resolve_stage
    if kind == "sft":
        from rlpost.sft import SFTRunConfig as cls
    elif kind == "dpo":
        from rlpost.dpo import DPORunConfig as cls
    else:
        raise ConfigError(f"unknown config kind {kind!r} (known: {', '.join(KINDS)})")
    return kind, resolve_stage(load_stage_config(cls, path, overrides))


def dump(resolved: dict) -> str:
    return yaml.safe_dump(plain(resolved), sort_keys=False)
