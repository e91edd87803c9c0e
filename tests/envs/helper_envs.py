"""Environments for the multi_turn tests (named in the workflow as ``helper_envs:Class``)."""
import asyncio
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


class AddFeedbackEnv:
    """Tool add; a wrong answer gets "Wrong, try again." (reward 0), the right one ends the episode (reward 1)."""
    tools = [add]

    def reset(self, row):
        self.answer = row["answer"]
        return [{"role": "user", "content": row["messages"][-1]["content"]}]

    def step(self, message):
        if message["content"].strip() == self.answer:
            return StepResult(reward=1.0, done=True)
        return StepResult([{"role": "user", "content": "Wrong, try again."}], reward=0.0)


SEEN_ROWS = []


class RowEnv:
    """Records the row reset receives; the first turn ends the episode."""

    def reset(self, row):
        SEEN_ROWS.append(dict(row))
        return list(row["messages"])


async def slow_add(a: int, b: int) -> int:
    """Add two integers, slowly.

    Args:
        a: the first
        b: the second
    """
    await asyncio.sleep(0.05)
    return a + b


async def hang(seconds: float) -> str:
    """Waits.

    Args:
        seconds: how long
    """
    await asyncio.sleep(seconds)
    return "done"


class AsyncAddEnv:
    """``async def`` reset, step and tools; step waits ``delay`` seconds so that concurrency shows in the time."""
    tools = [slow_add, hang]

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    async def reset(self, row):
        await asyncio.sleep(0)
        self.answer = row["answer"]
        return [{"role": "user", "content": row["messages"][-1]["content"]}]

    async def step(self, message):
        await asyncio.sleep(self.delay)
        return StepResult(reward=float(message["content"].strip() == self.answer), done=True)


class SlowPlainEnv:
    """A plain step that sleeps ``delay`` seconds (run in the workflow's thread pool, so episodes overlap)."""

    def __init__(self, delay: float = 0.3):
        self.delay = delay

    def reset(self, row):
        return list(row["messages"])

    def step(self, message):
        time.sleep(self.delay)
        return StepResult(reward=1.0, done=True)


class AsyncRaisingEnv:
    """An ``async def`` step that raises on turn ``fail_turn`` of the episode whose prompt says FAIL; an
    ``async def`` reset that raises when the prompt says BADRESET."""

    def __init__(self, fail_turn: int = 1):
        self.fail_turn, self.turn = fail_turn, 0

    async def reset(self, row):
        if "BADRESET" in row["messages"][-1]["content"]:
            raise ValueError("no such level")
        self.fail = "FAIL" in row["messages"][-1]["content"]
        return list(row["messages"])

    async def step(self, message):
        await asyncio.sleep(0)
        if self.fail and self.turn == self.fail_turn:
            raise KeyError("secret")
        self.turn += 1
        return StepResult([{"role": "user", "content": "again"}], None, False)


class SlowToolEnv:
    """Tool sleepy; answers "7" right (done, reward 1) and anything else with feedback."""
    tools = [sleepy, add]

    def reset(self, row):
        return [{"role": "user", "content": row["messages"][-1]["content"]}]

    def step(self, message):
        if message["content"].strip() == "7":
            return StepResult(reward=1.0, done=True)
        return StepResult([{"role": "user", "content": "again"}], reward=0.0)
