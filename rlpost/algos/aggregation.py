"""Reduce a per-token loss matrix [B,T] to a scalar. This is where GRPO, DAPO and Dr.GRPO differ.

All take ``(loss_mat [B,T], mask [B,T], max_len: int)``; rows with an empty mask contribute 0.
"""
from __future__ import annotations

import torch

from rlpost.algos.core import AGGREGATIONS


@AGGREGATIONS.register("token-mean")
def token_mean(loss_mat: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """DAPO:  sum_{i,t} m_it l_it / sum_{i,t} m_it."""
    return (loss_mat * mask).sum() / mask.sum().clamp(min=1)


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(loss_mat: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """GRPO:  (1/B) sum_i [ sum_t m_it l_it / sum_t m_it ]."""
    per_seq = (loss_mat * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.mean()


@AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(loss_mat: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """(1/B) sum_i sum_t m_it l_it."""
    return (loss_mat * mask).sum(-1).mean()


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(loss_mat: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """Dr.GRPO:  sum_{i,t} m_it l_it / (B * L_max), L_max = ``max_len`` (the generation cap)."""
    return (loss_mat * mask).sum() / (loss_mat.shape[0] * max_len)
