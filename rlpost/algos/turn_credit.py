"""Per-turn credit for multi-turn rollouts: advantages per assistant turn from the environment's per-turn rewards.

``multi_turn`` episodes carry, per row, the turn of every completion token (``AdvantageInput.turn_index``), the
reward ``step`` gave each turn (``turn_rewards``, NaN past the row's K_i turns) and a key of the state each turn
started from (``turn_states``). Two estimators read them (``algo.advantage: turn_return`` or ``gigpo``); the
default (``grpo``) ignores them and gives every turn the episode's advantage.

Rewards per turn. r_ik is the environment's reward of turn k (0 when ``step`` gave None, or for a tool-call
turn). The trajectory's scalar reward R_i (``rewards:`` functions and weights, KL shaping) may hold more than
Σ_k r_ik (other reward functions, weights); the rest counts at the last turn:

    r~_ik = r_ik + 1[k = K_i - 1] (R_i - Σ_k r_ik),     so Σ_k r~_ik = R_i,

and with ``rewards: [{name: env_reward}]`` r~ = r. Discounted per-turn returns:

    G_ik = Σ_{j >= k} γ^(j-k) r~_ij.

A token of turn k gets A_ik; observation tokens are off the loss mask and get 0.

``agent`` episodes (rlpost/workflows/agent.py) are the same data with turn k = the episode's model request k; an
episode may span several rows (a row per request that does not extend the previous one), which
:func:`per_trajectory_turns` handles: the estimator sees one row per episode, every row gets its own turns'
advantages.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlpost.algos.core import ADVANTAGES, AdvantageInput, group_stats

TURN_ESTIMATORS = ("turn_return", "gigpo")   # the algo.advantage entries that read the per-turn fields


def _turn_inputs(inp: AdvantageInput, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(r~ [B,K] float64, valid [B,K] bool): per-turn rewards with the outcome's remainder at the last turn."""
    if inp.turn_index is None or inp.turn_rewards is None:
        raise ValueError(f"algo.advantage {where} needs per-turn rewards: use it with rollout.workflow multi_turn "
                         f"or agent (every row a multi-turn episode)")
    turn = inp.turn_rewards.to(torch.float64)
    valid = ~torch.isnan(turn)
    r = torch.where(valid, turn, torch.zeros_like(turn))
    count = valid.sum(-1)
    rest = inp.rewards.to(torch.float64) - r.sum(-1)
    last = (count - 1).clamp(min=0)
    has_turn = count > 0
    r[has_turn, last[has_turn]] += rest[has_turn]
    return r, valid


def discounted_returns(r: torch.Tensor, valid: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_ik = Σ_{j>=k} γ^(j-k) r_ij over each row's valid turns, [B,K]; 0 past them."""
    out = torch.zeros_like(r)
    running = torch.zeros(r.shape[0], dtype=r.dtype)
    for k in range(r.shape[1] - 1, -1, -1):
        running = torch.where(valid[:, k], r[:, k] + gamma * running, torch.zeros_like(running))
        out[:, k] = running
    return out


def to_tokens(turn_adv: torch.Tensor, turn_index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B,K] -> [B,T]: A[b,t] = A_{b, turn_index[b,t]} on the mask, 0 elsewhere (observations: index -1)."""
    idx = turn_index.clamp(min=0)
    out = torch.gather(turn_adv, 1, idx).to(mask.dtype)
    return torch.where(turn_index >= 0, out, torch.zeros_like(out)) * mask


def _metrics(turn_adv: torch.Tensor, valid: torch.Tensor, rewards: torch.Tensor, group_ids: torch.Tensor) -> dict:
    _, std, _ = group_stats(rewards, group_ids)
    a = turn_adv[valid]
    return {"advantage/mean": a.mean().item() if a.numel() else 0.0,
            "advantage/abs_mean": a.abs().mean().item() if a.numel() else 0.0,
            "reward/frac_zero_std": (std < 1e-8).float().mean().item(),
            "turn_credit/turns_mean": valid.sum(-1).double().mean().item()}


@dataclass
class TurnReturnParams:
    gamma: float = 1.0              # discount per turn
    scale_rewards: str = "group"    # group: divide by the group's std of G_i0 | none
    eps: float = 1e-4               # added to the std (as GRPO)

    def __post_init__(self):
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"algo.advantage turn_return: gamma must be in [0, 1], got {self.gamma}")
        if self.scale_rewards not in ("group", "none"):
            raise ValueError(f"algo.advantage turn_return: scale_rewards must be group or none, got {self.scale_rewards!r}")


@ADVANTAGES.register("turn_return", params=TurnReturnParams)
def turn_return(inp: AdvantageInput, params: TurnReturnParams):
    """Discounted per-turn returns with GRPO's group baseline on the episode return:

        A_ik = (G_ik - mean_{j in g(i)} G_j0) / (std_{j in g(i)} G_j0 + eps)      (scale_rewards=group)
        A_ik =  G_ik - mean_{j in g(i)} G_j0                                       (scale_rewards=none)

    std unbiased (as GRPO's default). With γ = 1 every turn's return is R_i minus the rewards of the turns before
    it; with all reward at the last turn (or γ = 1 and one turn) this is GRPO's advantage on every turn."""
    r, valid = _turn_inputs(inp, "turn_return")
    G = discounted_returns(r, valid, params.gamma)
    start = G[:, 0]
    mean, std, _ = group_stats(start, inp.group_ids)
    adv = G - mean[:, None]
    if params.scale_rewards == "group":
        adv = adv / (std[:, None] + params.eps)
    adv = torch.where(valid, adv, torch.zeros_like(adv))
    return to_tokens(adv.float(), inp.turn_index, inp.response_mask), _metrics(adv, valid, inp.rewards, inp.group_ids)


@dataclass
class GiGPOParams:
    gamma: float = 0.95             # discount of the step returns (the paper's 0.95)
    omega: float = 1.0              # weight of the step-level advantage
    scale_rewards: str = "group"    # group: divide by the std (F_norm = std) | none (F_norm = 1)
    eps: float = 1e-6

    def __post_init__(self):
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"algo.advantage gigpo: gamma must be in [0, 1], got {self.gamma}")
        if self.scale_rewards not in ("group", "none"):
            raise ValueError(f"algo.advantage gigpo: scale_rewards must be group or none, got {self.scale_rewards!r}")


@ADVANTAGES.register("gigpo", params=GiGPOParams)
def gigpo(inp: AdvantageInput, params: GiGPOParams):
    """GiGPO (Feng et al. 2025, Group-in-Group Policy Optimization): an episode-level and a step-level
    group-relative advantage,

        A^E_i  = (R_i - mean_{g(i)} R) / F_norm_{g(i)}(R)                   episodes of the same prompt
        A^S_ik = (G_ik - mean_{S(i,k)} G) / F_norm_{S(i,k)}(G)              turns that start from the same state
        A_ik   = A^E_i + ω A^S_ik

    S(i,k) = the turns (j, l) of episodes of i's prompt group with turn_states[j,l] = turn_states[i,k] (the
    anchor state: multi_turn keys a turn's state by the observation tokens before it, the prompt for turn 0).
    F_norm = std + eps (unbiased) or 1 (``scale_rewards: none``); a state group of one turn gives A^S = 0."""
    if inp.turn_states is None:
        raise ValueError("algo.advantage gigpo needs per-turn state keys: use it with rollout.workflow multi_turn "
                         "or agent")
    r, valid = _turn_inputs(inp, "gigpo")
    R = inp.rewards.to(torch.float64)
    mean_e, std_e, _ = group_stats(R, inp.group_ids)
    episode = R - mean_e
    G = discounted_returns(r, valid, params.gamma)
    rows, turns = valid.nonzero(as_tuple=True)
    keys = torch.stack([inp.group_ids[rows].to(torch.long), inp.turn_states[rows, turns].to(torch.long)], dim=1)
    _, state_group = torch.unique(keys, dim=0, return_inverse=True)
    mean_s, std_s, size_s = group_stats(G[rows, turns], state_group)
    step = G[rows, turns] - mean_s
    if params.scale_rewards == "group":
        episode = episode / (std_e + params.eps)
        step = step / (std_s + params.eps)
    step = torch.where(size_s > 1, step, torch.zeros_like(step))
    adv = torch.zeros_like(G)
    adv[rows, turns] = episode[rows] + params.omega * step
    metrics = _metrics(adv, valid, inp.rewards, inp.group_ids)
    metrics["turn_credit/state_group_size"] = size_s.mean().item() if size_s.numel() else 0.0
    return to_tokens(adv.float(), inp.turn_index, inp.response_mask), metrics


def per_trajectory_turns(fn, params, inp: AdvantageInput, traj_index: torch.Tensor):
    """A per-turn estimator on trajectories of several rows (agent episodes: a row per request that does not extend
    the previous one). Every row of a trajectory carries the trajectory's reward R, per-turn rewards and state
    keys; ``fn`` sees ONE row per trajectory whose "tokens" are its turns (turn index k on position k, mask 1 on
    its K valid turns), so group and state statistics count each episode once, and returns A_nk [N,K]. Then

        A[b,t] = A_{n(b), turn_index[b,t]} mask[b,t]        (0 where turn_index = -1)

    i.e. each row's token of turn k gets its episode's turn-k advantage."""
    if inp.turn_index is None or inp.turn_rewards is None:
        return fn(inp, params)   # the estimator says what it is missing
    _, inv = torch.unique(traj_index, return_inverse=True)
    num = int(inv.max().item()) + 1 if inv.numel() else 0
    first = torch.zeros(num, dtype=torch.long).scatter_reduce(0, inv, torch.arange(len(inv)), reduce="amin",
                                                              include_self=False)
    rewards = inp.turn_rewards[first]                                           # [N,K]
    valid = ~torch.isnan(rewards)
    turns = torch.arange(rewards.shape[1]).expand_as(valid)
    traj_inp = AdvantageInput(rewards=inp.rewards[first], group_ids=inp.group_ids[first],
                              response_mask=valid.to(inp.response_mask.dtype),
                              turn_index=torch.where(valid, turns, torch.full_like(turns, -1)), turn_rewards=rewards,
                              turn_states=None if inp.turn_states is None else inp.turn_states[first])
    turn_adv, metrics = fn(traj_inp, params)                                    # [N,K]
    return to_tokens(turn_adv[inv], inp.turn_index, inp.response_mask), metrics
