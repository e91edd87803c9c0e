"""Outcome-reward advantage estimators: GRPO (group/batch/no scaling), Dr.GRPO, RLOO, REINFORCE++ (+ baseline).

Every estimator returns per-token advantages [B,T] (a sequence advantage broadcast over its
completion tokens and zeroed outside the mask) and a metrics dict.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlpost.algos.core import ADVANTAGES, AdvantageInput, group_stats


@dataclass
class GRPOAdvParams:
    scale_rewards: str = "group"   # "group" | "batch" | "none": the std that divides (R - mean_group)
    eps: float = 1e-4              # added to the std (TRL uses 1e-4)
    std: str = "unbiased"          # "unbiased" (torch/TRL) | "population" (numpy; APR's TinyRL, A²FM's APO)

    def __post_init__(self):
        if self.scale_rewards is False or self.scale_rewards is None:
            self.scale_rewards = "none"
        if self.scale_rewards is True:
            self.scale_rewards = "group"
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"algo.scale_rewards must be group, batch or none, got {self.scale_rewards!r}")
        if self.std not in ("unbiased", "population"):
            raise ValueError(f"algo.advantage std must be unbiased or population, got {self.std!r}")


def broadcast(seq_adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] -> [B,T]: A_i on every completion token of i, 0 elsewhere."""
    return seq_adv.to(mask.dtype)[:, None] * mask


def _sequence_metrics(seq_adv: torch.Tensor, rewards: torch.Tensor, group_ids: torch.Tensor) -> dict:
    _, std, _ = group_stats(rewards, group_ids)
    return {"advantage/mean": seq_adv.mean().item(), "advantage/abs_mean": seq_adv.abs().mean().item(),
            "reward/frac_zero_std": (std < 1e-8).float().mean().item()}


@ADVANTAGES.register("grpo", params=GRPOAdvParams)
def grpo(inp: AdvantageInput, params: GRPOAdvParams):
    """GRPO (Shao et al. 2024):  A_i = (R_i - mean_{j in g(i)} R_j) / (std_scale + eps).

    std_scale is the std of i's group (``scale_rewards=group``), of the whole batch (``batch``, as in
    REINFORCE++/Lite PPO), or 1 with eps=0 (``none``, Dr.GRPO). ``std``: the unbiased estimate
    (divide by n-1, TRL) or the population std (divide by n: APR's TinyRL and A²FM's APO use numpy's).
    """
    rewards = inp.rewards.to(torch.float64)
    mean, std, size = group_stats(rewards, inp.group_ids)
    population = params.std == "population"
    if population:  # sqrt(sum sq / n) = unbiased * sqrt((n-1)/n)
        std = std * ((size - 1).clamp(min=0) / size).sqrt()
    centered = rewards - mean
    if params.scale_rewards == "group":
        seq_adv = centered / (std + params.eps)
    elif params.scale_rewards == "batch":
        seq_adv = centered / (rewards.std(correction=0 if population else 1) + params.eps)
    else:
        seq_adv = centered
    return broadcast(seq_adv.float(), inp.response_mask), _sequence_metrics(seq_adv, rewards, inp.group_ids)


@ADVANTAGES.register("dr_grpo")
def dr_grpo(inp: AdvantageInput, params=None):
    """Dr.GRPO (Liu et al. 2025):  A_i = R_i - mean_{j in g(i)} R_j  (no std division)."""
    return grpo(inp, GRPOAdvParams(scale_rewards="none"))


@ADVANTAGES.register("rloo")
def rloo(inp: AdvantageInput, params=None):
    """RLOO (Ahmadian et al. 2024):  A_i = R_i - (1/(G-1)) sum_{j != i} R_j = G/(G-1) (R_i - mean_g).

    Groups of one get advantage 0.
    """
    rewards = inp.rewards.to(torch.float64)
    mean, _, size = group_stats(rewards, inp.group_ids)
    seq_adv = torch.where(size > 1, size / (size - 1).clamp(min=1) * (rewards - mean), torch.zeros_like(rewards))
    return broadcast(seq_adv.float(), inp.response_mask), _sequence_metrics(seq_adv, rewards, inp.group_ids)


def whiten_tokens(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mu) / sqrt(var + eps) with mu, var (unbiased) over the masked tokens of the whole batch; 0 off the mask."""
    n = mask.sum()
    mu = (values * mask).sum() / n.clamp(min=1)
    var = (((values - mu) * mask) ** 2).sum() / (n - 1).clamp(min=1)
    return (values - mu) * torch.rsqrt(var + eps) * mask


def returns_to_go(token_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """G_it = Σ_{s>=t} m_is r_is (gamma 1), [B,T]; 0 off the mask."""
    r = token_rewards * mask
    return (r.flip(-1).cumsum(-1).flip(-1)) * mask


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp(inp: AdvantageInput, params=None):
    """REINFORCE++ (Hu et al. 2025; verl ``reinforce_plus_plus``): the return of every token, whitened over all
    response tokens of the batch,

        A_{i,t} = (G_it - mu_tok) / sqrt(var_tok + 1e-8),   mu_tok, var_tok over the batch's response tokens.

    G_it = R_i (the outcome reward) with the KL in the loss (``algo.beta``) or none; with the KL in the reward
    (``algo.kl_reward``) G_it is the return-to-go Σ_{s>=t} r_is of the token rewards r_is = −β KL_is + R_i 1[s = last]
    (``inp.token_rewards``), so the returns differ per token. No group baseline: the batch is the baseline."""
    mask = inp.response_mask.to(torch.float64)
    rewards = inp.rewards.to(torch.float64)
    if inp.token_rewards is not None:
        adv = whiten_tokens(returns_to_go(inp.token_rewards.to(torch.float64), mask), mask)
        return adv.float(), _sequence_metrics(adv.sum(-1) / mask.sum(-1).clamp(min=1), rewards, inp.group_ids)
    adv = whiten_tokens(rewards[:, None] * mask, mask)
    return adv.float(), _sequence_metrics(adv.sum(-1) / mask.sum(-1).clamp(min=1), rewards, inp.group_ids)


@ADVANTAGES.register("reinforce_pp_baseline")
def reinforce_pp_baseline(inp: AdvantageInput, params=None):
    """REINFORCE++-baseline (verl ``reinforce_plus_plus_baseline``): the group mean as baseline, then whitening
    over all response tokens of the batch (a batch-level, token-weighted scale instead of GRPO's group std),

        A_{i,t} = whiten_tok( R_i - mean_{j in g(i)} R_j )."""
    rewards = inp.rewards.to(torch.float64)
    mean, _, _ = group_stats(rewards, inp.group_ids)
    mask = inp.response_mask.to(torch.float64)
    adv = whiten_tokens((rewards - mean)[:, None] * mask, mask)
    return adv.float(), _sequence_metrics(adv.sum(-1) / mask.sum(-1).clamp(min=1), rewards, inp.group_ids)


def per_trajectory(fn, params, inp: AdvantageInput, traj_index: torch.Tensor):
    """Run a sequence-level estimator with ONE reward per trajectory, then give every row (sample) of a
    trajectory that trajectory's advantage:  A_row = A_traj(row), broadcast over the row's mask.

    For multi-call rollouts (APR: one trajectory = a call tree, one row per call) the rows repeat the
    tree's reward, so row-level group statistics would weight a tree by its number of calls; here the
    group mean/std are over trees, as in TinyRL. ``fn`` sees one row per trajectory (rewards, group ids,
    a [N,1] mask of ones, ``truncated`` = any call truncated, the tree's KL penalty, reward components and
    sequence score norms, the multipliers' weights and thresholds);
    per-token inputs (entropies, old log-probs, token rewards) are not available, so token-level estimators
    are not supported on multi-call trajectories. Trajectories without rows (no sample) do not enter the statistics.
    """
    _, inv = torch.unique(traj_index, return_inverse=True)
    num = int(inv.max().item()) + 1 if inv.numel() else 0
    rows = torch.arange(len(traj_index))
    first = torch.zeros(num, dtype=torch.long).scatter_reduce(0, inv, rows, reduce="amin", include_self=False)
    truncated = None
    if inp.truncated is not None:
        truncated = torch.zeros(num, dtype=torch.bool).index_put_((inv,), inp.truncated.bool(), accumulate=True)
    components = None if inp.reward_components is None else \
        {k: torch.as_tensor(v)[first] for k, v in inp.reward_components.items()}
    traj_inp = AdvantageInput(rewards=inp.rewards[first], group_ids=inp.group_ids[first],
                              response_mask=torch.ones(num, 1, dtype=inp.response_mask.dtype), entropies=None,
                              kl_penalty=inp.kl_penalty[first] if inp.kl_penalty is not None else None,
                              truncated=truncated, score_sq_norm=None if inp.score_sq_norm is None else
                              torch.as_tensor(inp.score_sq_norm)[first], reward_components=components,
                              multiplier_weights=inp.multiplier_weights, thresholds=inp.thresholds)
    adv, metrics = fn(traj_inp, params)
    return broadcast(adv[:, 0][inv], inp.response_mask), metrics
