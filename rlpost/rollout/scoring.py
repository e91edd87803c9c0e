"""Scoring: the configured reward functions (TRL's calling convention), a workflow's group-level rewards, and the
rollout metrics of a batch. Runs wherever the batch is produced (the generation thread with async rollouts)."""
from __future__ import annotations

import numpy as np
import torch

from rlpost.types import Trajectory


class Scorer:
    """rewards: the :class:`~rlpost.rewards.RewardManager`; workflow: its optional ``score(trajs)`` (A²FM's APO,
    which needs the whole group) and ``metrics(trajs)`` hooks; max_completion_length: a column for overlong
    shaping rewards."""

    def __init__(self, rewards, workflow, max_completion_length: int):
        self.rewards, self.workflow, self.max_completion_length = rewards, workflow, max_completion_length

    def score(self, trajs: list[Trajectory]) -> dict[str, list[float]]:
        """Set ``traj.reward`` and ``traj.reward_components``; returns the components (name -> [value or None])."""
        completions = [t.final_text for t in trajs]
        columns = {k: [t.prompt.columns.get(k) for t in trajs] for k in trajs[0].prompt.columns}
        columns["completion_ids"] = [sum((s.completion_ids for s in t.samples), []) for t in trajs]
        columns["finish_reasons"] = ["length" if t.truncated else "stop" for t in trajs]
        columns["max_completion_length"] = self.max_completion_length
        for key in trajs[0].info.get("reward_columns", {}):   # a workflow's own columns (multi_turn: conversation, env_reward)
            columns[key] = [t.info["reward_columns"][key] for t in trajs]
        totals, components = self.rewards.score([t.prompt.text for t in trajs], completions, columns)
        for i, t in enumerate(trajs):
            t.reward = totals[i]
            t.reward_components = {k: v[i] for k, v in components.items()}
        # Rewards that are not per-trajectory functions (A²FM's APO needs the whole group): a workflow with
        # score(trajs) -> {name: [float]} rewrites traj.reward from the above, adding its components.
        if callable(getattr(self.workflow, "score", None)):
            components = {**components, **self.workflow.score(trajs)}
        return components

    def metrics(self, trajs: list, components: dict) -> dict:
        """reward/mean, reward/std, completion lengths and clipping, each component's mean, the workflow's counters."""
        rewards = torch.tensor([t.reward for t in trajs])
        lengths = torch.tensor([float(sum(len(s.completion_ids) for s in t.samples)) for t in trajs])
        m = {"reward/mean": rewards.mean().item(), "reward/std": rewards.std().item() if len(trajs) > 1 else 0.0,
             "completion/mean_length": lengths.mean().item(),
             "completion/clipped_ratio": float(np.mean([t.truncated for t in trajs]))}
        for name, vals in components.items():
            present = [v for v in vals if v is not None]
            m[f"reward/{name}/mean"] = float(np.mean(present)) if present else 0.0
        if callable(getattr(self.workflow, "metrics", None)):  # workflow counters (apr/..., a2fm/...)
            m.update(self.workflow.metrics(trajs))
        return m
