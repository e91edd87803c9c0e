"""The typed objects that flow between stages of an RL step (see docs/design.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Prompt:
    """One dataset row ready for rollout.

    id:        stable row id (used for groups, resume and data samplers)
    text:      the prompt string after the chat template (what the engine tokenizes)
    messages:  the chat messages, when the row was a conversation
    columns:   every other dataset column (answer, metadata), passed to reward functions by name
    row:       the dataset row as loaded, every column including the prompt's (multi_turn's ``reset(row)``), or None
    """
    id: int
    text: str
    messages: list[dict] | None = None
    columns: dict[str, Any] = field(default_factory=dict)
    row: dict[str, Any] | None = None


@dataclass
class Sample:
    """One engine call's result for one sequence.

    prompt_ids / completion_ids: token ids (no padding)
    logprobs:      [len(completion_ids)] sampler log-probs of the sampled tokens (after temperature)
    entropies:     [len(completion_ids)] per-token entropy of the sampling distribution, or None
    finish_reason: "stop" (EOS or a stop string) or "length" (hit max_tokens)
    loss_mask:     [len(completion_ids)] 1 = trained on; 0 for injected tool output or forced prefixes
    text:          decoded completion
    turn_index:    [len(completion_ids)] multi-turn: the assistant turn (0, 1, ...) each sampled token belongs to
                   (agent: its model request), -1 for observation tokens; None for single-turn samples
    """
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    text: str = ""
    finish_reason: str = "stop"
    entropies: list[float] | None = None
    loss_mask: list[int] | None = None
    request_index: int = 0
    turn_index: list[int] | None = None

    def __post_init__(self):
        if self.loss_mask is None:
            self.loss_mask = [1] * len(self.completion_ids)


@dataclass
class Trajectory:
    """What one rollout of one prompt produced: one or more Samples (APR call trees, tool turns).

    group_id:     the prompt's group (completions of the same prompt share it)
    samples:      each engine call that is trained on
    sample_weights: per-sample loss weights (APR: 1 / calls in the tree); default 1
    final_text:   the text rewards are computed on
    info:         mode, cost counters, tool calls, ...
    reward:       filled by the reward stage
    policy_version: the policy version whose weights sampled it (the number of RL updates applied to them);
                  the learner's staleness on it is ``learner_version - policy_version`` (rlpost/async_rollout.py)
    turn_rewards: multi-turn: one reward per assistant turn (the environment's ``step`` reward answering it, 0 when
                  it gave none; agent: per model request, what the rollout returned, else 0); None for single-turn
    turn_states:  multi-turn: per assistant turn, a key of the state it started from (the hash of the observation
                  tokens before it; turn 0: of the prompt; agent: of the request's prompt ids), equal keys = the same
                  state (GiGPO's anchor states)
    """
    prompt: Prompt
    group_id: int
    samples: list[Sample]
    final_text: str
    sample_weights: list[float] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    reward: float = 0.0
    reward_components: dict[str, float] = field(default_factory=dict)
    policy_version: int | None = None
    turn_rewards: list[float] | None = None
    turn_states: list[int] | None = None

    @property
    def truncated(self) -> bool:
        return any(s.finish_reason == "length" for s in self.samples)
