"""Environments and a token-exact scripted engine for the multi_turn tests (imported as ``helper_envs:Class``)."""
import time

from rlpost.envs.base import StepResult
from rlpost.types import Sample


class TokenScriptedEngine:
    """Engine protocol over a real tokenizer: ``respond(context_text, turn) -> completion text`` (write
    ``<|im_end|>`` to end with the EOS token). Logprob of the k-th token of call c is ``-(c + 1) - k / 1000`` so
    tests can tell where each sampled log-prob landed. ``requests`` records the prompt ids of every call."""

    def __init__(self, tokenizer, respond):
        self.tok, self.respond, self.requests, self.max_tokens = tokenizer, respond, [], []

    def generate(self, requests, params):
        call = len(self.requests)
        self.requests.append([list(r.prompt_ids) for r in requests])
        self.max_tokens.append(params.max_tokens)
        out = []
        for i, r in enumerate(requests):
            context = self.tok.decode(r.prompt_ids, skip_special_tokens=False)
            ids = self.tok.encode(self.respond(context, r.info["turn"]), add_special_tokens=False)
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


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first
        b: the second
    """
    return a + b


def crash(x: int) -> int:
    """Always fails.

    Args:
        x: anything
    """
    raise RuntimeError("boom")


def sleepy(seconds: float) -> str:
    """Sleeps.

    Args:
        seconds: how long
    """
    time.sleep(seconds)
    return "woke"


class AddEnv:
    """Tools add / crash / sleepy; the first turn without a tool call ends the episode, reward 1 if it says 7."""
    tools = [add, crash, sleepy]

    def reset(self, row):
        return [{"role": "user", "content": row["messages"][-1]["content"]}]

    def step(self, message):
        return StepResult(reward=float(message["content"].strip() == "7"), done=True)


class RaisingEnv:
    """Raises in step on the turn ``fail_turn`` (0-based) of the episode whose prompt says FAIL."""

    def __init__(self, fail_turn: int = 1):
        self.fail_turn, self.turn = fail_turn, 0

    def reset(self, row):
        self.fail = "FAIL" in row["messages"][-1]["content"]
        return list(row["messages"])

    def step(self, message):
        if self.fail and self.turn == self.fail_turn:
            raise KeyError("secret")
        self.turn += 1
        return StepResult([{"role": "user", "content": "again"}], None, False)
