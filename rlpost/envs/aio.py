"""Environment methods and tools that may be ``async def``: one event loop per workflow, on a daemon thread.

``EnvLoop.run(coro)`` runs a coroutine there and blocks the caller (the trainer's thread) until it is done;
``call(fn, *args)`` is the coroutine that calls a user function: an ``async def`` one is awaited on the loop,
a plain one runs in the loop's thread pool (so a slow plain ``step`` of one episode does not hold up the others),
and a plain function that returns an awaitable has it awaited.
"""
from __future__ import annotations

import asyncio
import inspect
import threading
from concurrent.futures import ThreadPoolExecutor


def is_async(fn) -> bool:
    """``fn`` (a function, bound method or callable object) is ``async def``."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


async def call(fn, *args, **kwargs):
    """``await fn(*args)`` for an ``async def`` fn; a plain fn runs in the loop's thread pool."""
    if is_async(fn):
        out = await fn(*args, **kwargs)
    else:
        out = await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))
    if inspect.isawaitable(out):
        out = await out
    return out


class EnvLoop:
    """An asyncio loop running on its own daemon thread (started on first use), with a thread pool of
    ``workers`` threads for plain functions."""

    def __init__(self, workers: int = 32):
        self.workers = workers
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self.loop is None:
                loop = asyncio.new_event_loop()
                loop.set_default_executor(ThreadPoolExecutor(self.workers, thread_name_prefix="rlpost-env"))
                threading.Thread(target=loop.run_forever, daemon=True, name="rlpost-env-loop").start()
                self.loop = loop
        return self.loop

    def submit(self, coro):
        """Schedule ``coro`` on the loop; returns a concurrent.futures.Future."""
        return asyncio.run_coroutine_threadsafe(coro, self._start())

    def run(self, coro):
        """Run ``coro`` on the loop and return its result (its exception is raised here)."""
        return self.submit(coro).result()
