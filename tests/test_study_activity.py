"""The activity sections of the study miniatures' tables (rlpost/studies/*.py), from hand-made and committed runs."""
import json
from pathlib import Path

from rlpost.reproduce import Component
from rlpost.studies.common import activity_section

ROOT = Path(__file__).resolve().parents[1]


def test_activity_section_by_hand():
    comps = (Component("weights", "m/w", "range", 1.0, what="mean weight"), Component("clamp", "m/c", what="share"))
    runs = {"X": [[{"step": 0, "m/w": 1.0}, {"step": 1, "m/w": 1.0, "m/c": 0.0}, {"step": 2, "m/w": 1.5, "m/c": 0.0}]]}
    lines = activity_section(runs, comps)
    assert lines[2] == "**Never acted: clamp.** Rows that depend on them do not test them."
    assert "| X | weights | `m/w` (mean weight) | 1/2 | 1.25 | 1..1.5 |" in lines     # step 0 is not a training step
    assert "| X | clamp | `m/c` (share) | 0/2 | 0 | 0..0 |" in lines
    runs["X"][0][2]["m/c"] = 0.5
    assert activity_section(runs, comps)[2] == "Every component acted in its runs."
    assert activity_section({"X": [[{"step": 1, "m/w": 2.0}]]}, comps)[2].startswith("**Never acted: clamp")  # not logged


def test_apr_and_a2fm_tables_report_activity(tmp_path):
    from rlpost.studies import a2fm, apr
    res = json.loads((ROOT / "results/apr/results.json").read_text())
    for r in res["runs"].values():   # hand-made traces: APR spawns on its second step, SoS+ never
        spawn = 2.0 if r["kind"] == "apr" else 0.0
        r["rl_trace"] = [{"step": 1, "apr/children": 0.0, "apr/calls": 1.0},
                         {"step": 2, "apr/children": spawn, "apr/calls": 1.0 + spawn}]
    apr.write_table(res, tmp_path / "apr.md")
    text = (tmp_path / "apr.md").read_text()
    assert text.splitlines()[2] == "Every component acted in its runs." and "## Activity" in text
    assert "| APR RL s0 | spawn() child threads | `apr/children` (child threads per tree) | 1/2 | 1 | 0..2 |" in text

    res = json.loads((ROOT / "results/a2fm/results.json").read_text())
    for r in res["runs"].values():   # no agentic route, no tool call in any step
        for c in r["rl_curve"]:
            c.update({"a2fm/share/instant": 0.5, "a2fm/share/reasoning": 0.5, "a2fm/share/agentic": 0.0,
                      "a2fm/tool_calls": 0.0, "a2fm/apo_cost_factor": 0.75, "a2fm/apo_cost_factor_partial": 0.5})
    a2fm.write_table(res, tmp_path / "a2fm.md")
    head = (tmp_path / "a2fm.md").read_text().splitlines()[2]
    assert head == "**Never acted: agentic route, tools.** Rows that depend on them do not test them."


def test_constrained_table_reports_multiplier_activity(tmp_path):
    from rlpost.studies import constrained_rlhf as c
    from rlpost.tracking import read_metrics
    res = json.loads((ROOT / "results/constrained_rlhf/results.json").read_text())
    results = {v: [read_metrics(p) for p in sorted((ROOT / "results/constrained_rlhf/metrics").glob(f"{v}_s*.jsonl"))]
               for v in c.VARIANTS}
    c.write_table(tmp_path / "t.md", res["summary"], res["info"], results)
    text = (tmp_path / "t.md").read_text()
    assert "| μ-PPO | multiplier g(μ) rm_answer | `constrained/multiplier/rm_answer`" in text
    activity = text.split("## Activity")[1]
    assert "| PPO-sum (unconstrained) | multiplier" not in activity   # the unconstrained run has no multipliers ...
    assert "| PPO-sum (unconstrained) | KL in the reward: β | `kl_reward/coef`" in activity   # ... but a KL in its reward
    assert "| μ-PPO | KL in the reward" not in activity              # μ's task is the KL itself (no algo.kl_reward)


def test_constrained_proxy_points_are_chosen_on_a_selection_set_not_the_scoring_set():
    from rlpost.studies.constrained_rlhf import SELECT_KEY, proxy_points, selection_rows
    from rlpost.tasks.arithmetic import make_split
    rows = selection_rows(64, [0, 1], 128)
    scored = {r["prompt"] for s in (0, 1) for r in make_split("test", 128, seed=s)}
    assert len(rows) == 64 and not {r["prompt"] for r in rows} & scored
    # step 2 is best on the scoring set, step 1 on the selection set: theta comes from step 1's batch means
    run = [{"step": 1, "reward/rm_answer/mean": 0.1, "reward/rm_length/mean": -1.0, "eval/accuracy": 0.2, SELECT_KEY: 0.5},
           {"step": 2, "reward/rm_answer/mean": 0.9, "reward/rm_length/mean": -2.0, "eval/accuracy": 0.6, SELECT_KEY: 0.1}]
    theta, best = proxy_points([run], top_k=1)
    assert theta == {"rm_answer": 0.1, "rm_length": -1.0} and best[0]["step"] == 1


def test_sft_budget_text_says_when_the_warm_start_was_time_boxed():
    from rlpost.studies.common import sft_budget_text
    sft = {"stages": [{"sft_steps": 7290, "planned_steps": 36300, "seconds": 1500.2},
                      {"sft_steps": 5428, "planned_steps": 36760, "seconds": 1500.1}]}
    assert sft_budget_text({"runs": {"s0": {"sft": sft}}}) == (
        "SFT time-boxed: stage 1 trained 7290 of 36300 planned steps in 1500 s, "
        "stage 2 trained 5428 of 36760 planned steps in 1500 s")
    full = {"sft_steps": 100, "planned_steps": 100, "seconds": 12.0}
    assert sft_budget_text({"runs": {"s0": {"sft": full}}}) == "SFT: stage 1 trained 100 of 100 planned steps in 12 s"


def test_best_after_dpo_is_claimed_only_without_overlapping_seeds():
    from rlpost.studies.implicit_sft import best_after_dpo

    def group(loss, values):
        return {"loss": loss, "lr_scale": 1.0, "after_dpo": {"mean": sum(values) / len(values), "values": values}}
    clear = [group("nll", [0.80, 0.82, 0.84]), group("f_kl", [0.70, 0.75, 0.79])]
    assert best_after_dpo(clear).startswith("Best after DPO: nll at lr ×1 (0.820")
    tied = [group("nll", [0.80, 0.82, 0.84]), group("f_kl", [0.70, 0.75, 0.81])]   # 0.81 reaches nll's lowest 0.80
    text = best_after_dpo(tied)
    assert text.startswith("Highest mean after DPO: nll at lr ×1 (0.820), not a clear best") and "f_kl at lr ×1" in text
