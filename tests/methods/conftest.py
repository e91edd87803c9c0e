"""Shared helper for the methods' end-to-end tests: a few tiny steps through the real CLI."""
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Small and fast: 4 prompts x 4 completions per step, 16 held-out prompts at the start and the end.
SMALL = ["rollout.prompts_per_step=4", "rollout.num_generations=4", "data.num_eval=16", "data.num_train=200",
         "trainer.eval_steps=0", "trainer.save_steps=0", "trainer.report_to=[none]", "trainer.progress_bar=false"]


@pytest.fixture
def train(tmp_path):
    """train(config, *overrides, steps=3) -> list of metrics.jsonl rows (asserts the CLI exits 0)."""
    from rlpost.cli import main

    def run(config: str, *overrides: str, steps: int = 3, out: Path | None = None) -> list[dict]:
        out = out or tmp_path / "run"
        rc = main(["train", str(ROOT / config), *SMALL, f"trainer.max_steps={steps}",
                   f"trainer.output_dir={out}", *overrides])
        assert rc == 0
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]

    return run


def assert_finite(rows: list[dict], keys, steps=None) -> None:
    """Every key is present and finite in every training row (step >= 1), or in the given steps."""
    for row in rows:
        if row["step"] == 0 or (steps is not None and row["step"] not in steps):
            continue
        for key in keys:
            assert key in row, f"{key} missing at step {row['step']}: {sorted(row)}"
            assert row[key] is not None and math.isfinite(row[key]), f"{key} = {row[key]} at step {row['step']}"
