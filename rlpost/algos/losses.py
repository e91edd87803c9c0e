"""Clipped policy-gradient losses (PPO/GRPO/DAPO/Dr.GRPO/GSPO) as per-token loss matrices.

A loss returns ``(loss_mat [B,T], metrics)``; ``algo.loss_agg`` then reduces it
(see :mod:`rlpost.algos.aggregation`). The names ``grpo``, ``dapo``, ``dr_grpo`` and ``bnpo`` are
TRL's ``loss_type`` presets: the same clipped surrogate, differing only in the default aggregation
(:data:`DEFAULT_AGGREGATION`). ``gspo`` uses the length-normalised sequence ratio.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlpost.algos.core import POLICY_LOSSES, LossInput, masked_mean

DEFAULT_AGGREGATION = {
    "grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dapo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm", "gspo": "seq-mean-token-mean", "clip": "token-mean",
}


@dataclass
class ClipParams:
    epsilon: float = 0.2                 # lower clip: ratio >= 1 - epsilon
    epsilon_high: float | None = None    # upper clip (DAPO clip-higher 0.28); None = epsilon
    dual_clip_c: float | None = None     # dual-clip bound c > 1 for A < 0 (Ye et al. 2020); None = off
    delta: float | None = None           # TRL/INTELLECT-2 two-sided clip: ratio <= delta for A < 0
    importance_sampling_level: str = "token"   # "token" or "sequence" (GSPO)

    def __post_init__(self):
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        if self.importance_sampling_level not in ("token", "sequence"):
            raise ValueError("algo.importance_sampling_level must be 'token' or 'sequence', "
                             f"got {self.importance_sampling_level!r}")
        if self.dual_clip_c is not None and self.dual_clip_c <= 1.0:
            raise ValueError(f"algo.dual_clip_c must be > 1, got {self.dual_clip_c}")


@dataclass
class GSPOParams(ClipParams):
    epsilon: float = 3e-4
    epsilon_high: float | None = 4e-4
    importance_sampling_level: str = "sequence"


def log_ratio(inp: LossInput, level: str) -> torch.Tensor:
    """Token level:    log r_it = l_it - l^old_it.
    Sequence level (GSPO):  log s_i = (1/|y_i|) sum_t m_it (l_it - l^old_it), with the
    gradient flowing per token:  log s_it = sg[log s_i] + l_it - sg[l_it]."""
    diff = inp.logprobs - inp.old_logprobs
    if level == "token":
        return diff
    seq = masked_mean(diff, inp.response_mask, dim=-1)  # [B]
    return seq.detach()[:, None] + inp.logprobs - inp.logprobs.detach()


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, params: ClipParams):
    """PPO clip with optional clip-higher, dual-clip and delta:

        l = max(-A r, -A clip(r, 1-eps_low, 1+eps_high))
        dual-clip (A<0):  l = min(l, -A c)
        delta (A<0):      r is first capped at delta
    Returns (loss_mat, is_clipped [bool]).
    """
    if params.delta is not None:
        ratio = torch.where(adv < 0, ratio.clamp(max=params.delta), ratio)
    clipped_ratio = ratio.clamp(1.0 - params.epsilon, 1.0 + params.epsilon_high)
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * clipped_ratio
    loss = torch.maximum(loss_unclipped, loss_clipped)
    is_clipped = loss_clipped > loss_unclipped
    if params.dual_clip_c is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * params.dual_clip_c), loss)
    return loss, is_clipped


def clip_loss(inp: LossInput, params: ClipParams):
    """Clipped surrogate on token (PPO/GRPO/DAPO) or sequence (GSPO) importance ratios."""
    log_r = log_ratio(inp, params.importance_sampling_level).clamp(-20.0, 20.0)
    ratio = torch.exp(log_r)
    loss, is_clipped = clipped_surrogate(ratio, inp.advantages, params)
    mask = inp.response_mask
    with torch.no_grad():
        metrics = {
            "policy/clipfrac": masked_mean(is_clipped.float(), mask).item(),
            "policy/ratio_mean": masked_mean(ratio, mask).item(),
            "policy/approx_kl": masked_mean(0.5 * (inp.logprobs - inp.old_logprobs) ** 2, mask).item(),
        }
    return loss, metrics


for _name in ("clip", "grpo", "dapo", "dr_grpo", "bnpo"):
    POLICY_LOSSES.add(_name, clip_loss, ClipParams)
POLICY_LOSSES.add("gspo", clip_loss, GSPOParams)
