"""Collate trajectories into the learner's padded tensors."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlpost.types import Trajectory


@dataclass
class Batch:
    """Learner tensors. B = samples (engine calls), W = padded prompt+completion width, T = max completion.

    input_ids:        [B,W] right-padded prompt+completion ids
    attention_mask:   [B,W]
    completion_index: [B,T] position in input_ids whose *logits* predict completion token t (P_i - 1 + t)
    completion_ids:   [B,T] sampled token ids (pad where t >= len)
    response_mask:    [B,T] float, 1 where the token is trained on
    sampler_logprobs: [B,T] engine log-probs of the sampled tokens
    sampler_entropies:[B,T] or None
    rewards:          [B] scalar reward of the sample's trajectory
    group_ids:        [B] long
    sample_weights:   [B] float loss weight of each sample (APR: 1/calls in tree)
    truncated:        [B] bool, the completion hit the length cap
    traj_index:       [B] long, the trajectory each row came from (APR trees and other multi-call
                      rollouts give several rows one trajectory; advantages are computed per trajectory)
    prompt_lengths:   [B] long, prompt tokens at the start of each row (rows with equal prompts share their
                      forward pass under optim.shared_prefix, rlpost/shared_prefix.py)
    turn_index:       [B,T] long or None: multi-turn rows, the assistant turn of each completion token (-1 for
                      observations and padding); None unless every row has one (rlpost/workflows/multi_turn.py)
    turn_rewards:     [B,K] float64 or None: the environment's reward of each of the row's K_i turns, NaN past K_i
    turn_states:      [B,K] long or None: a key of the state each turn started from (equal = the same state), 0 past K_i
    """
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_index: torch.Tensor
    completion_ids: torch.Tensor
    response_mask: torch.Tensor
    sampler_logprobs: torch.Tensor
    sampler_entropies: torch.Tensor | None
    rewards: torch.Tensor
    group_ids: torch.Tensor
    sample_weights: torch.Tensor
    truncated: torch.Tensor
    traj_index: torch.Tensor | None = None
    prompt_lengths: torch.Tensor | None = None
    turn_index: torch.Tensor | None = None
    turn_rewards: torch.Tensor | None = None
    turn_states: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, idx: torch.Tensor | slice) -> "Batch":
        """Rows ``idx`` of every tensor (trimmed to the rows' real width)."""
        fields = {k: (v[idx] if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        width = int(fields["attention_mask"].sum(-1).max().item())
        fields["input_ids"], fields["attention_mask"] = fields["input_ids"][:, :width], fields["attention_mask"][:, :width]
        return Batch(**fields)


def collate(trajectories: list[Trajectory], pad_id: int, mask_truncated: bool = False) -> Batch:
    rows = [(traj, k, s) for traj in trajectories for k, s in enumerate(traj.samples)]
    traj_index = torch.tensor([j for j, traj in enumerate(trajectories) for _ in traj.samples], dtype=torch.long)
    width = max(len(s.prompt_ids) + len(s.completion_ids) for _, _, s in rows)
    T = max(1, max(len(s.completion_ids) for _, _, s in rows))
    B = len(rows)
    input_ids = torch.full((B, width), pad_id, dtype=torch.long)
    attention = torch.zeros((B, width), dtype=torch.long)
    index = torch.zeros((B, T), dtype=torch.long)
    comp = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T))
    logps = torch.zeros((B, T))
    has_entropy = all(s.entropies is not None for _, _, s in rows)
    ents = torch.zeros((B, T)) if has_entropy else None
    rewards, groups, weights, truncated = torch.zeros(B), torch.zeros(B, dtype=torch.long), torch.ones(B), torch.zeros(B, dtype=torch.bool)
    prompt_lengths = torch.tensor([len(s.prompt_ids) for _, _, s in rows], dtype=torch.long)
    for i, (traj, k, s) in enumerate(rows):
        P, C = len(s.prompt_ids), len(s.completion_ids)
        input_ids[i, : P + C] = torch.tensor(s.prompt_ids + s.completion_ids)
        attention[i, : P + C] = 1
        if C:
            index[i, :C] = torch.arange(P - 1, P - 1 + C)
            comp[i, :C] = torch.tensor(s.completion_ids)
            mask[i, :C] = torch.tensor(s.loss_mask, dtype=torch.float)
            logps[i, :C] = torch.tensor(s.logprobs)
            if ents is not None:
                ents[i, :C] = torch.tensor(s.entropies)
        rewards[i] = traj.reward
        groups[i] = traj.group_id
        weights[i] = traj.sample_weights[k] if traj.sample_weights else 1.0
        truncated[i] = s.finish_reason == "length"
    if mask_truncated:
        mask = mask * (~truncated).float()[:, None]
    return Batch(input_ids, attention, index, comp, mask, logps, ents, rewards, groups, weights, truncated, traj_index,
                 prompt_lengths, *collate_turns(rows, T))


def collate_turns(rows, T: int) -> tuple:
    """(turn_index [B,T], turn_rewards [B,K] NaN-padded, turn_states [B,K]) from multi-turn rows, or three
    Nones unless every row's sample has ``turn_index`` and its trajectory ``turn_rewards``."""
    if not rows or any(s.turn_index is None or traj.turn_rewards is None for traj, _, s in rows):
        return None, None, None
    K = max(1, max(len(traj.turn_rewards) for traj, _, _ in rows))
    index = torch.full((len(rows), T), -1, dtype=torch.long)
    rewards = torch.full((len(rows), K), float("nan"), dtype=torch.float64)
    states = torch.zeros((len(rows), K), dtype=torch.long)
    for i, (traj, _, s) in enumerate(rows):
        if s.turn_index:
            index[i, :len(s.turn_index)] = torch.tensor(s.turn_index, dtype=torch.long)
        k = len(traj.turn_rewards)
        if k:
            rewards[i, :k] = torch.tensor(traj.turn_rewards, dtype=torch.float64)
            keys = traj.turn_states if traj.turn_states is not None else list(range(k))
            states[i, :k] = torch.tensor(keys[:k], dtype=torch.long)
    return index, rewards, states
