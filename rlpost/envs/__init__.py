"""Environments for multi-turn rollouts (``rollout.workflow: {name: multi_turn, env: package.module:Class}``).

The contract is in :mod:`rlpost.envs.base`, tool-call formats in :mod:`rlpost.envs.parsers` (parsed calls:
:mod:`rlpost.envs.calls`), shipped tools in :mod:`rlpost.envs.tools`, shipped examples in
:mod:`rlpost.envs.examples`; the workflow that runs them is :mod:`rlpost.workflows.multi_turn`.
"""
from rlpost.envs.base import EnvError, Environment, StepResult, check_env, import_env, tool_schemas  # noqa: F401
from rlpost.envs.parsers import TOOL_CALL_PARSERS  # noqa: F401
