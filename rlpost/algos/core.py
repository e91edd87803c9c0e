"""Registries, the typed inputs every algorithm function receives, and shared helpers."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from rlpost.registry import Registry

ADVANTAGES = Registry("advantage estimator")
POLICY_LOSSES = Registry("policy loss")
AGGREGATIONS = Registry("loss aggregation")
KL_ESTIMATORS = Registry("KL estimator")


@dataclass
class AdvantageInput:
    """What an advantage estimator may read. B = completions in the batch, T = padded length.

    rewards:        [B] float, scalar outcome reward per completion (with ``algo.kl_reward``: the score minus
                    the KL penalty, R_i − β Σ_t KL_it; rlpost/algos/kl_reward.py)
    group_ids:      [B] long, completions sharing a prompt share an id (group size G)
    response_mask:  [B,T] float, 1 for completion tokens that count in the loss
    entropies:      [B,T] float or None, per-token entropy under the old policy (nats)
    token_rewards:  [B,T] float64 or None (``algo.kl_reward`` off): r_it = −β KL_it + R_i 1[t = last], summing
                    to ``rewards``; per-token estimators (returns-to-go) read it
    kl_penalty:     [B] float64 or None: β Σ_t KL_it, already subtracted from ``rewards``; an estimator that
                    builds its own reward from the components (constrained) subtracts it itself
    old_logprobs:   [B,T] or None, log pi_old of the sampled tokens (OBLR-PO's score-norm proxy, constrained's
                    KL task)
    ref_logprobs:   [B,T] or None, log pi_ref of the sampled tokens (constrained's KL task)
    sum_p_sq:       [B,T] or None, sum_v pi_old(v)^2 per position (OBLR-PO, rlpost/algos/oblr_po.py)
    truncated:      [B] bool or None, the completion hit the length cap (ADORA)
    score_sq_norm:  [B] or None, ||grad log pi||^2 per sequence (OBLR-PO weight=exact)
    reward_components: name -> [B] or None, each reward model's score per completion (constrained RLHF)
    multiplier_weights: [N] tensor or name -> float or None, the Lagrange multipliers' weights (constrained)
    thresholds:     name -> θ_i or None, overrides the estimator's own thresholds (constrained, NM-PPO)
    turn_index:     [B,T] long or None (multi_turn rollouts): the assistant turn of each completion token, -1 for
                    observation tokens (rlpost/batch.py ``Batch.turn_index``)
    turn_rewards:   [B,K] float64 or None: the environment's per-turn rewards (``step``), NaN past a row's turns
    turn_states:    [B,K] long or None: per turn, a key of the state it started from (equal keys = the same state)
    """
    rewards: torch.Tensor
    group_ids: torch.Tensor
    response_mask: torch.Tensor
    entropies: torch.Tensor | None = None
    token_rewards: torch.Tensor | None = None
    kl_penalty: torch.Tensor | None = None
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    sum_p_sq: torch.Tensor | None = None
    truncated: torch.Tensor | None = None
    score_sq_norm: torch.Tensor | None = None
    reward_components: dict[str, torch.Tensor] | None = None
    multiplier_weights: Any = None
    thresholds: dict[str, float] | None = None
    turn_index: torch.Tensor | None = None
    turn_rewards: torch.Tensor | None = None
    turn_states: torch.Tensor | None = None


@dataclass
class LossInput:
    """What a policy loss may read. All tensors are [B,T] unless noted.

    logprobs:       log pi_theta(o_t | .) of the sampled tokens, with grad
    old_logprobs:   log pi_old, detached (equals logprobs.detach() when num_iterations == 1)
    advantages:     per-token advantages
    response_mask:  1 for tokens in the loss
    entropies:      current per-token entropy (detached) or None
    old_entropies:  per-token entropy under pi_old or None
    entropy_stats:  HAPO's entropy statistics of the step's batch (an ``EntropyStats`` or its dict) or None
    """
    logprobs: torch.Tensor
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    response_mask: torch.Tensor
    entropies: torch.Tensor | None = None
    old_entropies: torch.Tensor | None = None
    entropy_stats: Any = None


def build_params(params_cls: type | None, shared: dict[str, Any] | None = None,
                 overrides: dict[str, Any] | None = None, where: str = "algo"):
    """Instantiate an entry's params dataclass.

    ``shared`` holds the TRL-named knobs of the config section (epsilon, epsilon_high, scale_rewards...);
    only those the dataclass declares are used. ``overrides`` is the component's own YAML node and must
    name only declared fields, with values of the declared types (a ConfigError names ``where``, the key
    and the known fields or the expected type).
    """
    from rlpost.config import ConfigError, check_field_types
    if params_cls is None:
        if overrides:
            raise ConfigError(f"{where} takes no parameters, got {sorted(overrides)}")
        return None
    names = {f.name for f in dataclasses.fields(params_cls)}
    kwargs = {k: v for k, v in (shared or {}).items() if k in names}
    for key, value in (overrides or {}).items():
        if key not in names:
            import difflib
            close = difflib.get_close_matches(key, sorted(names), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {where}.{key}{hint} known: {', '.join(sorted(names))}")
        kwargs[key] = value
    return params_cls(**check_field_types(params_cls, kwargs, where))


def group_stats(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-element group mean, unbiased group std (0 for groups of one) and group size, all [B]."""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    num_groups = counts.numel()
    values = values.to(torch.float64)
    sums = torch.zeros(num_groups, dtype=values.dtype).index_add_(0, inverse, values)
    means = sums / counts
    sq = torch.zeros(num_groups, dtype=values.dtype).index_add_(0, inverse, (values - means[inverse]) ** 2)
    var = torch.where(counts > 1, sq / (counts - 1).clamp(min=1), torch.zeros_like(sq))
    return means[inverse], var.sqrt()[inverse], counts[inverse].to(values.dtype)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """sum(v*m)/max(sum(m), 1): 0 for an empty mask rather than NaN."""
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def entropy_from_logprobs(logp: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each distribution over the last dimension, from its log-probabilities [..., V] -> [...]:

        H(pi) = -sum_v pi_v log pi_v,    pi_v = exp(logp_v),    logp = log_softmax(z / T)

    A token with pi_v = 0 (logp_v = -inf, e.g. a logit masked to -inf) adds 0, the limit of p log p, not NaN.
    Differentiable (the entropy bonus trains through it). The one copy in rlpost outside the rollout engines.
    """
    p = logp.exp()
    return -(p * logp).masked_fill_(p == 0, 0.0).sum(-1)  # in place: no second [..., V] float tensor
