"""Environments for the multi_turn tests (named in the workflow as ``helper_envs:Class``)."""
import time

from rlpost.envs.base import StepResult


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
