"""Countdown in APR's search-trace format (Pan et al. 2025): root prompts for ``rollout.workflow: apr``.

A row's prompt is the raw thread prompt (no chat template: set ``data.chat_template: false``)::

    [Sub Call Budget: k |Token Budget: n ]Moving to Node #0
    Current State: 21:[3, 7, 9], Operations: []

The paper's task uses 4 numbers, targets 10..100 and + - * /; the CPU miniature (recipes/apr/tiny.yaml)
uses 3 numbers in 1..9, targets 10..25 and only + and - (``ops="+-"``: a 0.5M-parameter model trained for
minutes on a CPU does not learn a multiplication table). Train and test never share a problem: a
problem (sorted numbers, target) is held out when its hash falls in the test bucket (about 15 %); its
orderings are distinct prompts of the same split. Every problem is solvable with ``ops``.
"""
from __future__ import annotations

import hashlib
import random

from rlpost.tasks import TASKS
from rlpost.workflows.apr import countdown_prompt, solvable


def in_test(target: int, nums) -> bool:
    return hashlib.sha256(repr((target, tuple(sorted(nums)))).encode()).digest()[0] < 38  # ~15 %


def problems(split: str, n: int, seed: int = 0, count: int = 3, max_num: int = 9,
             target_range: tuple[int, int] = (10, 30), distinct: bool = True, ops: str = "+-*/") -> list[tuple[int, list[int]]]:
    """``n`` solvable (target, nums) pairs of ``split``; distinct problems while the split has enough."""
    if split not in ("train", "test"):
        raise ValueError(f"apr_countdown split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"apr-countdown-{split}-{seed}-{count}-{max_num}-{target_range}-{ops}")
    out, seen, misses = [], set(), 0
    while len(out) < n:
        target = rng.randint(*target_range)
        nums = [rng.randint(1, max_num) for _ in range(count)]
        key = (target, tuple(nums))          # orderings of one problem are distinct prompts (same split)
        if in_test(target, nums) != (split == "test") or not solvable(target, nums, ops):
            continue
        if distinct and key in seen:
            misses += 1
            if misses > 20 * n + 2000:  # the split is exhausted: allow repeats from here on
                distinct = False
            continue
        seen.add(key)
        out.append((target, nums))
    return out


@TASKS.register("apr_countdown")
def make_split(split: str, n: int, seed: int = 0, count: int = 3, max_num: int = 9,
               target_range=(10, 30), sub_call_budget: int | None = None,
               token_budget: int | None = None, ops: str = "+-*/") -> list[dict]:
    """Rows ``{"prompt": root prompt, "target", "nums", "answer"}`` (``answer``: the target, for display).

    ``ops``: the operations a problem may need (every problem is solvable with them)."""
    rows = []
    for target, nums in problems(split, n, seed, count, max_num, tuple(target_range), ops=ops):
        rows.append({"prompt": countdown_prompt(target, nums, sub_call_budget, token_budget),
                     "target": target, "nums": nums, "answer": str(target)})
    return rows
