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
import types
import typing
from pathlib import Path

import yaml

from rlpost.config import (Config, ConfigError, check_field_types, component, explicit_fields, load_config,
                           read_yaml_sections, to_dict)

KINDS = ("train", "sft", "dpo")


# ---------------------------------------------------------------------------------------------- components

def registry_entry(registry, name, key: str):
    """The registry entry called ``name``; an unknown name raises ConfigError naming ``key`` and the known names."""
    try:
        return registry.entry(name)
    except KeyError as err:
        raise ConfigError(f"{key}: {err.args[0]}") from None


def resolve_component(registry, spec, key: str, shared: dict | None = None):
    """``spec`` (a name or ``{name, **params}``) -> (name, entry, params dataclass or None), all checked."""
    from rlpost.algos import build_params
    name, overrides = component(spec)
    entry = registry_entry(registry, name, key)
    try:
        return name, entry, build_params(entry.params, shared, overrides, where=f"{key} ({name})")
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:   # a params dataclass's own range check (__post_init__)
        raise ConfigError(f"{key} ({name}): {err}") from None


def expanded(name: str, params) -> dict | str:
    """The resolved form of a component: ``{name, **params}`` (just the name when it takes no params)."""
    return {"name": name, **plain(dataclasses.asdict(params))} if params is not None else name


def plain(value):
    """YAML-safe copy: tuples become lists (yaml.safe_dump writes no Python tags)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def check_call_kwargs(fn, kwargs: dict, where: str) -> dict:
    """Check ``kwargs`` against ``fn``'s signature (a function, or a class's ``__init__``) without calling it:
    unknown names fail unless it takes ``**kwargs``; values of simply-typed parameters are type-checked."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return dict(kwargs)
    params = sig.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in params and not takes_any:
            raise ConfigError(f"{where}: unknown parameter {key!r} (known: {', '.join(named) or 'none'})")
    try:
        hints = typing.get_type_hints(fn.__init__ if inspect.isclass(fn) else fn)
    except Exception:   # annotations that do not resolve outside their module: names were checked
        return dict(kwargs)
    simple = {k: hints[k] for k in kwargs if k in hints and _is_simple(hints[k])}
    holder = dataclasses.make_dataclass("_Kwargs", [(k, tp) for k, tp in simple.items()])
    return {**kwargs, **check_field_types(holder, {k: kwargs[k] for k in simple}, where)}


def _is_simple(tp) -> bool:
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return all(a in (bool, int, float, str, type(None)) for a in args)


def defaults_of(fn) -> dict:
    """The keyword defaults of ``fn`` (a class's ``__init__``), for printing a component in full."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}
    return {n: p.default for n, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD}


# ---------------------------------------------------------------------------------------------- train configs

def resolve_train(cfg: Config, world_size: int | None = None) -> dict:
    """The run config with every component expanded and checked; raises ConfigError (loads no weights)."""
    from rlpost.async_rollout import check_async, is_settings
    from rlpost.methods import validate_methods
    check_async(cfg)   # first: what cannot run asynchronously says so, before the methods' own rules
    validate_methods(cfg)
    out = to_dict(cfg)
    out["rollout"].update(resolve_rollout(cfg))
    out["algo"].update(resolve_algo(cfg))
    out["algo"].update(is_settings(cfg))   # async_level > 0: the off-policy correction on by default
    out["data"]["sampler"] = resolve_sampler(cfg)
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
    resolved = {"workflow": expanded(*_name_params(resolve_component(WORKFLOWS, r.workflow, "rollout.workflow")))}
    if r.logits_processor is not None:
        rollout_knobs = {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}
        resolved["logits_processor"] = expanded(*_name_params(
            resolve_component(LOGITS_PROCESSORS, r.logits_processor, "rollout.logits_processor", rollout_knobs)))
    return resolved


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
    kwargs = check_call_kwargs(fn, dict(reward.kwargs), where)
    if inspect.isclass(fn):   # a factory: its required arguments must be given (TRL's functions take **kwargs)
        missing = [n for n, p in inspect.signature(fn).parameters.items()
                   if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                   and n not in kwargs]
        if missing:
            raise ConfigError(f"{where}: missing kwargs {', '.join(missing)}")
    return {"name": reward.name, "weight": reward.weight, "kwargs": plain(kwargs)}


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
    if cfg.distributed.backend == "none":
        if world_size > 1:
            raise ConfigError(f"launched with WORLD_SIZE={world_size} but distributed.backend is none: set "
                              "distributed.backend=ddp, deepspeed or fsdp2 (or start a single process)")
        return
    distributed.check_world_rules(cfg, world_size)


def check_context(model_cfg, needed: int, key: str) -> None:
    """``needed`` tokens (``key``) must fit the window of a model named in rlpost/models/context_windows.py."""
    from rlpost.models.context_windows import context_window
    window = context_window(model_cfg.name_or_path, model_cfg.model_init_kwargs)
    if window is not None and needed > window:
        raise ConfigError(f"{key} asks for {needed} tokens but {model_cfg.name_or_path} has a context window of "
                          f"{window} (max_position_embeddings; extend it with model.model_init_kwargs.rope_scaling "
                          "or lower the length)")


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
