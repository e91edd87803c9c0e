"""Synthetic tasks that generate train/test splits from a seed (no dataset hub needed).

Each task module exposes ``make_split(split, n, seed) -> list[dict]`` with at least the columns
``prompt`` (the question text) and ``answer``; the registry ``TASKS`` maps a name to the module's
``make_split`` so a config can say ``data.task: arithmetic``. ``TASK_CHECKERS`` maps a task to the function
that says whether a completion answers a row correctly.
"""
from rlpost.registry import Registry

TASKS = Registry("synthetic task")

from rlpost.tasks import a2fm_mini, apr_countdown, arithmetic, countdown, guess_number  # noqa: E402,F401  (registration)

# task -> check(completion, row) -> bool: is a completion right (rule-based rewards, SFT / RM held-out scores,
# the tiny models' warm start)
TASK_CHECKERS = {"arithmetic": arithmetic.check_arithmetic, "countdown": countdown.check_countdown}
