"""The learner from a config: its settings (policy loss and aggregation, KL, entropy, micro-batching, the
off-policy correction), the optimizer, scheduler and LR controller, and the methods' needs (entropies, sum_p_sq,
old-forward hooks, a controller of their own)."""
from __future__ import annotations

import dataclasses

from rlpost.algos import build_params
from rlpost.algos.losses import DEFAULT_AGGREGATION
from rlpost.checks import registry_entry
from rlpost.config import ConfigError, component, explicit_fields
from rlpost.learner import Learner, LearnerSettings, build_optimizer, build_scheduler
from rlpost.methods import Needs
from rlpost.rollout.schedule import is_settings


def learner_settings(cfg, need_old_ref: bool) -> LearnerSettings:
    """``algo`` / ``optim`` -> :class:`LearnerSettings`; ``need_old_ref``: KL in the reward needs the old and
    reference log-probs of every batch."""
    from rlpost.algos import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
    from rlpost.algos.mismatch import is_correction_from_config
    a = cfg.algo
    name, overrides = component(a.loss)
    entry = registry_entry(POLICY_LOSSES, name, "algo.loss")
    loss_params = build_params(entry.params, explicit_fields(a), overrides, where=f"algo.loss ({name})")
    agg = DEFAULT_AGGREGATION.get(name, "token-mean") if a.loss_agg == "auto" else a.loss_agg
    corrected = dataclasses.replace(a, **is_settings(cfg))   # async_level > 0: on by default (rollout/schedule.py)
    registry_entry(AGGREGATIONS, agg, "algo.loss_agg")
    registry_entry(KL_ESTIMATORS, a.kl_estimator, "algo.kl_estimator")
    return LearnerSettings(
        loss_name=name, loss_params=loss_params, loss_agg=agg,
        max_completion_length=cfg.rollout.max_completion_length, temperature=cfg.rollout.temperature or 1.0,
        beta=a.beta, kl_estimator=a.kl_estimator, entropy_coef=a.entropy_coef, num_iterations=a.num_iterations,
        steps_per_generation=cfg.optim.steps_per_generation, micro_batch_size=cfg.optim.micro_batch_size,
        max_grad_norm=cfg.optim.max_grad_norm, vllm_is=is_correction_from_config(corrected),
        max_consecutive_skipped_steps=cfg.optim.max_consecutive_skipped_steps,
        logprob_chunk_size=cfg.optim.logprob_chunk_size, padding_free=cfg.optim.padding_free,
        shared_prefix=cfg.optim.shared_prefix, max_tokens_per_micro_batch=cfg.optim.max_tokens_per_micro_batch,
        top_entropy_quantile=a.top_entropy_quantile, need_old_ref=need_old_ref)


def build_lr_controller(cfg):
    """``algo.lr_controller`` or None."""
    from rlpost.algos.lr_controllers import LR_CONTROLLERS
    name, overrides = component(cfg.algo.lr_controller)
    if name is None:
        return None
    entry = registry_entry(LR_CONTROLLERS, name, "algo.lr_controller")
    return entry.fn(build_params(entry.params, None, overrides, where=f"algo.lr_controller ({name})"))


def build_learner(cfg, model, ref_model, settings: LearnerSettings, needs: Needs, dist) -> Learner:
    """The learner with the methods' needs (entropy / sum_p_sq flags, old-forward hooks, LR controller), wrapped
    for DDP / DeepSpeed by ``dist`` (a no-op in a single process)."""
    settings = dataclasses.replace(settings, need_entropy=needs.entropies, need_sum_p_sq=needs.sum_p_sq)
    optimizer = build_optimizer(model, cfg.optim)
    total_opt_steps = cfg.trainer.max_steps * cfg.optim.steps_per_generation * cfg.algo.num_iterations
    scheduler = build_scheduler(optimizer, cfg.optim, total_opt_steps)
    lr_controller = build_lr_controller(cfg)
    if needs.lr_controller is not None:
        if lr_controller is not None:
            raise ConfigError("algo.lr_controller is set, but an active method provides its own LR controller: "
                              "drop algo.lr_controller")
        lr_controller = needs.lr_controller
    learner = Learner(model, optimizer, scheduler, settings, ref_model=ref_model, lr_controller=lr_controller,
                      old_forward_hooks=needs.old_forward_hooks)
    dist.wrap_learner(learner)
    return learner
