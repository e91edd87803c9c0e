"""Run several reward functions with weights, at the same time; report each one; never swallow a failure.

Every reward function of a step starts at once and the step waits for the slowest, not for their sum (four
remote judges of 0.5 s each cost 0.5 s, not 2 s):

* ``async def`` functions (or instances with an ``async def __call__``) run on the manager's event loop, in a
  background thread, so they may await HTTP clients, sandboxes or other coroutines;
* plain functions run each on a thread of their own (threads, not processes: a function that waits on I/O,
  a subprocess or a GPU releases the GIL; pure-Python CPU work does not get faster, and does not get slower);
* a function marked with :func:`in_caller_thread` (math-verify, whose own time limit uses ``signal.alarm``,
  which works only in the main thread) runs in the calling thread while the others run.

Each call has a time limit: ``call_timeout_s`` in the reward's kwargs (default :data:`DEFAULT_TIMEOUT_S`), taken
out before the function is called. A function that passes it stops the step with a :class:`RewardError` naming the
function and the key; an async one is cancelled, a thread cannot be killed and is left to finish in the
background (its result is dropped). Results do not depend on which function finishes first: components keep the
config's order, totals are summed in that order, and each function gets its own copy of the column lists.
"""
from __future__ import annotations

import asyncio
import importlib
import inspect
import math
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Callable

from rlpost.rewards import REWARDS

DEFAULT_TIMEOUT_S = 300.0
MANAGER_KWARGS = ("call_timeout_s",)   # reward kwargs the manager reads and does not pass to the function


class RewardError(RuntimeError):
    """A reward function raised, timed out or returned something unusable; names it and the failing sample."""


@dataclass
class RewardSpec:
    name: str
    fn: Callable
    weight: float
    kwargs: dict
    timeout_s: float = DEFAULT_TIMEOUT_S
    key: str = "rewards"          # the config key of this entry, for error messages (rewards.<i>)


def in_caller_thread(fn: Callable) -> Callable:
    """Mark a reward function to run in the thread that calls :meth:`RewardManager.score` (not in a worker
    thread), e.g. because it relies on ``signal.alarm``. It still overlaps with the other reward functions."""
    fn.reward_in_caller_thread = True
    return fn


def split_call_options(kwargs: dict | None, where: str) -> tuple[dict, float]:
    """A reward entry's kwargs -> (the function's kwargs, its call timeout in seconds); a bad timeout is a
    ConfigError naming ``where``."""
    from rlpost.config import ConfigError
    fn_kwargs = {k: v for k, v in (kwargs or {}).items() if k not in MANAGER_KWARGS}
    timeout = (kwargs or {}).get("call_timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigError(f"{where}.kwargs.call_timeout_s must be a number of seconds > 0, got {timeout!r}")
    return fn_kwargs, float(timeout)


def resolve_reward(name: str, kwargs: dict | None = None) -> tuple[Callable, dict]:
    """A registered name, or ``package.module:function`` for a user's own reward function.

    Returns ``(fn, call_kwargs)``. A class (a reward that needs state, e.g. a loaded reward model) is a
    factory: it is built once with ``kwargs`` and its instance is the reward function (no call kwargs).
    A plain function gets ``kwargs`` on every call.
    """
    if ":" in name:
        module_name, fn_name = name.split(":", 1)
        try:
            fn = getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError) as err:
            raise KeyError(f"rewards: cannot import reward function {name!r}: {err}") from err
    else:
        fn = REWARDS.get(name)
    if isinstance(fn, type):
        try:
            return fn(**dict(kwargs or {})), {}
        except TypeError as err:
            raise ValueError(f"rewards: {name}: {err}") from err
    return fn, dict(kwargs or {})


def is_async(fn: Callable) -> bool:
    """``async def`` function, or an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


class RewardManager:
    """Weighted sum of reward functions: R = sum_k w_k r_k (None from a function counts as 0 and is
    excluded from that function's mean, as in TRL).

    ``concurrent=False`` runs the functions one after another (same results; for comparison and debugging).
    """

    def __init__(self, specs: list[RewardSpec], concurrent: bool = True):
        self.specs = specs
        self.concurrent = concurrent
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()

    @classmethod
    def from_config(cls, reward_cfgs) -> "RewardManager":
        specs = []
        for i, r in enumerate(reward_cfgs):
            fn_kwargs, timeout = split_call_options(r.kwargs, f"rewards.{i}")
            fn, kwargs = resolve_reward(r.name, fn_kwargs)
            name = fn.name if isinstance(getattr(fn, "name", None), str) else r.name  # a factory's instance may name itself
            if name in {s.name for s in specs}:
                raise ValueError(f"rewards: two entries report as {name!r}; give each a distinct kwargs.name")
            specs.append(RewardSpec(name, fn, r.weight, kwargs, timeout, f"rewards.{i}"))
        return cls(specs)

    # ------------------------------------------------------------------ scoring
    def score(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> tuple[list[float], dict[str, list[float]]]:
        """Return (total rewards, {name: per-sample rewards}), components in the config's order."""
        start = time.monotonic()
        if self.concurrent:
            futures = [None if self._caller_thread(s) else self._start(s, prompts, completions, columns)
                       for s in self.specs]
            for i, spec in enumerate(self.specs):   # the caller-thread ones, while the others run
                if futures[i] is None:
                    futures[i] = self._run_here(spec, prompts, completions, columns)
            outputs = [self._result(s, f, start, prompts, completions, columns) for s, f in zip(self.specs, futures)]
        else:
            outputs = []
            for spec in self.specs:
                begin = time.monotonic()
                future = (self._run_here(spec, prompts, completions, columns) if self._caller_thread(spec)
                          else self._start(spec, prompts, completions, columns))
                outputs.append(self._result(spec, future, begin, prompts, completions, columns))
        n = len(completions)
        totals = [0.0] * n
        components: dict[str, list[float]] = {}
        for spec, values in zip(self.specs, outputs):
            clean = self._check(spec, values, completions)
            components[spec.name] = clean
            for i, v in enumerate(clean):
                if v is not None:
                    totals[i] += spec.weight * v
        return totals, components

    @staticmethod
    def _caller_thread(spec: RewardSpec) -> bool:
        return bool(getattr(spec.fn, "reward_in_caller_thread", False)) and not is_async(spec.fn)

    @staticmethod
    def _args(spec, columns) -> dict:
        """The function's keyword arguments: its own copy of each column list, then its config kwargs."""
        return {**{k: list(v) if isinstance(v, list) else v for k, v in columns.items()}, **spec.kwargs}

    def _start(self, spec: RewardSpec, prompts, completions, columns) -> Future:
        """Start one reward function: on the event loop (async) or on a daemon thread of its own (plain)."""
        args = (list(prompts), list(completions))
        if is_async(spec.fn):
            return asyncio.run_coroutine_threadsafe(spec.fn(*args, **self._args(spec, columns)), self._event_loop())
        future: Future = Future()

        def run():
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(spec.fn(*args, **self._args(spec, columns)))
                except BaseException as err:  # noqa: BLE001  (handed to the caller)
                    future.set_exception(err)

        # a daemon thread, not a pool: a function stuck past its timeout must neither hold a pool slot nor block exit
        threading.Thread(target=run, name=f"reward-{spec.name}", daemon=True).start()
        return future

    def _run_here(self, spec, prompts, completions, columns) -> Future:
        future: Future = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(spec.fn(list(prompts), list(completions), **self._args(spec, columns)))
        except Exception as err:  # noqa: BLE001
            future.set_exception(err)
        return future

    def _result(self, spec, future: Future, start: float, prompts, completions, columns):
        """The function's return value, waiting at most until ``start + spec.timeout_s``."""
        try:
            return future.result(timeout=max(0.0, start + spec.timeout_s - time.monotonic()))
        except FutureTimeout:
            future.cancel()   # cancels a coroutine; a thread finishes in the background and is ignored
            raise RewardError(f"reward function {spec.name!r} did not finish within {spec.timeout_s:g} s "
                              f"({spec.key}.kwargs.call_timeout_s)") from None
        except Exception as err:
            sample = self._find_failing_sample(spec, prompts, completions, columns)
            raise RewardError(f"reward function {spec.name!r} raised {type(err).__name__}: {err}{sample}") from err

    @staticmethod
    def _check(spec, values, completions) -> list[float | None]:
        n = len(completions)
        values = list(values) if values is not None else None
        if values is None or len(values) != n:
            raise RewardError(f"reward function {spec.name!r} returned {None if values is None else len(values)} "
                              f"values for {n} completions")
        clean = []
        for i, v in enumerate(values):
            if v is not None and (not isinstance(v, (int, float)) or math.isnan(float(v))):
                raise RewardError(f"reward function {spec.name!r} returned {v!r} for sample {i} "
                                  f"(completion {completions[i]!r:.80}); expected a number or None")
            clean.append(None if v is None else float(v))
        return clean

    def _find_failing_sample(self, spec, prompts, completions, columns) -> str:
        """Re-run the function one sample at a time (bounded by its timeout) to name the first sample that raises."""
        deadline = time.monotonic() + spec.timeout_s
        for i in range(len(completions)):
            one = {k: [v[i]] if isinstance(v, list) and len(v) == len(completions) else v for k, v in columns.items()}
            future = (self._run_here(spec, [prompts[i]], [completions[i]], one) if self._caller_thread(spec)
                      else self._start(spec, [prompts[i]], [completions[i]], one))
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                future.cancel()
                return ""
            except Exception:
                return f"\n  failing sample {i}: prompt={prompts[i]!r:.120} completion={completions[i]!r:.120}"
        return ""

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The manager's event loop, running on a daemon thread (started at the first async reward)."""
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="reward-loop", daemon=True).start()
                self._loop = loop
            return self._loop

    def close(self) -> None:
        """Stop the event loop thread (if any). A manager is usable again afterwards (a new loop starts)."""
        with self._loop_lock:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._loop = None
