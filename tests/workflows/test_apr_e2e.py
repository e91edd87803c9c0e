"""APR through `rlpost train recipes/apr/tiny.yaml`: the real config and hf engine on a small random model,
and the solver as the engine (spawns, joins, shared tree rewards) through the whole RL step."""
import json

import pytest

from rlpost.cli import main

pytestmark = pytest.mark.slow
TINY = "recipes/apr/tiny.yaml"
FAST = ["trainer.max_steps=2", "rollout.prompts_per_step=2", "rollout.num_generations=2", "data.num_train=16",
        "data.num_eval=4", "trainer.progress_bar=false", "optim.micro_batch_size=8"]


@pytest.fixture(scope="module")
def apr_model(tmp_path_factory):
    """A random 1-layer LLaMA with the APR phrase tokenizer (what scripts/apr_pretrain.py saves, untrained)."""
    from rlpost.studies.common import save_model, scratch_model
    from rlpost.studies.phrase_tokenizer import apr_tokenizer
    model, tok = scratch_model(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=128,
                               tokenizer=apr_tokenizer())
    return save_model(model, tok, tmp_path_factory.mktemp("apr") / "model")


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tiny_config_runs_on_the_hf_engine(tmp_path, apr_model):
    out = tmp_path / "run"
    assert main(["train", TINY, f"model.name_or_path={apr_model}", f"trainer.output_dir={out}",
                 "rollout.max_completion_length=48", *FAST]) == 0
    r = rows(out)
    assert [x["step"] for x in r] == [0, 1, 2]
    for key in ("apr/calls", "apr/children", "apr/total_tokens", "apr/sequential_tokens", "apr/wall_time_s",
                "apr/error_rate", "reward/mean", "reward/apr_countdown/mean", "loss"):
        assert key in r[1], key
    assert "eval/apr/calls" in r[0] and "eval/accuracy" in r[-1]
    assert (out / "final_model" / "config.json").exists()


def test_solver_engine_trees_train_end_to_end(tmp_path, apr_model):
    from oracles import register
    register()
    out = tmp_path / "oracle"
    assert main(["train", TINY, f"model.name_or_path={apr_model}", f"trainer.output_dir={out}",
                 "rollout.engine=apr_oracle_test", "rollout.prompts_per_step=3", *FAST]) == 0
    r = rows(out)
    step = r[1]
    assert step["apr/children"] > 0 and step["apr/calls"] > 1 and step["apr/sequential_tokens"] < step["apr/total_tokens"]
    assert 0 < r[0]["eval/accuracy"] <= 1 and step["apr/error_rate"] == 0
    assert step["advantage/abs_mean"] >= 0 and step["grad_norm"] > 0 and step["loss"] == step["loss"]
