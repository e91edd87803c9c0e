"""Rollout-time logits processors chosen by name (``rollout.logits_processor``), e.g. HAPO's adaptive temperature.

An entry is a small class; its state is carried from one RL step to the next by the trainer::

    entry = LOGITS_PROCESSORS.entry(name)
    params = build_params(entry.params, shared=rollout_cfg, overrides=node)
    state = None                                               # first step: no statistics yet
    for step in steps:
        proc = entry.fn(params, state)                         # built once per rollout
        samples = engine.generate(reqs, SamplingParams(..., logits_processors=[proc]))
        metrics |= proc.metrics()                              # after generation (one host sync)
        ... old-policy forward gives old_entropies [B,T] ...
        state = entry.fn.next_state(old_entropies, response_mask, params)   # a plain dict, checkpointable

The engine calls ``proc(step: int, input_ids [N,L], logits [N,V]) -> logits [N,V]`` on the raw next-token
logits before temperature / top-k / top-p (see :data:`rlpost.engines.base.LogitsProcessor`).

``input_ids`` (every row's prompt + generated ids, left-padded) costs the vLLM engine a Python rebuild of all
rows at every decode step (0.1-1 s per step at hundreds of rows of thousands of tokens). A processor that does
not read it declares ``needs_input_ids = False`` and receives ``None`` there; a callable that declares
nothing is assumed to need it (:func:`needs_input_ids`).
"""
from __future__ import annotations

from typing import Any, Protocol

import torch

from rlpost.registry import Registry

LOGITS_PROCESSORS = Registry("logits processor")


class StatefulLogitsProcessor(Protocol):
    """The contract of a registered logits-processor class."""

    def __init__(self, params: Any, state: dict | None = None): ...

    needs_input_ids: bool   # False: the engine may pass None as input_ids (no per-step token history)

    def __call__(self, step: int, input_ids: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor: ...

    def metrics(self) -> dict[str, float]: ...

    @staticmethod
    def next_state(old_entropies: torch.Tensor, response_mask: torch.Tensor, params: Any) -> dict | None: ...


def needs_input_ids(processors) -> bool:
    """Whether any of ``processors`` reads the token history (``needs_input_ids``, True when undeclared)."""
    return any(getattr(proc, "needs_input_ids", True) for proc in processors)
