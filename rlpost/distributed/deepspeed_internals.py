"""The only place rlpost relies on DeepSpeed internals (private attributes and methods, not its public API).

Checked against DeepSpeed 0.19.8 (torch 2.13, CPU / gloo): tests/distributed/test_deepspeed_internals.py runs
``gathered_without_hooks`` on a real two-rank ZeRO-3 engine, tests/distributed/test_snr_controller.py runs
``pre_clip_grad_norm`` under ZeRO-2 and ZeRO-3. After a DeepSpeed upgrade, run those tests first: what each function
relies on is listed in its docstring, with the DeepSpeed file that defines it.
"""
from __future__ import annotations

import contextlib


def is_zero3_partitioned(param) -> bool:
    """The parameter is managed by ZeRO-3 (DeepSpeed tags such parameters with a ``ds_id`` attribute in
    deepspeed/runtime/zero/partition_parameters.py; a plain or ZeRO-2 parameter has none)."""
    return hasattr(param, "ds_id")


def pre_clip_grad_norm(deepspeed_engine) -> float:
    """The global gradient norm of the current ``engine.step()`` (reduced over ranks, before clipping), read while
    ZeRO is inside that step, between measuring the norm and updating the parameters (from a step pre-hook of the
    wrapped torch optimizer). ``engine.get_global_grad_norm()`` only has it after the step.

    Relies on (DeepSpeed 0.19.8): ``deepspeed_engine.optimizer._global_grad_norm``, set by
    ``DeepSpeedZeroOptimizer.step`` (stage_1_and_2.py) and ``DeepSpeedZeroOptimizer_Stage3.step`` (stage3.py) to the
    unscaled global norm before they call the torch optimizer's ``step()``.
    """
    norm = getattr(deepspeed_engine.optimizer, "_global_grad_norm", None)
    if norm is None:
        raise RuntimeError("DeepSpeed's ZeRO optimizer has no _global_grad_norm during its step (DeepSpeed upgraded? "
                           "see rlpost/distributed/deepspeed_internals.py)")
    return float(norm)


@contextlib.contextmanager
def gathered_without_hooks(deepspeed_engine):
    """ZeRO-3: every parameter of ``deepspeed_engine.module`` gathered for the body, with DeepSpeed's per-module
    fetch/release hooks removed, and the hooks registered again on exit.

    Why: the hf engine generates with the learner's model. With the hooks, every forward of every decoding step
    gathers parameters collectively, so all ranks would have to run the same number of forwards; gathered once
    and without hooks the module runs like a plain one, and each rank may decode a different number of steps.

    Relies on (DeepSpeed 0.19.8):

    - ``deepspeed_engine.optimizer.parameter_offload`` (stage3.py; the ZeRO-3 optimizer itself in older versions): a
      ``DeepSpeedZeRoOffload`` (parameter_offload.py) whose ``forward_hooks`` / ``backward_hooks`` lists hold the
      hook handles, whose ``module`` is the wrapped model, and whose ``_register_deepspeed_module(module)``
      registers them again;
    - ``param.ds_active_sub_modules`` (partition_parameters.py): the sub-modules using a parameter, cleared so
      that nothing recorded before the body keeps a parameter from being released afterwards;
    - ``parameter_offload.param_coordinator`` with ``is_invalid_trace()`` / ``_invalidate_trace()``
      (partitioned_param_coordinator.py): the recorded fetch order is stale once forwards ran without hooks.
    """
    import deepspeed
    offload = getattr(deepspeed_engine.optimizer, "parameter_offload", None) or deepspeed_engine.optimizer
    params = list(deepspeed_engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        for p in params:
            if hasattr(p, "ds_active_sub_modules"):
                p.ds_active_sub_modules.clear()
        for hook in offload.forward_hooks + offload.backward_hooks:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield
        finally:
            coordinator = getattr(offload, "param_coordinator", None)
            if coordinator is not None and not coordinator.is_invalid_trace():
                coordinator._invalidate_trace()
            offload._register_deepspeed_module(offload.module)
