"""`rlpost reproduce`: the summary math, and a micro end-to-end comparison (2 steps, 1 seed, arithmetic)."""
import json
import math

from rlpost.reproduce import Budget, Component, RunResult, activity, never_fired, rarely_fired, reproduce, steps_to, summarize


def test_steps_to_and_summary():
    assert steps_to([(0, 0.2), (5, 0.3), (10, 0.5)], 0.3) == 5
    assert steps_to([(0, 0.2), (5, 0.25)], 0.3) is None
    assert steps_to([(0, 0.4), (5, 0.35), (10, 0.45)], 0.3) == 5   # the start is above it: step 0 does not count
    runs = [RunResult("GRPO", "t", s, [(0, 0.2), (5, 0.4), (10, 0.6)]) for s in range(2)]
    runs += [RunResult("X", "t", 0, [(0, 0.2), (5, 0.5), (10, 0.5)]),
             RunResult("X", "t", 1, [(0, 0.2), (5, 0.3), (10, 0.3)])]
    s = summarize(runs)["t"]
    assert s["initial_accuracy"] == 0.2 and math.isclose(s["threshold"], 0.4)     # half of GRPO's gain
    assert s["methods"]["GRPO"]["steps_to_threshold"] == [5, 5]
    x = s["methods"]["X"]
    assert x["steps_to_threshold"] == [5, None] and x["reached"] == 1
    assert math.isclose(x["final_mean"], 0.4) and math.isclose(x["final_std"], math.sqrt(0.02))
    assert summarize(runs, threshold=0.55)["t"]["methods"]["X"]["reached"] == 0


def test_activity_by_hand():
    share = Component("C", "x/boost_frac")
    assert activity([0.0, 0.25, 0.5, 0.0], share) == {"fired": 2, "steps": 4, "mean": 0.1875, "min": 0.0, "max": 0.5}
    lr = Component("SNR LR", "oblr/lr_scale", "range", 1.0)
    assert activity([1.0, 1.0, 0.05], lr)["fired"] == 1
    mu = Component("mu", "gain_rl/mu", "range", None)       # a level: counts the steps on which it moved
    assert activity([0.0, 0.0, 5.5, 26.1], mu)["fired"] == 2 and activity([0.0, 0.0], mu)["fired"] == 0
    assert activity([], share)["steps"] == 0
    runs = [RunResult("M", "t", 0, trace={"x/boost_frac": [0.0, 0.0], "gain_rl/mu": [0.0, 3.0]}),
            RunResult("M", "u", 0, trace={"x/boost_frac": [0.0], "gain_rl/mu": [3.0]})]
    assert never_fired(runs, (share, mu), "M") == ["C"]
    # acted on 1 of 12 steps of task t (< 10 %): called out; 2 of 12 on task u (>= 10 %): not
    rare = [RunResult("M", "t", 0, trace={"x/boost_frac": [0.0] * 11 + [0.3]}),
            RunResult("M", "u", 0, trace={"x/boost_frac": [0.0] * 10 + [0.3, 0.2]})]
    assert rarely_fired(rare, (share,), "M") == ["C (`x/boost_frac`) on t: 1 of 12 steps"]


def test_micro_reproduction(tmp_path):
    budget = Budget(steps=2, eval_every=1, num_eval=8, prompts_per_step=4, num_generations=4)
    reproduce("adora", steps=2, seeds=[0], tasks=["arithmetic"], out_root=tmp_path / "results",
              runs_dir=tmp_path / "runs", budget=budget, methods=["GRPO", "ADORA"])
    table = (tmp_path / "results/adora/table.md").read_text()
    assert "| GRPO |" in table and "| ADORA |" in table and "## arithmetic" in table
    assert "ADORA's own signals" in table and "`adora/tas_frac`" in table
    # the activity section, and the line at the top saying whether every component acted
    assert "Activity (all seeds, all training steps)" in table and "| ADORA | group weighting |" in table
    assert "GRPO: none of these components" in table
    assert "Every component of ADORA acted" in table or "**Never fired in any ADORA run: group weighting.**" in table
    from rlpost.models.tiny import ensure_tiny
    from rlpost.provenance import checkpoint_digest, float_path
    digest = checkpoint_digest(ensure_tiny("tiny:qwen2:arithmetic"))
    assert f"float path: {float_path()}" in table and f"`tiny:qwen2:arithmetic` (sha256 {digest})" in table
    assert (tmp_path / "results/adora/curves.png").stat().st_size > 1000
    runs = json.loads((tmp_path / "results/adora/runs.json").read_text())["runs"]
    assert [r["curve"][-1][0] for r in runs] == [2, 2]
    assert all(r["cpu_s"] > 0 for r in runs) and 0.0 <= runs[1]["signals"]["adora/tas_frac"] <= 1.0
    assert len(runs[1]["trace"]["adora/weight_spread"]) == 2 and runs[0]["trace"]["adora/weight_spread"] == []
    # a second call reuses the finished runs (same config hash) instead of training again
    before = sorted(p.name for p in (tmp_path / "runs").iterdir())
    reproduce("adora", steps=2, seeds=[0], tasks=["arithmetic"], out_root=tmp_path / "results",
              runs_dir=tmp_path / "runs", budget=budget, methods=["GRPO", "ADORA"])
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == before


def test_cli_parses_reproduce():
    from rlpost.cli import build_parser
    args = build_parser().parse_args(["reproduce", "hapo", "--steps", "3", "--seeds", "2", "--tasks", "arithmetic"])
    assert args.recipe == "hapo" and args.steps == 3 and args.seeds == [0, 1] and args.tasks == "arithmetic"
    assert build_parser().parse_args(["reproduce", "gain_rl", "--seeds", "0,4"]).seeds == [0, 4]
