"""A²FM through `rlpost train recipes/a2fm/tiny.yaml`: the real config and hf engine on a small random model,
and a scripted router that calls the real tools (sandboxed Python, calculator, search) through the RL step."""
import json

import pytest

from rlpost.cli import main

pytestmark = pytest.mark.slow
TINY = "recipes/a2fm/tiny.yaml"
FAST = ["trainer.max_steps=2", "rollout.prompts_per_step=2", "rollout.num_generations=2", "data.num_train=16",
        "data.num_eval=4", "trainer.progress_bar=false", "optim.micro_batch_size=16"]


@pytest.fixture(scope="module")
def a2fm_model(tmp_path_factory):
    from rlpost.studies.common import save_model, scratch_model
    from rlpost.studies.phrase_tokenizer import a2fm_tokenizer
    model, tok = scratch_model(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=128,
                               tokenizer=a2fm_tokenizer())
    return save_model(model, tok, tmp_path_factory.mktemp("a2fm") / "model")


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tiny_config_runs_on_the_hf_engine(tmp_path, a2fm_model):
    out = tmp_path / "run"
    assert main(["train", TINY, f"model.name_or_path={a2fm_model}", f"trainer.output_dir={out}",
                 "rollout.max_completion_length=16", *FAST]) == 0
    r = rows(out)
    assert [x["step"] for x in r] == [0, 1, 2]
    for key in ("a2fm/non_instant_rate", "a2fm/invalid_route_rate", "a2fm/format_ok", "a2fm/tool_calls",
                "reward/a2fm_exact_match/mean", "reward/apo/format/mean", "reward/apo/easiness/mean", "loss"):
        assert key in r[1], key
    assert "eval/a2fm/non_instant_rate" in r[0] and "eval/accuracy" in r[-1]


def test_scripted_router_with_real_tools_trains_end_to_end(tmp_path, a2fm_model):
    from oracles import register
    register()
    out = tmp_path / "oracle"
    assert main(["train", TINY, f"model.name_or_path={a2fm_model}", f"trainer.output_dir={out}",
                 "rollout.engine=a2fm_oracle_test", "data.task_kwargs.mix=[0,0,1,1]", *FAST]) == 0
    r = rows(out)
    step = r[1]
    # products and look-ups: the router picks the agentic mode, the tools answer, every format is right
    assert step["a2fm/non_instant_rate"] == 1.0 and step["a2fm/tool_calls"] > 0 and step["a2fm/format_ok"] == 1.0
    assert step["a2fm/acc/agentic"] == 1.0 and step["a2fm/acc/adaptive"] == 1.0
    # the scripted forced instant answers are right too (p = 1), so APO zeroes the adaptive agentic rewards
    assert step["reward/a2fm_exact_match/mean"] == 1.0 > step["reward/mean"] > 0
    assert r[0]["eval/accuracy"] == 1.0 and step["grad_norm"] > 0
