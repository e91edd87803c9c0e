"""KL estimators between the policy and the reference, per token (Schulman 2020, "Approximating KL").

With log-ratio  d = log pi_ref - log pi_theta  (samples drawn from pi_theta):
  k1 = -d                     unbiased, high variance, can be negative
  k2 = d^2 / 2                biased, low variance
  k3 = exp(d) - d - 1         unbiased, >= 0 (GRPO's choice)
"""
from __future__ import annotations

import torch

from rlpost.algos.core import KL_ESTIMATORS


@KL_ESTIMATORS.register("k1")
def k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log pi_theta - log pi_ref."""
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k2")
def k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = (log pi_theta - log pi_ref)^2 / 2."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


@KL_ESTIMATORS.register("k3")
def k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = exp(ref - logp) - (ref - logp) - 1; the log-ratio is clamped to [-20, 20] for stability."""
    d = (ref_logprobs - logprobs).clamp(-20.0, 20.0)
    return torch.exp(d) - d - 1.0
