"""Built-in rule-based rewards: task answers (checkers in rlpost/tasks), math answers (math-verify), format, DAPO
overlong penalty."""
from __future__ import annotations

import re

from rlpost.rewards import REWARDS
from rlpost.rewards.manager import in_caller_thread
from rlpost.tasks.arithmetic import check_arithmetic
from rlpost.tasks.countdown import check_countdown


def _rows(n: int, columns: dict) -> list[dict]:
    return [{k: v[i] for k, v in columns.items() if isinstance(v, list) and len(v) == n} for i in range(n)]


def _scores(correct, correct_score: float, incorrect_score: float) -> list[float]:
    """Correctness -> reward: ``correct_score`` / ``incorrect_score`` (1 / 0 by default; DAPO and HAPO use 1 / -1:
    ``kwargs: {incorrect_score: -1.0}``). Accuracy metrics count rewards >= 1, so keep correct_score >= 1."""
    return [float(correct_score) if ok else float(incorrect_score) for ok in correct]


@REWARDS.register("arithmetic")
def arithmetic_reward(prompts, completions, answer, correct_score: float = 1.0, incorrect_score: float = 0.0,
                      **kwargs) -> list[float]:
    """correct_score (1.0) when the first integer of the completion equals ``answer``, else incorrect_score (0.0)."""
    return _scores((check_arithmetic(c, {"answer": a}) for c, a in zip(completions, answer)),
                   correct_score, incorrect_score)


@REWARDS.register("countdown")
def countdown_reward(prompts, completions, nums, target, correct_score: float = 1.0, incorrect_score: float = 0.0,
                     **kwargs) -> list[float]:
    """correct_score (1.0) for a valid Countdown expression (each number once, + - * /, equals target), else
    incorrect_score (0.0)."""
    return _scores((check_countdown(c, {"nums": n, "target": t}) for c, n, t in zip(completions, nums, target)),
                   correct_score, incorrect_score)


@REWARDS.register("math_verify")
@in_caller_thread   # math-verify's own time limit is signal.alarm (or a process per call off the main thread)
def math_verify_reward(prompts, completions, answer, correct_score: float = 1.0, incorrect_score: float = 0.0,
                       **kwargs) -> list[float]:
    """correct_score (1.0) when math-verify finds the completion's final answer equivalent to ``answer`` (LaTeX or
    plain), else incorrect_score (0.0; DAPO's rule-based reward is -1: ``kwargs: {incorrect_score: -1.0}``)."""
    from math_verify import parse, verify

    correct = []
    for completion, gold in zip(completions, answer):
        gold_text = str(gold)
        gold_parsed = parse(gold_text if "$" in gold_text or "\\" in gold_text else f"${gold_text}$")
        try:
            correct.append(bool(gold_parsed) and bool(verify(gold_parsed, parse(completion))))
        except Exception:  # math-verify raises on pathological input; that answer is simply wrong
            correct.append(False)
    return _scores(correct, correct_score, incorrect_score)


@REWARDS.register("format")
def format_reward(prompts, completions, pattern: str = r"^\s*-?\d+\s*$", **kwargs) -> list[float]:
    """1.0 when the whole completion matches ``pattern`` (a regex; default: a bare integer)."""
    regex = re.compile(pattern, flags=re.S)
    return [float(bool(regex.match(c))) for c in completions]


@REWARDS.register("overlong_penalty")
def overlong_penalty(prompts, completions, completion_ids, max_completion_length: int,
                     overlong_buffer: int = 4, penalty_factor: float = 1.0, **kwargs) -> list[float]:
    """DAPO soft overlong punishment (Yu et al. 2025, eq. 13), with L_max = max_completion_length,
    L_cache = overlong_buffer:

        0                                 if |y| <= L_max - L_cache
        ((L_max - L_cache) - |y|)/L_cache if L_max - L_cache < |y| <= L_max
        -1                                if |y| > L_max
    scaled by ``penalty_factor``.
    """
    expected = max_completion_length - overlong_buffer
    out = []
    for ids in completion_ids:
        length = len(ids)
        if length <= expected:
            out.append(0.0)
        elif length <= max_completion_length:
            out.append(penalty_factor * (expected - length) / overlong_buffer)
        else:
            out.append(-penalty_factor)
    return out
