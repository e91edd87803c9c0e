"""Multi-digit arithmetic: ``"37+45="`` -> ``"82"`` (digits and operators are parameters).

Train and test draw from disjoint operand pairs: a pair goes to ``test`` when a hash of it falls in
the test bucket, so held-out accuracy measures generalisation, not memorisation.
"""
from __future__ import annotations

import hashlib
import random
import re

from rlpost.tasks import TASKS

OPS = ("+",)  # default: addition; pass ops=("+", "-") for a harder mix


def _in_test(a: int, op: str, b: int) -> bool:
    digest = hashlib.sha256(f"{a}{op}{b}".encode()).digest()
    return digest[0] < 26  # ~10% of all pairs are held out


def make_problem(rng: random.Random, digits: int = 2, ops=OPS) -> tuple[int, str, int]:
    lo, hi = 10 ** (digits - 1), 10 ** digits - 1
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    op = rng.choice(ops)
    if op == "-" and b > a:
        a, b = b, a
    return a, op, b


def solve(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


@TASKS.register("arithmetic")
def make_split(split: str, n: int, seed: int = 0, digits: int = 2, ops=OPS) -> list[dict]:
    """``n`` rows of ``{"prompt": "37+45=", "answer": "82"}`` from the ``train`` or ``test`` split."""
    if split not in ("train", "test"):
        raise ValueError(f"arithmetic split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"arithmetic-{split}-{seed}-{digits}")
    rows, seen = [], set()
    want_test = split == "test"
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise ValueError(f"arithmetic: cannot draw {n} distinct {split} problems with {digits} digits")
        a, op, b = make_problem(rng, digits, ops)
        if _in_test(a, op, b) != want_test or (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        rows.append({"prompt": f"{a}{op}{b}=", "answer": str(solve(a, op, b))})
    return rows


_INT = re.compile(r"-?\d+")


def first_integer(text: str) -> str | None:
    m = _INT.search(text)
    return m.group() if m else None


def check_arithmetic(completion: str, row: dict) -> bool:
    """The first integer in the completion equals the answer."""
    return first_integer(completion) == str(row["answer"]).strip()
