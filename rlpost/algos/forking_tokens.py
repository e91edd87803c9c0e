"""High-entropy ("forking") token selection: ``algo.top_entropy_quantile`` (TRL's name).

Wang et al. 2025, "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective RL for LLM Reasoning":
the policy-gradient term is kept only for the batch's top-rho fraction of response tokens by entropy,

    tau = Quantile_{1 - rho}( { H_t : t a response token of the batch } )        (linear interpolation)
    m_t = 1[H_t >= tau] * response_mask_t
    L   = agg( m_t * loss_t + beta * KL_t - entropy_coef * H_t )

with H_t the entropy of the sampling-time policy pi_old at token t. The paper uses rho = 0.2; rho = 1 keeps every
token. As in TRL the mask multiplies the policy term only and the aggregation's normaliser is unchanged.

Reading chosen (documented in docs/algos/forking_tokens.md): tau is computed once per batch from pi_old's entropies,
so the selection does not depend on ``optim.micro_batch_size`` (TRL takes the quantile per micro-batch of the
current policy; the two coincide when one micro-batch holds the batch and num_iterations = 1).
"""
from __future__ import annotations

import torch


def high_entropy_mask(entropies: torch.Tensor, response_mask: torch.Tensor, rho: float) -> torch.Tensor:
    """m [B,T] float: 1 where the token is a response token with entropy >= the batch's (1 - rho)-quantile."""
    on = response_mask.bool()
    if rho >= 1.0 or not on.any():
        return on.float()
    tau = torch.quantile(entropies[on].float(), 1.0 - rho)
    return ((entropies >= tau) & on).float()
