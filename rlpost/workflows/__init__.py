"""Rollout workflows: turn prompts into :class:`~rlpost.types.Trajectory` objects through an engine.

A workflow is chosen by name (``rollout.workflow: apr`` or ``{name: apr, max_context: 4096}``) and built
once as ``WORKFLOWS.get(name)(engine, tokenizer, **asdict(params))`` (its params dataclass is the registry
entry's ``params``; no sampling settings at construction). Every step the trainer calls
``rollout(prompts, params: SamplingParams) -> list[Trajectory]`` with fresh params (``params.n`` = group
size, a per-step seed); trajectories of one prompt share ``group_id = prompt.id``.

Optional hooks the trainer uses when a workflow defines them:

* ``score(trajectories) -> {name: [float]}``: runs after the configured reward functions (which set
  ``traj.reward``) and may rewrite ``traj.reward`` from group context (A²FM's APO); its components
  are logged as ``reward/<name>/mean``.
* ``metrics(trajectories) -> {name: float}``: logged every step (and as ``eval/<name>`` at evaluation).
* ``eval_rollout(prompts, params)``: used instead of ``rollout`` for evaluation (A²FM: adaptive only).

``multi_turn`` runs a user environment (rlpost/envs/, docs/environments.md). A trajectory's
``info["reward_columns"]`` (a dict of per-trajectory values) reaches the reward functions as extra columns
(multi_turn: ``conversation``, ``env_reward``; agent: ``conversation``, ``agent_reward``).

``agent`` runs the user's ``async def rollout(client, row)`` with an OpenAI client on the policy and trains on the
ids recorded on the serving side (rlpost/workflows/agent.py).

A trajectory may hold several samples (APR: one per engine call of a tree); the trainer then computes
advantages with one reward per trajectory and gives each sample its trajectory's advantage.
"""
from rlpost.registry import Registry

WORKFLOWS = Registry("rollout workflow")

from rlpost.workflows.a2fm import A2FMParams, A2FMWorkflow  # noqa: E402
from rlpost.workflows.agent import AgentParams, AgentWorkflow  # noqa: E402
from rlpost.workflows.apr import AprParams, AprWorkflow  # noqa: E402
from rlpost.workflows.multi_turn import MultiTurnParams, MultiTurnWorkflow  # noqa: E402

from rlpost.workflows.single_turn import SingleTurnWorkflow  # noqa: E402

WORKFLOWS.add("single_turn", SingleTurnWorkflow)
WORKFLOWS.add("apr", AprWorkflow, AprParams)
WORKFLOWS.add("a2fm", A2FMWorkflow, A2FMParams)
WORKFLOWS.add("multi_turn", MultiTurnWorkflow, MultiTurnParams)
WORKFLOWS.add("agent", AgentWorkflow, AgentParams)
