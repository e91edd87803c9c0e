"""Method hooks: how a paper's pieces that are not a single registered function join the loop.

A method is selected by a key of the config's ``method:`` section (``method: {hapo: {...}}``) and is a small
class with any of the hooks below (all optional; :class:`MethodHooks` gives no-op defaults). Hooks never see
the trainer: they get typed, frozen contexts holding only the fields listed there, and hand back values that
the trainer applies. A method assigns no attribute of the trainer, learner or engine.

    setup(ctx: SetupContext) -> Needs        once, after model, data, rewards and advantage are built and before
        the learner is: what the loop must compute for the method (per-token entropies, sum_v pi_v^2, hooks
        around the old-policy forward) and what the method provides (the data sampler, an LR controller)
    rollout_params(params, purpose, step) -> params   before each rollout (purpose "rollout" or "eval")
    kl_coef() -> float | None                before each step: the learner's KL coefficient from then on (None: keep)
    extras(ctx: StepContext) -> Extras       after the old/ref forward, before advantages:
        advantage: fields of AdvantageInput (e.g. reward_components); loss_rows: [B,...] tensors sliced per
        micro-batch into fields of LossInput; loss_step: step-level values set unchanged on LossInput
        (e.g. entropy_stats); a key that is no field of the input is a TypeError
    after_update(ctx: StepContext) -> dict   after the optimizer steps (``ctx.update_metrics`` set): metrics to log
    state_dict() / load_state_dict(state)    saved in every checkpoint

A :class:`StepContext` is built once per step, after ``Learner.prepare``: the step, the batch, its
:class:`rlpost.learner.FixedLogprobs`, the trajectories, the learner's own optimizer-step partition
(``Learner.mini_batches``), and two capabilities: ``evaluate()`` (held-out evaluation of the current weights)
and ``all_reduce_sum(x)`` (a sum over learner processes, identity in one). When several methods are active,
their needs are combined: flags or-ed, hooks concatenated in ``method:`` order; at most one may provide a
sampler or an LR controller (and an LR controller only without ``algo.lr_controller``). A provided sampler or
LR controller is checkpointed with the trainer's state, like the ones the config builds; ``kl_coef()`` is read
again after a resume, so a coefficient kept in the method's ``state_dict`` comes back to the learner.

Hooks must not hold algorithm math: that stays in ``rlpost/algos`` as pure, tested functions.

A method module may also define ``validate(cfg)``: it raises :class:`rlpost.config.ConfigError` for
combinations of its paper's components that cannot work (also when the method itself is not active,
e.g. its loss named without the hooks it needs). :func:`validate_methods` runs every module's
``validate`` once, before the trainer loads a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from rlpost.registry import Registry

if TYPE_CHECKING:
    import torch

    from rlpost.batch import Batch
    from rlpost.config import Config
    from rlpost.learner import FixedLogprobs, LearnerSettings
    from rlpost.types import Prompt, Trajectory

METHODS = Registry("method")


@dataclass(frozen=True)
class SetupContext:
    """What ``setup`` may read: the built components a method configures itself from."""
    cfg: Config
    model: torch.nn.Module              # the policy (forward passes and hooks only)
    tokenizer: Any
    model_path: str                     # resolved local path of model.name_or_path
    train_prompts: list[Prompt]         # the training rows, after data.overlong_prompts
    reward_names: list[str]             # the reward functions' names, in config order
    advantage_params: Any               # the params dataclass of algo.advantage (None when it takes none)
    has_ref_model: bool                 # the learner has a reference model (FixedLogprobs.ref_logprobs is set)
    learner_settings: LearnerSettings   # a copy: loss name and params, micro-batching, temperature


@dataclass(frozen=True)
class Needs:
    """What a method asks of the loop, returned by ``setup``; the trainer builds the learner with it."""
    entropies: bool = False             # per-token entropies: FixedLogprobs.old_entropies and LossInput.entropies
    sum_p_sq: bool = False              # sum_v pi_v^2 per token in the old-policy pass: FixedLogprobs.sum_p_sq
    old_forward_hooks: tuple = ()       # hook(model, micro_batch) -> context manager around each old-policy
                                        # micro-batch forward (reads hidden states); makes prepare() run that pass
    sampler: Any = None                 # the data sampler to draw training prompts with (replaces data.sampler's)
    lr_controller: Any = None           # the learner's LR controller (rlpost.algos.lr_controllers.LRController)


@dataclass(frozen=True)
class StepContext:
    """What ``extras`` and ``after_update`` may read about one RL step."""
    step: int                           # RL steps finished before this one (0 for the first)
    batch: Batch                        # the collated rollout batch, B rows
    fixed: FixedLogprobs                # old / reference log-probs and friends, [B,T] each or None
    trajectories: list[Trajectory]      # the step's scored trajectories (this process's share)
    mini_batches: list[torch.Tensor]    # row indices of each optimizer step, in order (Learner.mini_batches)
    evaluate: Callable[[], dict]        # held-out evaluation of the current weights (synced to the engine first)
    all_reduce_sum: Callable            # x -> sum of x over learner processes (x itself in one process)
    update_metrics: dict | None = None  # the learner's metrics of this step (after_update only)


@dataclass
class Extras:
    """What ``extras`` returns; the trainer merges every method's (later methods win on equal keys)."""
    advantage: dict = field(default_factory=dict)
    loss_rows: dict = field(default_factory=dict)
    loss_step: dict = field(default_factory=dict)

    def merge(self, other: "Extras") -> "Extras":
        return Extras({**self.advantage, **other.advantage}, {**self.loss_rows, **other.loss_rows},
                      {**self.loss_step, **other.loss_step})


class MethodHooks:
    """No-op defaults for every hook."""

    def setup(self, ctx: SetupContext) -> Needs:
        return Needs()

    def rollout_params(self, params, purpose: str, step: int):
        return params

    def kl_coef(self) -> float | None:
        return None

    def extras(self, ctx: StepContext) -> Extras:
        return Extras()

    def after_update(self, ctx: StepContext) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def combine_needs(needs: dict[str, Needs]) -> Needs:
    """The active methods' needs (``{method name: Needs}``) as one: flags or-ed, hooks concatenated in order;
    a sampler or an LR controller may come from one method only (ConfigError naming both otherwise)."""
    from rlpost.config import ConfigError
    for what in ("sampler", "lr_controller"):
        owners = [name for name, n in needs.items() if getattr(n, what) is not None]
        if len(owners) > 1:
            raise ConfigError(f"method.{owners[0]} and method.{owners[1]} both provide the {what.replace('_', ' ')}: "
                              "keep one of them")
    values = list(needs.values())
    return Needs(entropies=any(n.entropies for n in values), sum_p_sq=any(n.sum_p_sq for n in values),
                 old_forward_hooks=tuple(h for n in values for h in n.old_forward_hooks),
                 sampler=next((n.sampler for n in values if n.sampler is not None), None),
                 lr_controller=next((n.lr_controller for n in values if n.lr_controller is not None), None))


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
