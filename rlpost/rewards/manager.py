"""Run several reward functions with weights; report each one; never swallow a failure."""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Callable

from rlpost.rewards import REWARDS


class RewardError(RuntimeError):
    """A reward function raised or returned something unusable; names it and the failing sample."""


@dataclass
class RewardSpec:
    name: str
    fn: Callable
    weight: float
    kwargs: dict


def resolve_reward(name: str, kwargs: dict | None = None) -> tuple[Callable, dict]:
    """A registered name, or ``package.module:function`` for a user's own reward function.

    Returns ``(fn, call_kwargs)``. A class (a reward that needs state, e.g. a loaded reward model) is a
    factory: it is built once with ``kwargs`` and its instance is the reward function (no call kwargs).
    A plain function gets ``kwargs`` on every call.
    """
    if ":" in name:
        module_name, fn_name = name.split(":", 1)
        try:
            fn = getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError) as err:
            raise KeyError(f"rewards: cannot import reward function {name!r}: {err}") from err
    else:
        fn = REWARDS.get(name)
    if isinstance(fn, type):
        try:
            return fn(**dict(kwargs or {})), {}
        except TypeError as err:
            raise ValueError(f"rewards: {name}: {err}") from err
    return fn, dict(kwargs or {})


class RewardManager:
    """Weighted sum of reward functions: R = sum_k w_k r_k (None from a function counts as 0 and is
    excluded from that function's mean, as in TRL)."""

    def __init__(self, specs: list[RewardSpec]):
        self.specs = specs

    @classmethod
    def from_config(cls, reward_cfgs) -> "RewardManager":
        specs = []
        for r in reward_cfgs:
            fn, kwargs = resolve_reward(r.name, r.kwargs)
            name = fn.name if isinstance(getattr(fn, "name", None), str) else r.name  # a factory's instance may name itself
            if name in {s.name for s in specs}:
                raise ValueError(f"rewards: two entries report as {name!r}; give each a distinct kwargs.name")
            specs.append(RewardSpec(name, fn, r.weight, kwargs))
        return cls(specs)

    def score(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> tuple[list[float], dict[str, list[float]]]:
        """Return (total rewards, {name: per-sample rewards})."""
        n = len(completions)
        totals = [0.0] * n
        components: dict[str, list[float]] = {}
        for spec in self.specs:
            try:
                values = spec.fn(prompts, completions, **columns, **spec.kwargs)
            except Exception as err:
                sample = self._find_failing_sample(spec, prompts, completions, columns)
                raise RewardError(f"reward function {spec.name!r} raised {type(err).__name__}: {err}{sample}") from err
            values = list(values) if values is not None else None
            if values is None or len(values) != n:
                raise RewardError(f"reward function {spec.name!r} returned {None if values is None else len(values)} "
                                  f"values for {n} completions")
            clean = []
            for i, v in enumerate(values):
                if v is not None and (not isinstance(v, (int, float)) or math.isnan(float(v))):
                    raise RewardError(f"reward function {spec.name!r} returned {v!r} for sample {i} "
                                      f"(completion {completions[i]!r:.80}); expected a number or None")
                clean.append(None if v is None else float(v))
            components[spec.name] = clean
            for i, v in enumerate(clean):
                if v is not None:
                    totals[i] += spec.weight * v
        return totals, components

    def _find_failing_sample(self, spec, prompts, completions, columns) -> str:
        """Re-run the function one sample at a time to name the first sample that raises."""
        for i in range(len(completions)):
            one = {k: [v[i]] if isinstance(v, list) and len(v) == len(completions) else v for k, v in columns.items()}
            try:
                spec.fn([prompts[i]], [completions[i]], **one, **spec.kwargs)
            except Exception:
                return f"\n  failing sample {i}: prompt={prompts[i]!r:.120} completion={completions[i]!r:.120}"
        return ""
