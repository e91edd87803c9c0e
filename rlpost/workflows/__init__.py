"""Rollout workflows: turn prompts into :class:`~rlpost.types.Trajectory` objects through an engine.

A workflow is chosen by name (``rollout.workflow: apr``) and built as
``WORKFLOWS.get(name)(engine, tokenizer, sampling, **params)``; its params dataclass is the
registry entry's ``params``. Every workflow has ``rollout(prompts, n) -> list[Trajectory]``.
"""
from rlpost.registry import Registry

WORKFLOWS = Registry("rollout workflow")

from rlpost.workflows.a2fm import A2FMParams, A2FMWorkflow  # noqa: E402
from rlpost.workflows.apr import AprParams, AprWorkflow  # noqa: E402

from rlpost.workflows.single_turn import SingleTurnWorkflow  # noqa: E402

WORKFLOWS.add("single_turn", SingleTurnWorkflow)
WORKFLOWS.add("apr", AprWorkflow, AprParams)
WORKFLOWS.add("a2fm", A2FMWorkflow, A2FMParams)
