"""Constrained RLHF wiring (Moskovitz et al., ICLR 2024): multipliers, NM-PPO search, logging, checkpoints.

The math lives in :mod:`rlpost.algos.constrained`; this hook only feeds it from the loop:

    algo:
      advantage: {name: constrained, mode: xi, thresholds: {rm_a: 0.8, rm_b: -0.2}, ...}
    method:
      constrained: {eval_metric: eval/accuracy}    # every key optional

setup         builds LagrangeMultipliers (mu/xi/all) and ProxyPointSearch (``proxy_search`` set) from the
              advantage's params; loads a frozen copy of the initial policy when the task is the KL
              and the learner has no reference model (algo.beta = 0, as the paper's μ/ξ-PPO).
extras        ``reward_components`` (name -> [B] tensor, one row per Batch row, from
              ``Trajectory.reward_components``), the old/reference log-probs for the KL task and the
              current multiplier weights and thresholds, all typed fields of ``AdvantageInput``.
after_update  one multiplier SGD step per policy mini-batch (multiplier_update: minibatch) on the
              mini-batch's RM means — the learner's own partition (``StepContext.mini_batches``), replayed
              after its optimizer steps: the advantages of this rollout were fixed before the update, so the
              order is equivalent — or one step per rollout (rollout); then NM-PPO: ``search.tick()`` and,
              when an evaluation is due, ``StepContext.evaluate()`` scored by ``eval_metric``; optional
              Ziegler adaptive KL coefficient (``kl_target``) for sum / sat / all, which ``kl_coef()`` hands
              to the trainer for the next update.
state_dict    multipliers, search and the adaptive KL coefficient, saved in every checkpoint.

Logged each step: ``constrained/multiplier/<c>``, ``constrained/reward/<c>``, ``constrained/gap/<c>``,
``constrained/violation/<c>`` (from the advantage, on the rollout batch), ``constrained/threshold/<c>``,
``constrained/multiplier_loss``, ``constrained/multiplier_steps`` (multiplier steps this update: one per policy
mini-batch step, ``optim.steps_per_generation`` x ``algo.num_iterations``, with ``multiplier_update: minibatch``;
the paper takes 20 x 5 = 100) and, with NM-PPO, ``proxy_search/*``.
"""
from __future__ import annotations

import logging

import torch

from rlpost.algos.constrained import (ConstrainedAdvParams, LagrangeMultipliers, ProxyPointSearch,
                                      adaptive_kl_coef, component_means)
from rlpost.methods import METHODS, Extras, MethodHooks, Needs, SetupContext, StepContext

log = logging.getLogger("rlpost")


def validate(cfg) -> None:
    """NM-PPO (``proxy_search``) maximises ``method.constrained.eval_metric``: it must be the held-out task metric,
    not the constrained reward models themselves (the paper's F(θ) = −eval, its ground-truth score)."""
    from rlpost.config import ConfigError, component
    if "constrained" not in (cfg.method or {}):
        return
    name, node = component(cfg.algo.advantage)
    if name != "constrained" or not (node or {}).get("proxy_search"):
        return
    metric = (cfg.method["constrained"] or {}).get("eval_metric", "eval/accuracy")
    if metric == "eval/reward_mean" or metric.startswith("eval/reward/"):
        raise ConfigError(f"method.constrained.eval_metric {metric!r}: NM-PPO would maximise the reward models it "
                          "constrains (the over-optimised proxies); name the held-out task metric, e.g. "
                          "eval/crlhf_score with trainer.eval_metrics: [crlhf_score] (the paper's evaluation score)")


@METHODS.register("constrained")
class ConstrainedRLHF(MethodHooks):
    """``method.constrained``: ``eval_metric`` (key of ``Trainer.evaluate()`` that NM-PPO maximises,
    default ``eval/accuracy``), ``kl_target`` (Ziegler adaptive KL target for the KL *loss* coefficient
    ``algo.beta``; None = fixed beta), ``kl_rate`` (η_KL, 0.1). For the paper's PPO / SAT / All baselines use
    the KL in the reward instead (``algo.kl_reward`` with ``controller: adaptive``, rlpost/algos/kl_reward.py):
    a k1 KL loss has zero expected gradient."""

    def __init__(self, eval_metric: str = "eval/accuracy", kl_target: float | None = None, kl_rate: float = 0.1):
        self.eval_metric = eval_metric
        self.kl_target = kl_target
        self.kl_rate = kl_rate
        self.params: ConstrainedAdvParams | None = None
        self.multipliers: LagrangeMultipliers | None = None
        self.search: ProxyPointSearch | None = None
        self.ref_model = None              # frozen initial policy for the KL task when the learner has none
        self.policy = None                 # the policy (KL task: its log-probs when the learner computes none)
        self.logprob_settings = None       # the learner's settings, for those log-prob passes
        self.beta: float | None = None     # the adaptive KL coefficient (kl_target), None when fixed

    # ---------------------------------------------------------------- setup
    def setup(self, ctx: SetupContext) -> Needs:
        from rlpost.config import ConfigError, component

        cfg = ctx.cfg
        name, _ = component(cfg.algo.advantage)
        if name != "constrained" or not isinstance(ctx.advantage_params, ConstrainedAdvParams):
            raise ConfigError("method.constrained needs algo.advantage: {name: constrained, mode: ..., thresholds: ...}")
        p = self.params = ctx.advantage_params
        known = ctx.reward_names
        missing = [c for c in p.components if c not in known]
        if missing:
            raise ConfigError(f"algo.advantage (constrained) names components {missing} that no reward reports; "
                              f"the rewards are {known} (name several reward models with kwargs.name)")
        if p.uses_multipliers:
            self.multipliers = LagrangeMultipliers.from_params(p)
        if p.proxy_search is not None:
            if self.multipliers is None:
                raise ConfigError(f"algo.advantage.proxy_search (NM-PPO) needs a multiplier mode (mu, xi, all), "
                                  f"not {p.mode!r}")
            self.search = ProxyPointSearch(p.components, p.proxy_search)
            self.multipliers.set_thresholds(self.search.thresholds)
        if p.task == "kl":
            if cfg.algo.beta > 0:
                log.warning("constrained %s: the task reward is already -KL; algo.beta=%s adds a second KL "
                            "penalty in the loss (the paper uses none)", p.mode, cfg.algo.beta)
            if not ctx.has_ref_model:
                from rlpost.models.loading import load_model
                self.ref_model = load_model(ctx.model_path, cfg.model, cfg.trainer.device, frozen=True)
            self.policy, self.logprob_settings = ctx.model, ctx.learner_settings
        if self.kl_target is not None:
            if cfg.algo.beta <= 0:
                raise ConfigError("method.constrained.kl_target needs algo.beta > 0 (the adaptive coefficient's start)")
            self.beta = ctx.learner_settings.beta
        return Needs()

    def kl_coef(self) -> float | None:
        return self.beta

    # ---------------------------------------------------------------- per step
    def _components(self, trajectories) -> dict[str, torch.Tensor]:
        """name -> [B] (one value per Batch row: a trajectory's score repeats over its samples, as collate)."""
        out = {}
        for name in self.params.components:
            vals = [t.reward_components.get(name) for t in trajectories for _ in t.samples]
            out[name] = torch.tensor([0.0 if v is None else float(v) for v in vals], dtype=torch.float64)
        return out

    def extras(self, ctx: StepContext) -> Extras:
        from rlpost.learner import batched_logprobs

        extra: dict = {"reward_components": self._components(ctx.trajectories)}
        if self.params.task == "kl":
            old = ctx.fixed.old_logprobs
            if old is None:   # one optimizer pass: the rollout policy is the current model
                old = batched_logprobs(self.policy, ctx.batch, self.logprob_settings, False)[0]
            ref = ctx.fixed.ref_logprobs
            if ref is None:
                ref = batched_logprobs(self.ref_model, ctx.batch, self.logprob_settings, False)[0]
            extra.update(old_logprobs=old, ref_logprobs=ref)
        if self.multipliers is not None:
            extra.update(self.multipliers.extra())
        self._last_components = extra["reward_components"]
        return Extras(advantage=extra)

    def after_update(self, ctx: StepContext) -> dict:
        out: dict = {}
        comps = self._last_components
        if self.multipliers is not None:
            if self.params.multiplier_update == "minibatch":
                for rows in ctx.mini_batches:   # the learner's optimizer steps, in order
                    out.update(self.multipliers.update(component_means(comps, index=rows)))
                n_steps = len(ctx.mini_batches)
            else:
                out.update(self.multipliers.update(component_means(comps)))
                n_steps = 1
            # multiplier steps this update: steps_per_generation x num_iterations with multiplier_update minibatch
            # (the paper: 20 minibatches x 5 epochs = 100), 1 with rollout
            out["constrained/multiplier_steps"] = float(n_steps)
            thresholds = dict(zip(self.multipliers.names, self.multipliers.thresholds.tolist()))
        else:
            thresholds = dict(self.params.thresholds)
        out.update({f"constrained/threshold/{n}": v for n, v in thresholds.items()})
        if self.search is not None:
            if self.search.tick():
                score = ctx.evaluate()   # the updated policy
                if self.eval_metric not in score:
                    raise KeyError(f"method.constrained.eval_metric {self.eval_metric!r} is not an evaluate() key: "
                                   f"{sorted(score)}")
                new = self.search.report(score[self.eval_metric], component_means(comps))
                out["proxy_search/eval_score"] = float(score[self.eval_metric])
                if new is not None:
                    self.multipliers.set_thresholds(new)
                    log.info("NM-PPO: next proxy points %s", {k: round(v, 4) for k, v in new.items()})
            out.update(self.search.metrics())
        if self.beta is not None and "kl" in ctx.update_metrics:
            self.beta = adaptive_kl_coef(self.beta, ctx.update_metrics["kl"], self.kl_target, rate=self.kl_rate)
            out["constrained/kl_coef"] = self.beta
        return out

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"multipliers": self.multipliers.state_dict() if self.multipliers else None,
                "search": self.search.state_dict() if self.search else None,
                "beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if self.multipliers is not None and state.get("multipliers") is not None:
            self.multipliers.load_state_dict(state["multipliers"])
        if self.search is not None and state.get("search") is not None:
            self.search.load_state_dict(state["search"])
        if state.get("beta") is not None and self.beta is not None:
            self.beta = state["beta"]
