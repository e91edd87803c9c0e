"""The environment contract of multi-turn rollouts, and the helpers that load, call and check a user's environment.

An environment is any class with (duck-typed, no base class to inherit)::

    class MyEnv:
        tools = [my_function]                       # optional: plain functions / bound methods the model may call
        def __init__(self, **env_kwargs): ...       # one instance per episode (rollout.workflow.env_kwargs)
        def reset(self, row: dict) -> list[dict]:   # the first chat messages of the episode
        def step(self, message: dict) -> StepResult: # optional: answer an assistant turn that called no tool

``row`` is the dataset row: every column (``answer``, ...) plus ``messages`` (the prompt as chat messages, with
``data.system_prompt``) and ``prompt_id``. ``message`` is ``{"role": "assistant", "content": text}``.
``step`` returns :class:`StepResult` (or a ``(messages, reward, done)`` tuple): the messages to append (e.g. a
``user`` turn with feedback), a reward (or None) and whether the episode is over. An environment without
``step`` ends the episode at the first assistant turn that calls no tool. ``reset``, ``step`` and the tools may be
``async def`` (awaited on the workflow's event loop, rlpost/envs/aio.py); plain ones run in a thread pool.

Tools are plain Python functions with type hints and a Google-style docstring (``Args:``); their JSON schemas
come from ``transformers.utils.get_json_schema`` and are given to the chat template as ``tools=``. A tool that
runs model-written code must run it in :func:`rlpost.sandbox.run_python`.
"""
from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from rlpost.envs.aio import EnvLoop, is_async
from rlpost.envs.calls import ToolCall, ToolParseError


class EnvError(RuntimeError):
    """A user environment raised or returned something unusable; the message names the environment, the
    method, the episode and the turn."""


@dataclass
class StepResult:
    """What the environment answers to one assistant turn.

    messages: chat messages appended to the conversation (``user`` feedback, ``tool`` results); masked out of the loss
    reward:   this turn's reward, or None (the episode's environment reward is the sum over its turns)
    done:     the episode is over
    """
    messages: list[dict] = field(default_factory=list)
    reward: float | None = None
    done: bool = False


class Environment(Protocol):
    """The shape a multi-turn environment has (see the module docstring); ``tools`` and ``step`` are optional."""

    def reset(self, row: dict) -> list[dict]: ...


def import_env(spec: str, where: str = "rollout.workflow.env") -> type:
    """``"package.module:ClassName"`` -> the class (the working directory is importable); a ConfigError names
    ``where`` when it cannot be imported."""
    from rlpost.config import ConfigError
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"{where}: expected 'package.module:ClassName', got {spec!r}")
    module_name, attr = spec.split(":", 1)
    if os.getcwd() not in sys.path:   # a user's local module, as `rlpost train` runs from their project (torchtune does too)
        sys.path.append(os.getcwd())
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{where}: cannot import environment {spec!r}: {err}") from None
    if not callable(getattr(cls, "reset", None)):
        raise ConfigError(f"{where}: {spec!r} has no reset(row) method")
    return cls


def check_env(spec: str, kwargs: dict, where: str = "rollout.workflow") -> type:
    """Import the environment and bind ``kwargs`` to its constructor without building it (``rlpost validate``)."""
    from rlpost.checks import check_call_kwargs
    cls = import_env(spec, f"{where}.env")
    check_call_kwargs(cls, dict(kwargs or {}), f"{where}.env_kwargs ({spec})")
    return cls


def tool_table(tools) -> dict[str, Callable]:
    """name -> function for an environment's ``tools`` (a list of callables, or a dict name -> callable)."""
    if isinstance(tools, dict):
        return dict(tools)
    return {fn.__name__: fn for fn in tools or []}


_SCHEMAS: dict[Any, dict] = {}


def tool_schemas(tools: dict[str, Callable]) -> list[dict]:
    """JSON schemas of the tools (cached per function), in the form chat templates take as ``tools=``."""
    from transformers.utils import get_json_schema
    out = []
    for name, fn in tools.items():
        key = getattr(fn, "__func__", fn)
        if key not in _SCHEMAS:
            _SCHEMAS[key] = get_json_schema(fn)
        schema = _SCHEMAS[key]
        if schema["function"]["name"] != name:
            schema = {**schema, "function": {**schema["function"], "name": name}}
        out.append(schema)
    return out


# ------------------------------------------------------------------------------------ tool calls

@dataclass
class ToolJob:
    """One tool call of one episode, run on a daemon thread so that a call past its timeout is abandoned."""
    call: ToolCall
    fn: Callable | None
    result: str | None = None
    error: bool = False
    thread: threading.Thread | None = None
    future: Any = None
    started: float = 0.0

    def start(self, loop=None) -> None:
        """A plain tool runs on a daemon thread; an ``async def`` tool as a task on ``loop`` (an EnvLoop), where
        the timeout cancels it."""
        self.started = time.monotonic()
        if is_async(self.fn):
            self.future = loop.submit(self._run_async())
            return

        def target():
            try:
                self._take(self.fn(**self.call.arguments))
            except Exception as err:   # a tool failing on the model's arguments is an answer, not a crash
                self._fail(err)
        self.thread = threading.Thread(target=target, daemon=True, name=f"tool-{self.call.name}")
        self.thread.start()

    async def _run_async(self):
        try:
            self._take(await self.fn(**self.call.arguments))
        except Exception as err:
            self._fail(err)

    def _take(self, out) -> None:
        self.result = out if isinstance(out, str) else repr(out) if out is not None else ""

    def _fail(self, err: Exception) -> None:
        self.result, self.error = f"Error: {self.call.name} raised {type(err).__name__}: {err}", True

    def finish(self, timeout_s: float) -> None:
        left = max(0.0, self.started + timeout_s - time.monotonic())
        if self.future is not None:
            try:
                self.future.result(left)
                return
            except FutureTimeout:
                self.future.cancel()   # cancels the coroutine on the loop
        else:
            self.thread.join(left)
            if not self.thread.is_alive():
                return
        self.result, self.error = f"Error: {self.call.name} timed out after {timeout_s:g} s", True


def plan_calls(calls: list[ToolCall], tools: dict[str, Callable]) -> list[ToolJob]:
    """A job per call; calls that cannot run (unparseable object, unknown tool) get their error result now."""
    jobs = []
    for call in calls:
        job = ToolJob(call, tools.get(call.name))
        if call.error:
            job.result, job.error = f"Error: {call.error}", True
        elif job.fn is None:
            job.result, job.error = f"Error: unknown tool {call.name!r}; available: {', '.join(tools)}", True
        jobs.append(job)
    return jobs


def run_jobs(jobs: list[ToolJob], timeout_s: float, loop=None) -> None:
    """Run every runnable job concurrently; each gets ``timeout_s`` from its start. ``async def`` tools run on
    ``loop`` (an :class:`~rlpost.envs.aio.EnvLoop`; one is made for the call when None)."""
    runnable = [j for j in jobs if j.result is None]
    if loop is None and any(is_async(j.fn) for j in runnable):
        loop = EnvLoop()
    for job in runnable:
        job.start(loop)
    for job in runnable:
        job.finish(timeout_s)


def tool_messages(jobs: list[ToolJob], max_chars: int) -> list[dict]:
    """One ``tool`` message per call, outputs cut to ``max_chars``."""
    out = []
    for job in jobs:
        text = job.result or ""
        if len(text) > max_chars:
            text = text[:max_chars] + f"\n... [truncated to {max_chars} characters]"
        out.append({"role": "tool", "name": job.call.name or "?", "content": text})
    return out


def parse_error_message(err: ToolParseError, example: str) -> dict:
    """The ``tool`` message answering a tool call that could not be read."""
    return {"role": "tool", "name": "error",
            "content": f"Error: the tool call could not be parsed ({err.message}). Write {example}"}
