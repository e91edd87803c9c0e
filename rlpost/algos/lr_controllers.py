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
all, so a run without a controller pays nothing. What rlpost's learner passes then (one process, DDP and
DeepSpeed ZeRO-2/3 alike; rlpost/learner.py)::

    {"micro_grad_sq_norms": [||g_j||^2 for every micro-batch j of the step, on every rank],
     "micro_shares": [c_j: micro-batch j's share of the step's tokens (token-mean) or rows],
     "mean_grad_sq_norm": ||G||^2, G = sum_j c_j g_j the step's gradient after the all-reduce, before clipping}

g_j is micro-batch j's own mean gradient, read by :class:`MicroBatchGradNorms` before DDP / DeepSpeed reduce it
across ranks; the per-rank lists are all-gathered (scalars only), so the statistics depend on the set of
micro-batches, not on which rank ran them.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Protocol

import torch

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


class MicroBatchGradNorms:
    """||d loss / d theta||^2 of one backward pass over a model's trainable parameters, read by tensor hooks as
    each parameter's gradient arrives: before it is added to ``.grad`` and before DDP or DeepSpeed reduce it across
    ranks (their hooks run after a tensor's own hooks), so it is this rank's gradient of this micro-batch alone.
    Costs one squared norm per parameter per backward and no gradient copy.

    A parameter whose gradient arrives in several parts within one backward (used in two separately
    back-propagated graphs, e.g. reentrant gradient checkpointing that recomputes a shared weight) would give
    sum ||part||^2 instead of ||sum of parts||^2; that is logged as a warning naming the parameter."""

    def __init__(self, model):
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.recording = False
        self._parts: list[torch.Tensor] = []
        self._arrivals: list[int] = []
        self._warned = False
        self._handles = [p.register_hook(self._hook(i)) for i, p in enumerate(
            p for p in model.parameters() if p.requires_grad)]

    def _hook(self, index: int):
        def hook(grad: torch.Tensor):
            if self.recording:
                self._parts.append(torch.linalg.vector_norm(grad.detach(), dtype=torch.float32).square())
                self._arrivals[index] += 1
            return None
        return hook

    @contextlib.contextmanager
    def backward(self):
        """Record the squared gradient norm of the backward pass run inside the body (read it with ``sq_norm``)."""
        self._parts, self._arrivals, self.recording = [], [0] * len(self.names), True
        try:
            yield
        finally:
            self.recording = False
        repeated = [self.names[i] for i, n in enumerate(self._arrivals) if n > 1]
        if repeated and not self._warned:
            self._warned = True
            logging.getLogger(__name__).warning(
                "algo.lr_controller: %d parameter(s) (first: %s) received their gradient in several parts within "
                "one backward; the micro-batch gradient norms are approximate", len(repeated), repeated[0])

    def sq_norm(self) -> float:
        return float(torch.stack(self._parts).double().sum()) if self._parts else 0.0

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
