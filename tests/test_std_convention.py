"""One std convention in every results table: the sample standard deviation over seeds (ddof 1)."""
import json
import math
import shutil
from pathlib import Path

import pytest

from rlpost import reproduce
from rlpost.studies import constrained_rlhf, implicit_sft
from rlpost.studies.common import STD_NOTE, mean_std

ROOT = Path(__file__).resolve().parents[1]


def test_mean_std_is_the_sample_std():
    # [1, 2, 3]: mean 2, sum of squares 2 -> sample std sqrt(2/2) = 1 (population: sqrt(2/3) = 0.816)
    assert mean_std([1, 2, 3]) == {"mean": 2.0, "std": 1.0}
    assert mean_std([5.0]) == {"mean": 5.0, "std": 0.0}
    assert reproduce._mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)


def test_constrained_summary_uses_the_sample_std():
    rows = lambda acc: [{"step": 0, "eval/accuracy": 0.5}, {"step": 5, "eval/accuracy": acc}]  # noqa: E731
    s = constrained_rlhf.summarise({"sum": [rows(0.1), rows(0.2), rows(0.3)]})
    assert s["sum"]["mean"]["final"]["mean"] == pytest.approx(0.2)
    assert s["sum"]["mean"]["final"]["std"] == pytest.approx(0.1)        # sqrt((0.01 + 0 + 0.01) / 2)


def test_implicit_sft_aggregate_uses_the_sample_std():
    base = {"loss": "nll", "lr_scale": 1.0, "lr": 1e-3, "initial": 0.2, "after_sft": None, "after_dpo": None,
            "kl_to_initial": None, "implicit_reward": None, "dpo_margin": None}
    rows = [{**base, "seed": s, "after_sft": v} for s, v in enumerate([0.6, 0.8, 1.0])]
    g = implicit_sft.aggregate(rows)[0]
    assert g["after_sft"]["std"] == pytest.approx(0.2) and g["initial"]["std"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("recipe", ["hapo", "adora", "oblr_po", "gain_rl", "constrained_rlhf",
                                    "constrained_rlhf/paper_steps", "implicit_sft"])
def test_every_committed_table_with_a_std_states_the_convention(recipe):
    table = (ROOT / "results" / recipe / "table.md").read_text()
    assert "±" in table and STD_NOTE in table


def test_reproduce_rewrite_recomputes_the_committed_table(tmp_path):
    """Rewriting a committed reproduce table from its runs.json gives the committed table back."""
    shutil.copytree(ROOT / "results" / "oblr_po", tmp_path / "oblr_po")
    reproduce.rewrite("oblr_po", tmp_path)
    assert (tmp_path / "oblr_po" / "table.md").read_text() == (ROOT / "results/oblr_po/table.md").read_text()
    summary = json.loads((tmp_path / "oblr_po" / "runs.json").read_text())["summary"]
    finals = [r["final"] for r in json.loads((ROOT / "results/oblr_po/runs.json").read_text())["runs"]
              if r["method"] == "GRPO" and r["task"] == "arithmetic"]
    m = sum(finals) / 3
    assert summary["arithmetic"]["methods"]["GRPO"]["final_std"] == pytest.approx(
        math.sqrt(sum((f - m) ** 2 for f in finals) / 2))
