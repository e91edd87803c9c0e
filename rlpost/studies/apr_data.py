"""APR / SoS+ supervised data for the from-scratch miniature (solver traces -> (prompt, completion) pairs).

Every call of an APR solver tree is its own SFT sequence (parent calls, children, continuations), as in
the paper; an SoS+ trace is one sequence with a ``Token Budget: n `` prefix (512-token bins).
"""
from __future__ import annotations

import random

from rlpost.tasks.apr_countdown import problems
from rlpost.workflows.apr import apr_trace, sos_trace, validate_tree

# Miniature defaults: 3 numbers in 1..9, targets 10..25, + and - only (the paper: 4 numbers, targets 10..100, + - * /).
TASK = {"count": 3, "max_num": 9, "target_range": (10, 25), "ops": "+-"}
BUDGET_BIN, BUDGET_CAP = 128, 768   # SoS+ token-budget bins of the miniature (phrase-tokenizer tokens)


def trace_pairs(kind: str, n_traces: int, seed: int = 0, beam: tuple[int, int] = (1, 4), p_parallel: float = 0.9,
                p_sub: float = 0.5, task: dict | None = None, check: bool = False, count_tokens=len,
                budget_bin: int = BUDGET_BIN, budget_cap: int = BUDGET_CAP) -> tuple[list[tuple[str, str]], dict]:
    """(prompt, completion) pairs from ``n_traces`` solver runs on training problems (repeats allowed,
    each run draws its own beam sizes), and stats. ``kind``: ``apr`` (parallel trees, no conditioning)
    or ``sos`` (serial SoS+ traces conditioned on ``Token Budget: n ``: the trace's ``count_tokens`` rounded
    up to ``budget_bin``, capped at ``budget_cap``; the paper: Llama tokens, 512 and 4096)."""
    task = {**TASK, **(task or {})}
    rng = random.Random(f"apr-data-{kind}-{seed}")
    probs = problems("train", n_traces, seed=seed, count=task["count"], max_num=task["max_num"],
                     target_range=tuple(task["target_range"]), distinct=False, ops=task["ops"])
    pairs, solved, children, tokens = [], 0, 0, 0
    for target, nums in probs:
        b = rng.randint(*beam)
        if kind == "apr":
            tree = apr_trace(target, nums, rng, beam_size=b, sub_beam_size=rng.randint(b, max(b, beam[1])),
                             p_parallel=p_parallel, ops=task["ops"])
            children += tree.num_children()
        elif kind == "sos":
            tree = sos_trace(target, nums, rng, beam_size=b, p_sub=p_sub, budget="tokens", count_tokens=count_tokens,
                             budget_bin=budget_bin, budget_cap=budget_cap, ops=task["ops"])
        else:
            raise ValueError(f"kind must be 'apr' or 'sos', got {kind!r}")
        if check:
            assert validate_tree(tree) == [], validate_tree(tree)[:3]
        solved += tree.solved
        seqs = tree.sequences()
        tokens += sum(len(c) for _, c in seqs)
        pairs += seqs
    stats = {"kind": kind, "traces": len(probs), "sequences": len(pairs), "solver_accuracy": solved / len(probs),
             "children_per_tree": children / len(probs), "completion_chars_per_trace": tokens / len(probs)}
    return pairs, stats
