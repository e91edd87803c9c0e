"""Learning-rate controllers (``algo.lr_controller``): a multiplier applied on top of the LR scheduler.

An entry is a class. The learner drives it once per optimizer step, after all backward passes of the
step and before ``optimizer.step()``::

    ctrl = LR_CONTROLLERS.get(name)(params)            # params from build_params(entry.params, ...)
    ... backward over the step's micro-batches, collecting the statistics the controller documents ...
    metrics |= ctrl.observe(grad_stats)                 # grad_stats: dict, keys documented per controller
    scale = ctrl.lr_scale(step)
    for group in optimizer.param_groups: group["lr"] = scheduler_lr * scale
    optimizer.step()
    checkpoint["lr_controller"] = ctrl.state_dict()     # resume: ctrl.load_state_dict(...)

``needs_grad_stats`` (class attribute) tells the learner whether it must collect gradient statistics at
all, so a run without a controller pays nothing.
"""
from __future__ import annotations

from typing import Any, Protocol

from rlpost.registry import Registry

LR_CONTROLLERS = Registry("LR controller")


class LRController(Protocol):
    needs_grad_stats: bool

    def __init__(self, params: Any = None): ...

    def observe(self, grad_stats: dict) -> dict[str, float]:
        """Take this step's gradient statistics; return metrics to log."""

    def lr_scale(self, step: int) -> float:
        """Multiplier for the scheduler's LR at optimizer step ``step``."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@LR_CONTROLLERS.register("constant")
class ConstantLR:
    """lr = scheduler_lr * 1: the default, needs no gradient statistics."""

    needs_grad_stats = False

    def __init__(self, params: Any = None):
        self.params = params

    def observe(self, grad_stats: dict) -> dict[str, float]:
        return {}

    def lr_scale(self, step: int) -> float:
        return 1.0

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
