"""Sampler/learner mismatch: truncated importance sampling (TIS) and the KL between the two policies.

The rollout engine (vLLM) and the learner compute log pi(o_t | .) with different kernels, so the tokens are drawn
from pi_sampler while the loss assumes pi_old (the learner's own no-grad log-probs). The correction reweights
the per-token loss by the ratio of the two, truncated (TRL's ``vllm_importance_sampling_*``, Yao et al. 2025,
"Your efficient RL framework secretly brings you off-policy RL training"):

    token level:     rho_it = exp(log pi_old(o_it) - log pi_sampler(o_it))                       [B,T]
    sequence level:  rho_i  = exp(sum_t m_it (log pi_old(o_it) - log pi_sampler(o_it)))          [B,1]
    *_truncate:      w = clamp(rho, C_min, C_max)            (C_min None: no lower bound)
    *_mask:          w = rho where C_min <= rho <= C_max, else 0

``w`` is a constant (no gradient); the learner multiplies its per-token loss matrix by it.

    KL(sampler || learner) ~ mean_t [ r - 1 - log r ],  r = pi_learner / pi_sampler,

the k3 estimator (Schulman, "Approximating KL divergence"), unbiased and >= 0 for tokens drawn from the sampler.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlpost.algos.core import masked_mean

MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@dataclass
class ISCorrection:
    mode: str = "sequence_mask"        # token_truncate | token_mask | sequence_truncate | sequence_mask
    clip_max: float | None = 3.0       # C_max
    clip_min: float | None = None      # C_min

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"vllm_importance_sampling_mode must be one of {', '.join(MODES)}, got {self.mode!r}")


def is_correction_from_config(algo) -> ISCorrection | None:
    """AlgoConfig -> ISCorrection, or None when ``vllm_importance_sampling_correction`` is off."""
    if not algo.vllm_importance_sampling_correction:
        return None
    return ISCorrection(algo.vllm_importance_sampling_mode, algo.vllm_importance_sampling_clip_max,
                        algo.vllm_importance_sampling_clip_min)


@torch.no_grad()
def importance_weights(learner_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor,
                       corr: ISCorrection) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated IS weights, [B,T] (token modes) or [B,1] (sequence modes), and their metrics.

    learner_logprobs, sampler_logprobs, mask: [B,T] (mask 1 = trained token)."""
    mask = mask.float()
    diff = (learner_logprobs.float() - sampler_logprobs.float()) * mask            # [B,T]
    sequence = corr.mode.startswith("sequence")
    log_ratio = diff.sum(-1, keepdim=True) if sequence else diff                   # [B,1] | [B,T]
    ratio = torch.exp(log_ratio)
    lo = corr.clip_min if corr.clip_min is not None else -math.inf
    hi = corr.clip_max if corr.clip_max is not None else math.inf
    outside = (ratio < lo) | (ratio > hi)
    if corr.mode.endswith("truncate"):
        weights = ratio.clamp(min=lo, max=hi)
    else:
        weights = ratio.masked_fill(outside, 0.0)
    valid = (mask.sum(-1, keepdim=True) > 0) if sequence else mask.bool()         # rows / tokens that count
    w = weights[valid]
    metrics = {"rollout/is_ratio/mean": w.mean().item() if w.numel() else 1.0,
               "rollout/is_ratio/min": w.min().item() if w.numel() else 1.0,
               "rollout/is_ratio/max": w.max().item() if w.numel() else 1.0,
               "rollout/is_ratio/outside_frac": outside[valid].float().mean().item() if w.numel() else 0.0}
    return weights, metrics


@torch.no_grad()
def sampler_learner_kl(learner_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(pi_sampler || pi_learner) per trained token, averaged (a 0-dim tensor)."""
    log_r = (learner_logprobs.float() - sampler_logprobs.float()).clamp(-20.0, 20.0)
    return masked_mean(torch.exp(log_r) - 1.0 - log_r, mask.float())
