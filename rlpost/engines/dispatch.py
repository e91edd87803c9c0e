"""Load-based dispatch of a generation batch over several ``rlpost serve`` workers (rollout.engine: vllm_server).

Load of a worker = tokens this client has in flight there: for every request sent and not yet answered,
``n * (len(prompt_ids) + max_tokens)`` (its prompt and its completion budget, the KV the worker holds for it).
A worker (vLLM's async engine) batches every call it holds continuously, so its load is what shares its steps.

A batch is split by water-filling: worker k gets a share ``s_k = max(0, T - load_k)`` with the level T chosen so
that ``sum_k s_k`` is the batch's weight, i.e. the least-loaded workers are filled first, up to a common level.
The requests are then cut, in order, into contiguous slices of those weights: request i goes to the slice that
holds the midpoint of its weight interval ``[c_i, c_i + w_i)`` (c_i = weight of the requests before it; a
midpoint on a boundary goes to the lower worker).
Slices stay contiguous and in worker order, so a slice is sent with its ``seed_offset`` and a sample's seed
depends only on its place in the batch (rlpost/engines/vllm_engine.py), never on which worker served it.

:class:`LoadTracker` holds the loads behind one lock: ``split`` reserves the slices' weights atomically and
``release`` gives them back when the worker answers, so concurrent ``generate`` calls (the async generation
thread, per-episode rollouts of multi-turn workflows: each episode's turn is a call of its own) see each other's
load.
"""
from __future__ import annotations

import threading


def request_weight(prompt_len: int, n: int, max_tokens: int) -> int:
    """Tokens one request keeps in flight: n sequences of prompt + completion budget."""
    return n * (prompt_len + max_tokens)


def water_level(loads: list[float], total: float) -> float:
    """The level T with ``sum_k max(0, T - loads_k) == total`` (total >= 0)."""
    order = sorted(loads)
    filled = 0.0
    for k, load in enumerate(order):
        nxt = order[k + 1] if k + 1 < len(order) else float("inf")
        room = (k + 1) * (nxt - load) if nxt != float("inf") else float("inf")
        if filled + room >= total:   # the level lies between order[k] and the next load: k + 1 workers share it
            return load + (total - filled) / (k + 1)
        filled += room
    raise AssertionError("unreachable: the last interval has infinite room")


def split(loads: list[float], weights: list[float]) -> list[tuple[int, int, int]]:
    """(worker, lo, hi) slices of requests ``weights`` (contiguous, in worker order, empty ones left out) that
    water-fill the workers' ``loads`` (see the module docstring)."""
    if not weights:
        return []
    total = float(sum(weights))
    if total <= 0:   # nothing to weigh (empty prompts and max_tokens 0): the least-loaded worker takes all
        k = min(range(len(loads)), key=lambda i: (loads[i], i))
        return [(k, 0, len(weights))]
    level = water_level(loads, total)
    shares = [max(0.0, level - load) for load in loads]
    ends, acc = [], 0.0
    for s in shares:
        acc += s
        ends.append(acc)
    owner, c = [], 0.0
    k = 0
    for w in weights:
        mid = c + w / 2
        while k < len(ends) - 1 and mid > ends[k]:
            k += 1
        owner.append(k)
        c += w
    slices = []
    lo = 0
    for i in range(1, len(weights) + 1):
        if i == len(weights) or owner[i] != owner[lo]:
            slices.append((owner[lo], lo, i))
            lo = i
    return slices


class LoadTracker:
    """Tokens in flight per worker, shared by every thread that generates through one client."""

    def __init__(self, num_workers: int):
        self.loads = [0.0] * num_workers
        self.lock = threading.Lock()

    def reserve(self, weights: list[float]) -> list[tuple[int, int, int, float]]:
        """Split a batch by the current loads and add each slice's weight to its worker, atomically.
        Returns (worker, lo, hi, weight) per slice; hand each back to :meth:`release` when the worker answers."""
        with self.lock:
            slices = [(k, lo, hi, float(sum(weights[lo:hi]))) for k, lo, hi in split(self.loads, weights)]
            for k, _, _, w in slices:
                self.loads[k] += w
        return slices

    def release(self, worker: int, weight: float) -> None:
        with self.lock:
            self.loads[worker] = max(0.0, self.loads[worker] - weight)

    def snapshot(self) -> list[float]:
        with self.lock:
            return list(self.loads)
