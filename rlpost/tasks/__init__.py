"""Synthetic tasks that generate train/test splits from a seed (no dataset hub needed).

Each task module exposes ``make_split(split, n, seed) -> list[dict]`` with at least the columns
``prompt`` (the question text) and ``answer``; the registry ``TASKS`` maps a name to the module's
``make_split`` so a config can say ``data.task: arithmetic``.
"""
from rlpost.registry import Registry

TASKS = Registry("synthetic task")

from rlpost.tasks import a2fm_mini, apr_countdown, arithmetic, countdown, guess_number  # noqa: E402,F401  (registration)
