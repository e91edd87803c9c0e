"""KL in the reward: a per-token penalty −β·KL_t(π_old ‖ π_ref) on the sampled tokens, β fixed or adaptive.

Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences", arXiv 1909.08593, §2.2) optimise
R(x, y) − β log(π(y|x) / π_ref(y|x)); RL4LMs, OpenRLHF and verl (``algorithm.use_kl_in_reward``) do it by
subtracting a per-token KL estimate from the token rewards. With m the response mask, k the per-token KL
estimator of :mod:`rlpost.algos.kl` applied to (log π_old, log π_ref) and R_i the scored outcome reward:

    penalty        p_it = β · k(log π_old_it, log π_ref_it) · m_it                              [B,T]
    token rewards  r_it = −p_it + R_i · 1[t = last trained token of i]                          [B,T]
    sequence       R'_i = Σ_t r_it = R_i − β Σ_t m_it KL_it                                     [B]

Outcome estimators (GRPO, RLOO, ...) use R'_i, as verl's do (they take ``token_level_rewards.sum(-1)``);
a per-token estimator (``reinforce_pp``) uses the returns-to-go Σ_{s>=t} r_is.

Unlike a k1 KL *loss* (``algo.beta`` with ``kl_estimator: k1``), whose gradient ∇ log π_θ has zero
expectation under on-policy samples, the penalty here multiplies the score function through the
advantage, so it is the policy gradient of the KL-regularised objective.

Controllers (``algo.kl_reward.controller``):

    fixed      β constant
    adaptive   e = clip(KL / target − 1, −0.2, 0.2),   β ← β · (1 + e · n / horizon)

with KL the step's mean sequence KL, mean_i Σ_t m_it KL_it, and n the number of samples (completions) in
the step: the definition of Ziegler et al. (lm-human-preferences ``AdaptiveKLController``, called with
n = the batch size), kept by TRL's PPO and verl (``kl_ctrl.horizon``). verl feeds its controller the
per-token mean KL instead of the sequence sum; rlpost follows Ziegler, so ``target`` is a sequence KL.
The coefficient used for a step's penalty is the one before that step's update.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlpost.algos.core import KL_ESTIMATORS
from rlpost.registry import Registry

KL_CONTROLLERS = Registry("KL controller")
ERROR_CLIP = 0.2   # Ziegler et al.: the proportional error is clipped to [-0.2, 0.2]


def kl_penalty(old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, coef: float,
               estimator: str = "k1") -> torch.Tensor:
    """p_it = β · k(log π_old_it, log π_ref_it) · m_it, all [B,T]; ``estimator`` is k1 | k2 | k3."""
    return coef * KL_ESTIMATORS.get(estimator)(old_logprobs, ref_logprobs) * mask


def sequence_kl(kl_tokens: torch.Tensor, traj_index: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_t x_it per row, [B,T] -> [B]; with ``traj_index`` ([B], rows of one multi-call trajectory, e.g. an APR
    tree) every row gets its trajectory's total Σ_{rows j of traj(i)} Σ_t x_jt."""
    per_row = kl_tokens.to(torch.float64).sum(-1)
    if traj_index is None:
        return per_row
    totals = torch.zeros(int(traj_index.max()) + 1 if traj_index.numel() else 0, dtype=per_row.dtype)
    return totals.index_add_(0, traj_index, per_row)[traj_index]


def last_token_onehot(mask: torch.Tensor) -> torch.Tensor:
    """[B,T]: 1 at the last position with m_it > 0 of each row (rows without one: all 0)."""
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    last = torch.where(mask > 0, positions, torch.full_like(positions, -1)).max(-1).values   # [B]
    return (positions == last[:, None]).to(mask.dtype) * (last[:, None] >= 0).to(mask.dtype)


def shape_rewards(scores: torch.Tensor, penalty: torch.Tensor, mask: torch.Tensor,
                  traj_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(R' [B], token rewards r [B,T], sequence penalty β Σ_t p [B]) from the scores R [B] and the penalty p [B,T]:

        R'_i = R_i − Σ_t p_it,     r_it = −p_it + R_i · 1[t = last],     Σ_t r_it = R'_i.

    R' keeps the dtype of ``scores``; with ``traj_index`` the penalty of a multi-call trajectory is its rows' total
    (each row's r_it stays its own: per-token estimators are not used on multi-call trajectories)."""
    seq_penalty = sequence_kl(penalty, traj_index)                                          # [B] float64
    rewards = (scores.to(torch.float64) - seq_penalty).to(scores.dtype)
    token_rewards = -penalty.to(torch.float64) + scores.to(torch.float64)[:, None] * last_token_onehot(mask)
    return rewards, token_rewards, seq_penalty


@dataclass
class FixedKLController:
    """β constant."""
    coef: float

    @classmethod
    def create(cls, coef: float, target: float | None, horizon: float) -> "FixedKLController":
        return cls(coef)

    def update(self, kl: float, n: int) -> float:
        return self.coef

    def state_dict(self) -> dict:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict) -> None:
        self.coef = float(state["coef"])


@dataclass
class AdaptiveKLController:
    """Ziegler et al. 2019, §2.2:  e = clip(KL / target − 1, −0.2, 0.2),  β ← β (1 + e n / horizon).

    ``kl``: the step's mean sequence KL; ``n``: samples in the step. Returns the new β."""
    coef: float
    target: float
    horizon: float

    @classmethod
    def create(cls, coef: float, target: float | None, horizon: float) -> "AdaptiveKLController":
        return cls(coef, target, horizon)

    def update(self, kl: float, n: int) -> float:
        error = min(max(kl / self.target - 1.0, -ERROR_CLIP), ERROR_CLIP)
        self.coef = self.coef * (1.0 + error * n / self.horizon)
        return self.coef

    def state_dict(self) -> dict:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict) -> None:
        self.coef = float(state["coef"])


KL_CONTROLLERS.add("fixed", FixedKLController)
KL_CONTROLLERS.add("adaptive", AdaptiveKLController)


def build_kl_controller(controller: str, coef: float, target: float | None, horizon: float):
    """The controller named by ``algo.kl_reward.controller`` (fixed | adaptive)."""
    return KL_CONTROLLERS.get(controller).create(coef, target, horizon)
