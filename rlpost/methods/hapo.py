"""HAPO method hooks (rlpost/algos/hapo.py holds the math; docs/algos/hapo.md the YAML).

HAPO's components are chosen where they act: ``algo.advantage: hapo`` (B), ``algo.loss: hapo`` (C + D),
``rollout.logits_processor: hapo_temperature`` (A). ``method: {hapo: {}}`` wires what they need:

- the learner computes per-token entropies (``Needs(entropies=True)``): old-policy ones in ``prepare`` and the
  current ones in every micro-batch;
- after the old-policy forward of step t, ``entropy_stats(old_entropies, mask, rho)`` over the whole batch
  goes to the loss of step t (``LossInput.entropy_stats``, loss_stats="step"), and
  ``HAPOTemperature.next_state(...)`` is kept for the rollout of step t+1 (and checkpointed);
- the temperature processor is added to training rollouts only (evaluation samples at T_base);
- logged: ``hapo/temperature_mean|min|max|up_frac|down_frac|has_stats`` (rollout), ``hapo/stats_q``,
  ``hapo/stats_h_pos_max``, ``hapo/stats_h_neg_min`` (the carried statistics) next to the loss's
  ``hapo/boost_frac``, ``hapo/damp_frac``, ``hapo/h_tilde_mean``, ``hapo/eps_low_mean|eps_high_mean``.
"""
from __future__ import annotations

import dataclasses
import re

from rlpost.algos import ADVANTAGES, POLICY_LOSSES
from rlpost.algos.hapo import EntropyStats, HAPOLossParams, HAPOTemperature, entropy_stats
from rlpost.algos.logits_processors import LOGITS_PROCESSORS
from rlpost.config import ConfigError, component
from rlpost.methods import METHODS, Extras, MethodHooks, Needs, SetupContext, StepContext
from rlpost.methods._util import active, advantage_names, ignored_knobs, name_of, params_of, user_set

# A learner-side importance-sampling correction toward the *sampler's* log-probs (rlpost's
# algo.vllm_importance_sampling_correction, TRL's namesake, verl's rollout_is, TIS) would treat HAPO's
# per-token temperatures as engine noise and undo them: any switched-on config field of algo / rollout whose
# name matches this pattern is refused together with hapo_temperature.
_IS_CORRECTION = re.compile(r"importance_sampling_correction|^tis(_|$)|rollout_is|is_correction")


def validate(cfg) -> None:
    """Combination rules for HAPO's components (raises ConfigError)."""
    loss, proc = name_of(cfg.algo.loss), name_of(cfg.rollout.logits_processor)
    uses_hooks = loss == "hapo" or proc == "hapo_temperature"
    if uses_hooks and not active(cfg, "hapo"):
        what = "algo.loss hapo" if loss == "hapo" else "rollout.logits_processor hapo_temperature"
        raise ConfigError(f"{what} needs `method: {{hapo: {{}}}}`: it makes the learner compute per-token "
                          "entropies and carries their statistics to the loss and the next rollout")
    if active(cfg, "hapo") and not uses_hooks:
        raise ConfigError("method.hapo wires HAPO's loss (algo.loss: hapo) and adaptive temperature "
                          "(rollout.logits_processor: hapo_temperature); select at least one of them, or drop "
                          "method.hapo (algo.advantage: hapo needs no hooks)")
    if "hapo" in advantage_names(cfg):
        _check_advantage(cfg)
    if loss == "hapo":
        params_of(POLICY_LOSSES, cfg.algo.loss, "algo.loss", shared=user_set(cfg.algo))
        ignored = ignored_knobs(cfg, HAPOLossParams, ("delta", "importance_sampling_level"))
        if ignored:
            raise ConfigError(f"algo.loss hapo is a token-level clip with its own per-token bounds; "
                              f"algo.{ignored[0]} would be ignored: remove it")
    if proc == "hapo_temperature":
        params_of(LOGITS_PROCESSORS, cfg.rollout.logits_processor, "rollout.logits_processor",
                  shared={"temperature": cfg.rollout.temperature})
        if cfg.rollout.engine == "vllm_server":
            raise ConfigError("rollout.logits_processor hapo_temperature runs in the engine's sampler as Python "
                              "code, which rollout.engine=vllm_server workers cannot run: use rollout.engine vllm "
                              "(colocated) or hf")
        if cfg.rollout.temperature == 0:
            raise ConfigError("rollout.logits_processor hapo_temperature scales the sampling temperature, "
                              "but rollout.temperature is 0 (greedy): set a base temperature > 0 (HAPO: 1.0)")
        for section in ("algo", "rollout"):
            for f in dataclasses.fields(getattr(cfg, section)):
                if _IS_CORRECTION.search(f.name) and getattr(getattr(cfg, section), f.name):
                    raise ConfigError(
                        f"rollout.logits_processor hapo_temperature cannot be combined with {section}.{f.name}: "
                        "HAPO samples token t at T_base(1 + tau h~) on purpose and recomputes old log-probs at "
                        "T_base; an importance-sampling correction toward the sampler's log-probs would undo it")


def _check_advantage(cfg) -> None:
    name, node = component(cfg.algo.advantage)   # hapo itself, or adora with base hapo (it forwards scale_rewards)
    if node.get("scale_rewards", cfg.algo.scale_rewards) == "batch":
        where = "algo.advantage hapo" if name == "hapo" else "algo.advantage adora (base hapo)"
        raise ConfigError(f"{where}: scale_rewards=batch is not defined for HAPO's token-level group average, "
                          "which divides by the token-weighted std of each group (paper Eq. 9) so that "
                          "sum m*A = 0 per group: use scale_rewards group or none")
    if name == "hapo":
        params_of(ADVANTAGES, cfg.algo.advantage, "algo.advantage", shared=user_set(cfg.algo))


@METHODS.register("hapo")
class HAPOMethod(MethodHooks):
    """Entropies on, step statistics to the loss, adaptive temperature on training rollouts."""

    def __init__(self):
        self.state: dict | None = None           # statistics carried to the next rollout (checkpointed)
        self.temp_params = None
        self.loss_params = None
        self._proc, self._proc_step = None, -1
        self._stats_metrics: dict = {}

    def setup(self, ctx: SetupContext) -> Needs:
        cfg = ctx.cfg
        validate(cfg)
        if name_of(cfg.rollout.logits_processor) == "hapo_temperature":
            self.temp_params = params_of(LOGITS_PROCESSORS, cfg.rollout.logits_processor, "rollout.logits_processor",
                                         shared={"temperature": cfg.rollout.temperature})
        if ctx.learner_settings.loss_name == "hapo":
            self.loss_params = ctx.learner_settings.loss_params
        return Needs(entropies=True)

    def rollout_params(self, params, purpose: str, step: int):
        if purpose != "rollout" or self.temp_params is None:
            return params
        if self._proc is None or self._proc_step != step:   # one per step, shared by refill rounds
            self._proc, self._proc_step = HAPOTemperature(self.temp_params, self.state), step
        return dataclasses.replace(params, logits_processors=[*params.logits_processors, self._proc])

    def extras(self, ctx: StepContext) -> Extras:
        old_h, mask = ctx.fixed.old_entropies, ctx.batch.response_mask    # [B,T] old-policy entropies at T_base
        step, logged = {}, None
        if self.temp_params is not None:
            self.state = logged = HAPOTemperature.next_state(old_h, mask, self.temp_params)   # for step t+1
        if self.loss_params is not None and self.loss_params.loss_stats == "step":
            stats = entropy_stats(old_h, mask, self.loss_params.entropy_pivot)                # for step t
            step["entropy_stats"] = stats
            logged = stats.to_dict() if stats is not None else logged
        self._stats_metrics = _stats_metrics(logged)
        return Extras(loss_step=step)

    def after_update(self, ctx: StepContext) -> dict:
        out = dict(self._stats_metrics)
        if self._proc is not None and self._proc_step == ctx.step:
            out.update(self._proc.metrics())
        return out

    def state_dict(self) -> dict:
        return {"temperature_state": self.state}

    def load_state_dict(self, state: dict) -> None:
        self.state = state.get("temperature_state")


def _stats_metrics(state: dict | None) -> dict:
    stats = EntropyStats.from_any(state)
    if stats is None:
        return {}
    return {"hapo/stats_q": stats.q, "hapo/stats_h_pos_max": stats.h_pos_max, "hapo/stats_h_neg_min": stats.h_neg_min}
