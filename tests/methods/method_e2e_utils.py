"""Helpers for the HAPO / ADORA / OBLR-PO / GAIN-RL end-to-end tests: a few tiny steps through the real CLI."""
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Small and fast: 4 prompts x 4 completions per step, 16 held-out prompts at the start and the end; one torch
# thread (on a shared 2-core machine two intra-op threads spin at barriers and run several times slower).
SMALL = ["rollout.prompts_per_step=4", "rollout.num_generations=4", "data.num_eval=16", "data.num_train=200",
         "trainer.eval_steps=0", "trainer.save_steps=0", "trainer.report_to=[none]", "trainer.progress_bar=false",
         "trainer.num_threads=1"]


def run_train(out: Path, config: str, *overrides: str, steps: int = 3) -> list[dict]:
    """`rlpost train <config> <SMALL> <overrides>` into ``out``; the rows of its metrics.jsonl."""
    from rlpost.cli import main

    rc = main(["train", str(ROOT / config), *SMALL, f"trainer.max_steps={steps}", f"trainer.output_dir={out}",
               *overrides])
    assert rc == 0
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def assert_finite(rows: list[dict], keys, steps=None) -> None:
    """Every key is present and finite in every training row (step >= 1), or in the given steps."""
    for row in rows:
        if row["step"] == 0 or (steps is not None and row["step"] not in steps):
            continue
        for key in keys:
            assert key in row, f"{key} missing at step {row['step']}: {sorted(row)}"
            assert row[key] is not None and math.isfinite(row[key]), f"{key} = {row[key]} at step {row['step']}"
