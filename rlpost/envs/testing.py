"""Test an environment without a model: :class:`ScriptedEngine` answers every turn with text you script.

    from rlpost.envs.testing import ScriptedEngine, rollout_once
    traj = rollout_once("my_package.envs:MyEnv", {"prompt": "2+2=", "answer": "4"}, ["<tool_call>...", "4"])
    assert traj.info["env_reward"] == 1.0
"""
from __future__ import annotations

from rlpost.types import Prompt, Sample


class ScriptedEngine:
    """The engine protocol over a real tokenizer: ``respond(context_text, turn) -> completion text`` (write the
    EOS token, e.g. ``<|im_end|>``, to end a turn with it). The k-th sampled token of call c gets log-prob
    ``-(c + 1) - k / 1000``, so a test can tell where each one landed. ``requests`` records every call's prompt
    ids and ``max_tokens`` its token cap."""

    def __init__(self, tokenizer, respond):
        self.tok, self.respond, self.requests, self.max_tokens = tokenizer, respond, [], []

    def generate(self, requests, params):
        call = len(self.requests)
        self.requests.append([list(r.prompt_ids) for r in requests])
        self.max_tokens.append(params.max_tokens)
        out = []
        for i, r in enumerate(requests):
            context = self.tok.decode(r.prompt_ids, skip_special_tokens=False)
            ids = self.tok.encode(self.respond(context, r.info.get("turn", 0)), add_special_tokens=False)
            finish = "stop"
            if len(ids) > params.max_tokens:
                ids, finish = ids[:params.max_tokens], "length"
            out.append(Sample(prompt_ids=list(r.prompt_ids), completion_ids=ids,
                              logprobs=[-(call + 1) - k / 1000 for k in range(len(ids))],
                              text=self.tok.decode(ids, skip_special_tokens=True), finish_reason=finish,
                              request_index=i))
        return out

    def load_weights(self, named_tensors):
        pass

    def close(self):
        pass


def rollout_once(env: str, row: dict, turns: list[str], tokenizer=None, **workflow_kwargs):
    """One episode of ``env`` on ``row`` (``prompt`` plus columns) where the model says ``turns[t]`` at turn t
    (each ended with the EOS token); returns its Trajectory. ``tokenizer`` defaults to rlpost's character
    tokenizer with its ChatML template."""
    from rlpost.engines.base import SamplingParams
    from rlpost.models.tokenizer import build_char_tokenizer
    from rlpost.workflows.multi_turn import MultiTurnWorkflow
    tok = tokenizer or build_char_tokenizer()
    eos = tok.eos_token
    engine = ScriptedEngine(tok, lambda context, t: turns[min(t, len(turns) - 1)] + eos)
    columns = {k: v for k, v in row.items() if k != "prompt"}
    prompt = Prompt(0, row["prompt"], [{"role": "user", "content": row["prompt"]}], columns, row=dict(row))
    workflow = MultiTurnWorkflow(engine, tok, env=env, **workflow_kwargs)
    return workflow.rollout([prompt], SamplingParams(n=1, max_tokens=256))[0]
