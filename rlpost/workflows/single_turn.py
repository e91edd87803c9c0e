"""Single-turn rollouts: each prompt sampled ``params.n`` times, one Sample per trajectory.

Workflow contract: ``rollout(prompts, params) -> list[Trajectory]`` with ``group_id = prompt.id``
(the trainer offsets ids per refill round; a prompt drawn twice in one step forms one larger group).
"""
from __future__ import annotations

from rlpost.engines.base import GenRequest, SamplingParams
from rlpost.types import Prompt, Trajectory


def tokenize_prompts(tokenizer, prompts: list[Prompt]) -> list[list[int]]:
    return [tokenizer(p.text, add_special_tokens=False)["input_ids"] for p in prompts]


class SingleTurnWorkflow:
    def __init__(self, engine, tokenizer):
        self.engine = engine
        self.tokenizer = tokenizer

    def rollout(self, prompts: list[Prompt], params: SamplingParams) -> list[Trajectory]:
        requests = [GenRequest(ids) for ids in tokenize_prompts(self.tokenizer, prompts)]
        samples = self.engine.generate(requests, params)
        return [Trajectory(prompt=prompts[s.request_index], group_id=prompts[s.request_index].id,
                           samples=[s], final_text=s.text) for s in samples]
