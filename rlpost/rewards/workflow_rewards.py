"""Rewards for the multi-call workflows (TRL calling convention).

``apr_countdown``: APR's binary tree reward (Pan et al. 2025). ``completions`` are the trees'
``final_text`` (the root thread's last prompt + completion), ``prompts`` the root prompts; 1.0 when the
final text ends in a solution path that :func:`rlpost.workflows.apr.check_solution` accepts.

``env_reward``: the multi_turn environment's reward per episode (rlpost/workflows/multi_turn.py).

``agent_reward``: what the agent workflow's user rollout returned per episode (rlpost/workflows/agent.py).

``a2fm_exact_match``: r_acc for A²FM (``completions`` = the last ``<answer>`` content), equal after
normalisation or as numbers. The APO reward itself (r_acc · r_fmt · r_adaptive) needs the query's whole
group and is applied by :meth:`rlpost.workflows.a2fm.A2FMWorkflow.score` on top of this r_acc.
"""
from __future__ import annotations

from rlpost.rewards import REWARDS
from rlpost.workflows.a2fm import exact_match
from rlpost.workflows.apr import countdown_reward


@REWARDS.register("apr_countdown")
def apr_countdown_reward(prompts, completions, **kwargs) -> list[float]:
    """1.0 when the tree's final text ends in a valid Countdown solution path, else 0.0."""
    return [countdown_reward(c, p) for p, c in zip(prompts, completions)]


@REWARDS.register("a2fm_exact_match")
def a2fm_exact_match_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 when the final answer equals ``answer`` (case/space-normalised, or numerically), else 0.0."""
    return [exact_match(c or None, a) for c, a in zip(completions, answer)]


@REWARDS.register("env_reward")
def env_reward(prompts, completions, env_reward=None, **kwargs) -> list[float | None]:
    """The environment's reward of each episode (the sum of its ``StepResult.reward``; None when it gave none).
    Needs ``rollout.workflow: multi_turn``, which passes the ``env_reward`` column."""
    if env_reward is None:
        raise ValueError("env_reward reads the environment's rewards: it needs rollout.workflow multi_turn")
    return list(env_reward)


@REWARDS.register("agent_reward")
def agent_reward(prompts, completions, agent_reward=None, **kwargs) -> list[float | None]:
    """The reward the user's agent rollout returned for each episode (None when it returned messages only).
    Needs ``rollout.workflow: agent``, which passes the ``agent_reward`` column."""
    if agent_reward is None:
        raise ValueError("agent_reward reads the agent rollout's rewards: it needs rollout.workflow agent")
    return list(agent_reward)
