"""Two shipped environments (docs/environments.md walks through them).

* :class:`CalculatorEnv`: multi-digit arithmetic with the shipped ``calculator`` tool (and optionally ``python``, run
  in the sandbox; both from rlpost/envs/tools.py). The model calls the tool, reads the result, answers; reward 1
  when the answer equals ``row["answer"]``.
* :class:`GuessNumberEnv`: guess a hidden number with "higher"/"lower" feedback after every guess; reward 1 for
  finding it, shared by every turn of the episode (multi-turn credit assignment through the outcome).

Both expect rows of the ``arithmetic`` / ``guess_number`` tasks (``prompt``, ``answer``).
"""
from __future__ import annotations

import re

from rlpost.envs.base import StepResult
from rlpost.envs.tools import calculator, python

_INT = re.compile(r"-?\d+")


def last_int(text: str) -> int | None:
    """The last integer in ``text`` (None if there is none)."""
    found = _INT.findall(text.replace(",", ""))
    return int(found[-1]) if found else None


CALCULATOR_SYSTEM = ('Use the calculator: write <tool_call>{"name": "calculator", "arguments": {"expression": "..."}}'
                     '</tool_call>, read the result, then answer with the number only.')


class CalculatorEnv:
    """Arithmetic with tools. ``tools`` are plain functions; the workflow runs them and answers with ``tool``
    messages. The first assistant turn without a tool call is the answer (one step, then done)."""

    def __init__(self, use_python: bool = False, system_prompt: str = CALCULATOR_SYSTEM):
        self.tools = [calculator, python] if use_python else [calculator]
        self.system_prompt = system_prompt

    def reset(self, row: dict) -> list[dict]:
        self.answer = int(row["answer"])
        question = row["messages"][-1]["content"]
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": question}]

    def step(self, message: dict) -> StepResult:
        return StepResult(reward=float(last_int(message["content"]) == self.answer), done=True)


class GuessNumberEnv:
    """Guess the hidden number (``row["answer"]``) within the turn limit; the environment answers every guess."""

    def reset(self, row: dict) -> list[dict]:
        self.target = int(row["answer"])
        return list(row["messages"])

    def step(self, message: dict) -> StepResult:
        guess = last_int(message["content"])
        if guess is None:
            return StepResult([{"role": "user", "content": "Answer with a number."}], reward=0.0)
        if guess == self.target:
            return StepResult([{"role": "user", "content": "Correct!"}], reward=1.0, done=True)
        hint = "Higher." if guess < self.target else "Lower."
        return StepResult([{"role": "user", "content": hint}], reward=0.0)
