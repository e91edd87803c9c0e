"""Helpers shared by the method modules' ``validate(cfg)`` functions (config reading only, no math)."""
from __future__ import annotations

import dataclasses

from rlpost.config import ConfigError, component
from rlpost.config import explicit_fields as user_set  # the keys the user set (YAML or CLI)


def name_of(spec) -> str | None:
    """The registered name of a component spec (``"grpo"`` or ``{name: grpo, ...}``), None when unset."""
    try:
        return component(spec)[0]
    except ConfigError:
        return None


def params_of(registry, spec, where: str, shared: dict | None = None):
    """The params dataclass a registered component gets from the trainer, or None when the name is
    unknown or the entry takes none. Invalid values raise ConfigError naming ``where``."""
    from rlpost.algos import build_params
    name, overrides = component(spec)
    if name is None or name not in registry:
        return None
    entry = registry.entry(name)
    try:
        return build_params(entry.params, shared, overrides, where=f"{where} ({name})")
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where} ({name}): {err}") from None


def advantage_names(cfg) -> set[str]:
    """algo.advantage's name, plus ADORA's base estimator (it calls that estimator on the same input)."""
    name, params = component(cfg.algo.advantage)
    names = {name}
    if name == "adora":
        names.add(params.get("base", "grpo"))
    return names


def active(cfg, method: str) -> bool:
    return method in (cfg.method or {})


def ignored_knobs(cfg, params_cls, knobs: tuple[str, ...]) -> list[str]:
    """algo.<knob> values the user set that ``params_cls`` does not declare (the trainer would drop them)."""
    declared = {f.name for f in dataclasses.fields(params_cls)}
    return [k for k in knobs if k in user_set(cfg.algo) and k not in declared]
