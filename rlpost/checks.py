"""Checks on one piece of a config that several layers need (the resolver, the SFT/DPO stages, environments):
registry names, component params, call signatures, context windows. A low floor: it imports the config types and
nothing that imports the resolver (rlpost/resolve.py resolves whole configs with them)."""
from __future__ import annotations

import dataclasses
import inspect
import types
import typing

from rlpost.config import ConfigError, check_field_types, component


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


def check_context(model_cfg, needed: int, key: str) -> None:
    """``needed`` tokens (``key``) must fit the window of a model named in rlpost/models/context_windows.py."""
    from rlpost.models.context_windows import context_window
    window = context_window(model_cfg.name_or_path, model_cfg.model_init_kwargs)
    if window is not None and needed > window:
        raise ConfigError(f"{key} asks for {needed} tokens but {model_cfg.name_or_path} has a context window of "
                          f"{window} (max_position_embeddings; extend it with model.model_init_kwargs.rope_scaling "
                          "or lower the length)")
