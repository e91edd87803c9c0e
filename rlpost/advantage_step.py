"""The advantage step of the RL cycle: the batch's rewards (with ``algo.kl_reward``: shaped by the KL to the
reference, whose coefficient controller updates here), the registered advantage estimator (``algo.advantage``),
and, for trajectories of several samples (APR's call trees, A²FM's tool turns), one advantage per trajectory given
to each of its rows. The estimators themselves are pure math in rlpost/algos/."""
from __future__ import annotations

import dataclasses

import torch

from rlpost.algos import ADVANTAGES, AdvantageInput, build_params
from rlpost.algos.advantages import per_trajectory
from rlpost.algos.kl_reward import build_kl_controller, kl_penalty, sequence_kl, shape_rewards
from rlpost.algos.turn_credit import TURN_ESTIMATORS, per_trajectory_turns
from rlpost.checks import registry_entry
from rlpost.config import component, explicit_fields


def kl_reward_controller(k):
    """The algo.kl_reward controller (rlpost/algos/kl_reward.py), or None when coef is 0 (off)."""
    return build_kl_controller(k.controller, k.coef, k.target, k.horizon) if k.coef > 0 else None


class AdvantageStep:
    """algo.advantage with its params; the algo.kl_reward controller (None when off); dist: the learner's runtime
    (the KL controller's statistic is over all ranks)."""

    def __init__(self, algo_cfg, dist):
        name, overrides = component(algo_cfg.advantage)
        entry = registry_entry(ADVANTAGES, name, "algo.advantage")
        self.fn = entry.fn
        self.by_trajectory = per_trajectory_turns if name in TURN_ESTIMATORS else per_trajectory
        self.params = build_params(entry.params, explicit_fields(algo_cfg), overrides, where=f"algo.advantage ({name})")
        self.kl_cfg, self.kl_controller, self.dist = algo_cfg.kl_reward, kl_reward_controller(algo_cfg.kl_reward), dist

    def __call__(self, batch, fixed, method_extra: dict | None = None) -> tuple[torch.Tensor, dict]:
        """[B,T] advantages and their metrics. Trajectories of several rows: group statistics over trajectories,
        each row gets its trajectory's advantage (rlpost/algos/advantages.py ``per_trajectory``; per-turn
        estimators: each row's tokens of turn k get its trajectory's turn-k advantage, rlpost/algos/turn_credit.py
        ``per_trajectory_turns``)."""
        entropies = fixed.old_entropies if fixed.old_entropies is not None else batch.sampler_entropies
        multi_row = batch.traj_index is not None and batch.traj_index.unique().numel() < len(batch)
        shaped, kl_metrics = self.kl_shaped_rewards(batch, fixed, multi_row)
        inp = AdvantageInput(**{"rewards": batch.rewards, **shaped}, group_ids=batch.group_ids,
                             response_mask=batch.response_mask, entropies=entropies,
                             old_logprobs=fixed.old_logprobs, ref_logprobs=fixed.ref_logprobs,
                             sum_p_sq=fixed.sum_p_sq, truncated=batch.truncated, turn_index=batch.turn_index,
                             turn_rewards=batch.turn_rewards, turn_states=batch.turn_states)
        inp = dataclasses.replace(inp, **(method_extra or {}))   # a method's inputs (fields of AdvantageInput)
        if multi_row:
            advantages, metrics = self.by_trajectory(self.fn, self.params, inp, batch.traj_index)
        else:
            advantages, metrics = self.fn(inp, self.params)
        return advantages, {**metrics, **kl_metrics}

    def kl_shaped_rewards(self, batch, fixed, multi_row: bool) -> tuple[dict, dict]:
        """algo.kl_reward: the AdvantageInput fields rewards (score − β Σ_t KL_t), token_rewards and kl_penalty
        (rlpost/algos/kl_reward.py), and the controller's update from this step's mean sequence KL over all ranks
        (the penalty uses the coefficient from before the update). ({}, {}) when off."""
        if self.kl_controller is None:
            return {}, {}
        mask = batch.response_mask
        traj_index = batch.traj_index if multi_row else None
        coef = self.kl_controller.coef
        kl_tokens = kl_penalty(fixed.old_logprobs, fixed.ref_logprobs, mask, 1.0, self.kl_cfg.estimator)   # [B,T]
        rewards, token_rewards, _ = shape_rewards(batch.rewards, coef * kl_tokens, mask, traj_index)
        seq_kl = sequence_kl(kl_tokens, traj_index)                    # [B]: Σ_t KL_t of the row's trajectory
        count = len(seq_kl) if traj_index is None else int(traj_index.unique().numel())   # samples n (trajectories)
        total = self.dist.all_reduce_sum(float(kl_tokens.to(torch.float64).sum()))
        count = self.dist.global_count(count)
        kl_mean = total / max(count, 1)                                # mean over trajectories of their sequence KL
        self.kl_controller.update(kl_mean, count)
        return ({"rewards": rewards, "token_rewards": None if multi_row else token_rewards, "kl_penalty": coef * seq_kl},
                {"kl_reward/coef": coef, "kl_reward/kl_mean": kl_mean})

    def state_dict(self) -> dict | None:
        return self.kl_controller.state_dict() if self.kl_controller is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.kl_controller is not None and state is not None:
            self.kl_controller.load_state_dict(state)
