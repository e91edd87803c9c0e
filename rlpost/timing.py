"""Where a training step's time goes: seconds per phase, logged as ``timing/<phase>`` in metrics.jsonl.

    times = PhaseTimes()
    with times("generate"):
        ...
    times.metrics()   # {"timing/generate": 0.41, ...}; then times.reset() for the next step

Phases of the RL loop (rlpost/trainer.py): ``generate`` (engine calls, refill rounds included), ``score`` (reward
functions and models), ``logprobs`` (old-policy and reference log-probs), ``update`` (the optimizer steps),
``weight_sync`` (learner -> engine) and ``eval`` (held-out evaluation, on the steps that have one).
"""
from __future__ import annotations

import contextlib
import time


class PhaseTimes:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"timing/{phase}": s for phase, s in self.seconds.items()}

    def reset(self) -> None:
        self.seconds = {}
