"""Method hooks: how a paper's pieces that are not a single registered function join the loop.

A method is selected by a key of the config's ``method:`` section (``method: {hapo: {...}}``) and is
a small class with any of these hooks (all optional; :class:`MethodHooks` gives no-op defaults):

    setup(trainer)                                  once, after every component is built
    rollout_params(params, purpose) -> params        before each rollout ("rollout" or "eval")
    extras(trainer, batch, fixed, trajectories)      after the old/ref forward, before advantages;
        -> Extras(advantage={...}, loss_rows={...}, loss_step={...})
           advantage: into AdvantageInput.extra; loss_rows: [B,...] tensors sliced per micro-batch
           into LossInput.extra; loss_step: step-level values passed unchanged into LossInput.extra
    after_update(trainer, batch, fixed, trajectories, metrics) -> dict   after the optimizer steps
    state_dict() / load_state_dict(state)            saved in every checkpoint

Hooks must not hold algorithm math: that stays in ``rlpost/algos`` as pure, tested functions.

A method module may also define ``validate(cfg)``: it raises :class:`rlpost.config.ConfigError` for
combinations of its paper's components that cannot work (also when the method itself is not active,
e.g. its loss named without the hooks it needs). :func:`validate_methods` runs every module's
``validate`` once, before the trainer loads a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rlpost.registry import Registry

METHODS = Registry("method")


@dataclass
class Extras:
    advantage: dict = field(default_factory=dict)
    loss_rows: dict = field(default_factory=dict)
    loss_step: dict = field(default_factory=dict)

    def merge(self, other: "Extras") -> "Extras":
        return Extras({**self.advantage, **other.advantage}, {**self.loss_rows, **other.loss_rows},
                      {**self.loss_step, **other.loss_step})


class MethodHooks:
    """No-op defaults for every hook."""

    def setup(self, trainer) -> None:
        pass

    def rollout_params(self, params, purpose: str):
        return params

    def extras(self, trainer, batch, fixed, trajectories) -> Extras:
        return Extras()

    def after_update(self, trainer, batch, fixed, trajectories, metrics: dict) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_methods(method_cfg: dict) -> dict:
    """``{name: params-dict}`` -> ``{name: instance}`` (each class takes its params as keyword args)."""
    out = {}
    for name, params in (method_cfg or {}).items():
        cls = METHODS.get(name)
        try:
            out[name] = cls(**(params or {}))
        except TypeError as err:
            raise ValueError(f"method.{name}: {err}") from err
    return out


def validate_methods(cfg) -> None:
    """Call ``validate(cfg)`` of every module in this package that defines one (raises ConfigError)."""
    import importlib
    import pkgutil
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        check = getattr(importlib.import_module(f"{__name__}.{mod.name}"), "validate", None)
        if callable(check):
            check(cfg)


def _register_builtins() -> None:
    import importlib
    import pkgutil
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


_register_builtins()
