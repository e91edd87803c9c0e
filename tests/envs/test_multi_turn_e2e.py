"""multi_turn through `rlpost train` on the shipped tiny model and the hf engine: real multi-turn episodes,
the learner's log-probs of the trained tokens equal the sampler's (token-in/token-out across turns), whole
conversations in completions.jsonl."""
import json

import pytest

pytestmark = pytest.mark.slow
FAST = ["trainer.max_steps=2", "rollout.prompts_per_step=2", "rollout.num_generations=4", "data.num_train=16",
        "data.num_eval=4", "trainer.progress_bar=false", "trainer.save_steps=0"]


def train(config, out, *overrides):
    from rlpost.cli import main
    assert main(["train", config, f"trainer.output_dir={out}", *FAST, *overrides]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    completions = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    return rows, completions


def test_feedback_game_trains_on_exactly_the_sampled_tokens(tmp_path):
    rows, completions = train("configs/tiny/guess_number_feedback.yaml", tmp_path / "guess", "rollout.workflow.max_turns=3")
    step = rows[1]
    assert step["env/turns_per_episode"] > 1 and "env/ended_by/max_turns" in step
    # observations sit between the turns; a re-tokenised or shifted token would show here (sampler vs learner)
    assert step["rollout/logprob_diff"] < 1e-4
    conv = next(c["conversation"] for c in completions if len(c["conversation"]) > 3)
    assert conv[0]["role"] == "user" and conv[0]["content"].startswith("Guess my number (1-16).")
    assert [m["role"] for m in conv[1:5]] == ["assistant", "user", "assistant", "user"]
    assert conv[2]["content"] in ("Higher.", "Lower.", "Answer with a number.")
    assert "eval/env/turns_per_episode" in rows[0] and "eval/accuracy" in rows[-1]


def test_tool_config_runs(tmp_path):
    rows, completions = train("configs/tiny/arith_tool_calculator.yaml", tmp_path / "tool")
    assert {"env/tool_calls_per_episode", "env/tool_error_rate", "env/ended_by_limit", "env/tokens_per_turn",
            "reward/env_reward/mean"} <= set(rows[1])
    assert completions[0]["conversation"][:2] == [{"role": "system", "content": "Use the calculator."},
                                                   {"role": "user", "content": completions[0]["conversation"][1]["content"]}]


@pytest.mark.learning
def test_rl_makes_the_warm_started_model_use_the_calculator(tmp_path, learning_seed, report_learning):
    """The shipped tool config as is (40 steps, 128 held-out prompts): measured 0.000 -> 0.875 on the native and
    the capped float path (docs/environments.md, "Results"); 0.15 is the issue's bar, far below both."""
    from rlpost.cli import main
    out = tmp_path / "tool_rl"
    assert main(["train", "configs/tiny/arith_tool_calculator.yaml", f"trainer.output_dir={out}",
                 f"trainer.seed={learning_seed}", "trainer.progress_bar=false", "trainer.save_steps=0"]) == 0
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "eval/accuracy" in r]
    gain = evals[-1]["eval/accuracy"] - evals[0]["eval/accuracy"]
    report_learning("tool_calculator_gain", gain)
    assert gain >= 0.15 and evals[-1]["eval/env/tool_calls_per_episode"] > 0.5


def test_per_episode_schedule_with_per_turn_credit_on_hf(tmp_path):
    """schedule per_episode (episodes batched as they become ready, engine calls from a worker thread) and
    algo.advantage gigpo on the hf engine: the learner's log-probs of the trained tokens equal the sampler's."""
    rows, completions = train("configs/tiny/guess_number_feedback.yaml", tmp_path / "per_episode",
                              "rollout.workflow.max_turns=3", "rollout.workflow.schedule=per_episode",
                              "algo.advantage=gigpo")
    step = rows[1]
    assert step["env/turns_per_episode"] > 1 and step["rollout/logprob_diff"] < 1e-4
    assert step["turn_credit/turns_mean"] == step["env/turns_per_episode"]
    assert any(len(c["conversation"]) > 3 for c in completions)
