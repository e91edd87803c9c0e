"""Learned reward models: preference pairs, RM training (TRL RewardTrainer), batched scoring as reward
components, a tiny RL run scored by a reward model, and a remote reward model over HTTP."""
import json

import pytest

from rlpost.config import RewardConfig
from rlpost.reward_modeling import make_preference_pairs, pair_accuracy, train_reward_model
from rlpost.rewards import RewardManager
from rlpost.rewards.reward_model import RemoteRewardModel, RewardModelReward

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_preference_pairs_by_kind(char_tokenizer):
    correct = make_preference_pairs("arithmetic", "correct", n=20, tokenizer=char_tokenizer)
    assert all(p["chosen"] == p["answer"] != p["rejected"] for p in correct)
    assert correct[0]["prompt"].startswith("<|im_start|>user\n") and correct[0]["prompt"].endswith("assistant\n")
    length = make_preference_pairs("arithmetic", "length", n=20, tokenizer=char_tokenizer)
    assert all(len(p["chosen"]) > len(p["rejected"]) for p in length)
    digit = make_preference_pairs("arithmetic", "digit", n=20, tokenizer=char_tokenizer, digit="7")
    assert all(p["chosen"].count("7") > p["rejected"].count("7") for p in digit)
    last = make_preference_pairs("arithmetic", "last_digit", n=20, tokenizer=char_tokenizer)
    assert all(p["chosen"][:-1] == p["rejected"][:-1] and p["chosen"] != p["rejected"] for p in last)
    # deterministic from the seed
    assert make_preference_pairs("arithmetic", "correct", n=20, tokenizer=char_tokenizer) == correct
    with pytest.raises(ValueError, match="unknown preference kind"):
        make_preference_pairs("arithmetic", "nope", n=2)


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory, tiny_model_path, char_tokenizer, learning_seed):
    """An RM trained for a few steps on 16 correctness pairs from the shipped tiny model (module-scoped: ~10 s)."""
    pairs = make_preference_pairs("arithmetic", "correct", n=16, seed=1, tokenizer=char_tokenizer)
    out = tmp_path_factory.mktemp("rm") / "rm_correct"
    result = train_reward_model(str(tiny_model_path), pairs, out, max_steps=30, learning_rate=1e-3,
                                batch_size=8, logging_steps=5, center_rewards_coefficient=None, seed=learning_seed)
    return out, pairs, result


@pytest.mark.learning
def test_rm_training_separates_chosen_from_rejected(trained_rm, tiny_model_path, learning_seed, report_learning):
    """Against a no-update control: the same body with a fresh score head (same seed) ranks the 16 pairs at chance
    or below. Measured (scripts/learning_spread.py, seeds 0-2 x native/capped float path, 2026-12-03): control
    0.312-0.438, trained 0.812-0.938, trained - control >= 0.437. The bars (>= 0.7, >= control + 0.25) leave two to
    three pairs of margin."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    path, pairs, result = trained_rm
    torch.manual_seed(learning_seed)
    control = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    control.config.pad_token_id = tok.pad_token_id
    control_accuracy = pair_accuracy(control, tok, pairs)
    report_learning("rm_control_pair_accuracy", control_accuracy)
    report_learning("rm_trained_pair_accuracy", result["train_accuracy"])
    assert result["train_accuracy"] >= 0.7, result["train_accuracy"]
    assert result["train_accuracy"] >= control_accuracy + 0.25, (result["train_accuracy"], control_accuracy)
    losses = [h["loss"] for h in result["log_history"] if "loss" in h]
    assert losses[-1] < losses[0]
    meta = json.loads((path / "rlpost_rm.json").read_text())
    assert meta["num_pairs"] == 16 and (path / "config.json").exists()
    # reloaded with save_pretrained's output, through the registered reward
    rm = RewardModelReward(str(path), name="rm", batch_size=5)
    assert pair_accuracy(rm.model, rm.tokenizer, pairs) == result["train_accuracy"]
    chosen = rm([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    rejected = rm([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
    assert sum(chosen) / 16 > sum(rejected) / 16


def test_reward_models_as_separate_components_in_batches(trained_rm):
    path, pairs, _ = trained_rm
    prompts = [p["prompt"] for p in pairs[:7]]
    completions = [p["chosen"] for p in pairs[:7]]
    manager = RewardManager.from_config([
        RewardConfig("arithmetic", 1.0),
        RewardConfig("reward_model", 1.0, {"path": str(path), "name": "rm_a", "batch_size": 3, "device": "cpu"}),
        RewardConfig("reward_model", 0.5, {"path": str(path), "name": "rm_b", "batch_size": 32, "scale": 2.0}),
    ])
    totals, comps = manager.score(prompts, completions, {"answer": [p["answer"] for p in pairs[:7]]})
    assert list(comps) == ["arithmetic", "rm_a", "rm_b"]
    assert comps["rm_b"] == pytest.approx([2 * v for v in comps["rm_a"]], abs=1e-5)  # batching does not change scores
    assert totals == pytest.approx([a + r + 0.5 * b for a, r, b in zip(comps["arithmetic"], comps["rm_a"], comps["rm_b"])])
    with pytest.raises(ValueError, match="distinct kwargs.name"):
        RewardManager.from_config([RewardConfig("reward_model", 1.0, {"path": str(path)}),
                                   RewardConfig("reward_model", 1.0, {"path": str(path)})])
    with pytest.raises(ValueError, match="reward_model"):
        RewardManager.from_config([RewardConfig("reward_model", 1.0, {"path": str(path), "bogus": 1})])


@pytest.mark.slow
def test_reward_model_reward_in_tiny_rl_run(trained_rm, tmp_path):
    from rlpost.cli import main
    path, _, _ = trained_rm
    out = tmp_path / "rl"
    code = main(["train", "configs/tiny/arith_grpo.yaml", f"trainer.output_dir={out}", "trainer.max_steps=2",
                 "trainer.eval_steps=0", "trainer.progress_bar=false", "trainer.report_to=[]", "data.num_eval=8",
                 "rollout.prompts_per_step=4", "num_generations=2",
                 f'rewards=[{{name: arithmetic, weight: 0.0}}, {{name: reward_model, kwargs: {{path: "{path}", name: rm, batch_size: 4}}}}]'])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "reward/rm/mean" in rows[1] and "reward/arithmetic/mean" in rows[1]
    assert rows[1]["reward/mean"] == pytest.approx(rows[1]["reward/rm/mean"], abs=1e-5)  # arithmetic has weight 0


def test_remote_reward_model_over_http(trained_rm):
    import requests

    from rlpost.serving.rm_server import build_app, serve_in_thread
    path, pairs, _ = trained_rm
    local = RewardModelReward(str(path))
    server, url = serve_in_thread(build_app(str(path), token="s3cret"), host="127.0.0.1", port=0)
    try:
        assert requests.get(f"{url}/health", headers={"Authorization": "Bearer s3cret"}, timeout=10).json()["status"] == "ok"
        assert requests.post(f"{url}/score", json={"prompts": [], "completions": []}, timeout=10).status_code == 401
        remote = RemoteRewardModel(f"{url}/score", name="rm_remote", timeout_s=10, batch_size=3, token="s3cret")
        prompts, completions = [p["prompt"] for p in pairs[:5]], [p["rejected"] for p in pairs[:5]]
        assert remote(prompts, completions) == pytest.approx(local(prompts, completions), abs=1e-5)
        manager = RewardManager.from_config([RewardConfig("remote_reward_model", 1.0,
                                                          {"url": f"{url}/score", "name": "rm_remote", "token": "s3cret"})])
        assert list(manager.score(prompts, completions, {})[1]) == ["rm_remote"]
        bad = RemoteRewardModel(f"{url}/score", timeout_s=5, retries=0)  # no token: 401, surfaced as an error
        with pytest.raises(RuntimeError, match="401"):
            bad(prompts, completions)
    finally:
        server.should_exit = True
