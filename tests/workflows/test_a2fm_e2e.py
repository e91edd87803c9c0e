"""A²FM through `rlpost train recipes/a2fm/tiny.yaml`: the real config and hf engine on a small random model,
and a scripted router that calls the real tools (sandboxed Python, calculator, search) through the RL step."""
import pytest

pytestmark = pytest.mark.slow
TINY = "recipes/a2fm/tiny.yaml"
MICRO_BATCH = "optim.micro_batch_size=16"


def test_tiny_config_runs_on_the_hf_engine(tmp_path, a2fm_model, train_fast):
    r = train_fast(TINY, a2fm_model, tmp_path / "run", "rollout.max_completion_length=16", MICRO_BATCH)
    assert [x["step"] for x in r] == [0, 1, 2]
    for key in ("a2fm/non_instant_rate", "a2fm/invalid_route_rate", "a2fm/format_ok", "a2fm/tool_calls",
                "reward/a2fm_exact_match/mean", "reward/apo/format/mean", "reward/apo/easiness/mean", "loss"):
        assert key in r[1], key
    assert "eval/a2fm/non_instant_rate" in r[0] and "eval/accuracy" in r[-1]


def test_scripted_router_with_real_tools_trains_end_to_end(tmp_path, a2fm_model, train_fast):
    from oracles import register
    register()
    r = train_fast(TINY, a2fm_model, tmp_path / "oracle", "rollout.engine=a2fm_oracle_test",
                   "data.task_kwargs.mix=[0,0,1,1]", MICRO_BATCH)
    step = r[1]
    # products and look-ups: the router picks the agentic mode, the tools answer, every format is right
    assert step["a2fm/non_instant_rate"] == 1.0 and step["a2fm/tool_calls"] > 0 and step["a2fm/format_ok"] == 1.0
    assert step["a2fm/acc/agentic"] == 1.0 and step["a2fm/acc/adaptive"] == 1.0
    # the scripted forced instant answers are right too (p = 1), so APO zeroes the adaptive agentic rewards
    assert step["reward/a2fm_exact_match/mean"] == 1.0 > step["reward/mean"] > 0
    assert r[0]["eval/accuracy"] == 1.0 and step["grad_norm"] > 0
