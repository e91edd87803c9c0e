"""APR through `rlpost train recipes/apr/tiny.yaml`: the real config and hf engine on a small random model,
and the solver as the engine (spawns, joins, shared tree rewards) through the whole RL step."""
import pytest

pytestmark = pytest.mark.slow
TINY = "recipes/apr/tiny.yaml"
MICRO_BATCH = "optim.micro_batch_size=8"


def test_tiny_config_runs_on_the_hf_engine(tmp_path, apr_model, train_fast):
    out = tmp_path / "run"
    r = train_fast(TINY, apr_model, out, "rollout.max_completion_length=48", MICRO_BATCH)
    assert [x["step"] for x in r] == [0, 1, 2]
    for key in ("apr/calls", "apr/children", "apr/total_tokens", "apr/sequential_tokens", "apr/wall_time_s",
                "apr/error_rate", "reward/mean", "reward/apr_countdown/mean", "loss"):
        assert key in r[1], key
    assert "eval/apr/calls" in r[0] and "eval/accuracy" in r[-1]
    assert (out / "final_model" / "config.json").exists()


def test_solver_engine_trees_train_end_to_end(tmp_path, apr_model, train_fast):
    from oracles import register
    register()
    r = train_fast(TINY, apr_model, tmp_path / "oracle", "rollout.engine=apr_oracle_test",
                   "rollout.prompts_per_step=3", MICRO_BATCH)
    step = r[1]
    assert step["apr/children"] > 0 and step["apr/calls"] > 1 and step["apr/sequential_tokens"] < step["apr/total_tokens"]
    assert 0 < r[0]["eval/accuracy"] <= 1 and step["apr/error_rate"] == 0
    assert step["advantage/abs_mean"] >= 0 and step["grad_norm"] > 0 and step["loss"] == step["loss"]
