"""OBLR-PO method hooks (rlpost/algos/oblr_po.py holds the math; docs/algos/oblr_po.md the YAML).

Two independent pieces:

- ``algo.advantage: {name: oblr, weight: logit_score_norm}`` needs sum_v pi_v^2 per token from the
  old-policy forward: ``method: {oblr: {}}`` declares ``Needs(sum_p_sq=True)`` (the trainer passes
  ``FixedLogprobs.sum_p_sq`` as ``AdvantageInput.sum_p_sq``). Weights ``length`` / ``uniform`` need no hooks.
- ``algo.lr_controller: oblr_snr`` is built by the trainer and fed by the learner
  (``{"micro_grad_sq_norms": [...], "micro_shares": [...], "mean_grad_sq_norm": ...}`` each optimizer step: every
  micro-batch's own gradient norm, read before the all-reduce and gathered from all ranks, and the step's reduced
  gradient norm; rlpost/algos/lr_controllers.py); it needs no method, only >= 2 micro-batches per optimizer step,
  and works with every learner layout (one process, DDP, DeepSpeed ZeRO-2/3). It logs ``oblr/snr``,
  ``oblr/snr_step``, ``oblr/signal``, ``oblr/noise``, ``oblr/lr_scale`` and the learner logs the applied ``lr``.
"""
from __future__ import annotations

import math

from rlpost.algos import ADVANTAGES
from rlpost.algos.lr_controllers import LR_CONTROLLERS
from rlpost.algos.oblr_po import OBLRAdvParams
from rlpost.config import ConfigError, component
from rlpost.methods import METHODS, MethodHooks, Needs, SetupContext
from rlpost.methods._util import active, advantage_names, name_of, params_of, user_set


def _oblr_weight(cfg) -> str | None:
    """The baseline weight of the oblr estimator in use (directly or as ADORA's base), else None."""
    name, node = component(cfg.algo.advantage)
    if name == "oblr":
        p = params_of(ADVANTAGES, cfg.algo.advantage, "algo.advantage", shared=user_set(cfg.algo))
        return p.weight
    if "oblr" in advantage_names(cfg):  # adora forwards only scale_rewards/eps: oblr keeps its defaults
        return OBLRAdvParams().weight
    return None


def micro_batches_per_step(cfg, rows_per_generation: int) -> int:
    mini = rows_per_generation // cfg.optim.steps_per_generation
    return math.ceil(mini / cfg.optim.micro_batch_size) if mini > 0 else 0


def validate(cfg) -> None:
    weight = _oblr_weight(cfg)
    if weight == "exact":
        raise ConfigError("algo.advantage oblr: weight=exact needs per-sequence squared score norms "
                          "(inp.score_sq_norm), which rlpost's learner does not compute; "
                          "use weight logit_score_norm (default), length or uniform")
    if weight == "logit_score_norm" and not active(cfg, "oblr"):
        raise ConfigError("algo.advantage oblr (weight logit_score_norm) needs `method: {oblr: {}}`: it makes the "
                          "learner compute sum_v pi_v^2 per token in the old-policy forward")
    if active(cfg, "oblr") and weight != "logit_score_norm":
        raise ConfigError("method.oblr only switches on sum_v pi^2 for algo.advantage oblr with weight "
                          "logit_score_norm; drop it (algo.lr_controller oblr_snr and the other weights need "
                          "no method)")
    if name_of(cfg.algo.advantage) == "oblr" and "scale_rewards" in user_set(cfg.algo):
        raise ConfigError("algo.advantage oblr ignores algo.scale_rewards (a variance-optimal baseline): "
                          "use algo.advantage.normalize_std: true to divide by the group reward std")
    if name_of(cfg.algo.lr_controller) == "oblr_snr":
        params_of(LR_CONTROLLERS, cfg.algo.lr_controller, "algo.lr_controller")
        if cfg.distributed.backend == "fsdp2":
            raise ConfigError("algo.lr_controller oblr_snr with distributed.backend=fsdp2: the per-micro-batch gradient "
                              "norms are read from the parameters' own gradients, which under FSDP2 exist only "
                              "unsharded inside its backward; use distributed.backend=ddp or deepspeed (ZeRO-2/3)")
        # counted as in one process: with several ranks each rank adds its own micro-batches, so a step has at least
        # as many (the check is conservative there)
        r, o = cfg.rollout, cfg.optim
        full = micro_batches_per_step(cfg, r.prompts_per_step * r.num_generations)
        if full < 2:
            raise ConfigError(
                f"algo.lr_controller oblr_snr estimates gradient noise from >= 2 micro-batches per optimizer step, "
                f"but each step has {full}: rollout.prompts_per_step * num_generations / optim.steps_per_generation "
                f"= {r.prompts_per_step * r.num_generations // o.steps_per_generation} rows and optim.micro_batch_size "
                f"= {o.micro_batch_size}; lower optim.micro_batch_size")
        if cfg.algo.dynamic_sampling:
            smallest = micro_batches_per_step(cfg, r.num_generations)
            if smallest < 2:
                raise ConfigError(
                    "algo.lr_controller oblr_snr with algo.dynamic_sampling: a step may keep a single group "
                    f"({r.num_generations} rows), which must still split into >= 2 micro-batches per optimizer step; "
                    f"set optim.micro_batch_size < {r.num_generations // o.steps_per_generation} "
                    f"(e.g. {max(1, r.num_generations // o.steps_per_generation // 2)})")


@METHODS.register("oblr")
class OBLRMethod(MethodHooks):
    """Switches on sum_v pi^2 in the old-policy forward."""

    def setup(self, ctx: SetupContext) -> Needs:
        validate(ctx.cfg)
        return Needs(sum_p_sq=True)
