"""DAPO dynamic sampling: keep only groups whose rewards are not all equal (Yu et al. 2025, eq. 11).

0 < |{o_i : correct}| < G  is the paper's condition; for real-valued rewards we keep groups whose
reward std exceeds ``tol``.
"""
from __future__ import annotations

import torch

from rlpost.algos.core import group_stats


def informative_groups(rewards: torch.Tensor, group_ids: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """[B] bool: True where the completion's group has non-zero reward std (a usable gradient)."""
    _, std, size = group_stats(rewards, group_ids)
    return (std > tol) & (size > 1)
