"""Reward functions with TRL's calling convention.

A reward function is ``fn(prompts: list[str], completions: list[str], **columns) -> list[float | None]``
where ``columns`` holds every dataset column as a list aligned with ``completions`` (and
``completion_ids``, ``finish_reasons``, ``max_completion_length``). Built-ins are registered in
``REWARDS``; users name their own as ``"my_module:my_fn"`` in the config.
"""
from rlpost.registry import Registry

REWARDS = Registry("reward function")

from rlpost.rewards import builtin, code_exec, dialog, reward_model, workflow_rewards  # noqa: E402,F401  (registration)
from rlpost.rewards.manager import RewardError, RewardManager, in_caller_thread  # noqa: E402,F401
