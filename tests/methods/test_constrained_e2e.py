"""The constrained-RLHF method hook (rlpost/methods/constrained.py) in real tiny RL runs.

Components are two rule-based rewards (arithmetic correctness and the bare-integer format) so the runs need
no reward model; the hook only sees names in ``Trajectory.reward_components``.
"""
import json

import pytest
import torch

from rlpost.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
TINY = "configs/tiny/arith_grpo.yaml"
COMMON = ["trainer.progress_bar=false", "trainer.report_to=[]", "data.num_eval=4", "trainer.eval_steps=0",
          "rollout.prompts_per_step=4", "num_generations=2", "rollout.max_completion_length=4",
          "optim.steps_per_generation=2", "optim.micro_batch_size=4",
          "rewards=[{name: arithmetic}, {name: format}]", "method={constrained: {}}"]


def run(out, *overrides):
    code = main(["train", TINY, f"trainer.output_dir={out}", *COMMON, *overrides])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] if code == 0 else []
    return code, rows


def advantage(mode, **extra):
    node = {"name": "constrained", "mode": mode, "thresholds": {"arithmetic": 0.6, "format": 0.9}, **extra}
    return "algo.advantage=" + json.dumps(node)


@pytest.mark.parametrize("mode,low,high", [("xi", -1.0, 1.0), ("mu", 0.0, 1.0)])
def test_multipliers_logged_within_bounds(tmp_path, tiny_model_path, mode, low, high):
    code, rows = run(tmp_path / mode, "trainer.max_steps=3", advantage(mode))
    assert code == 0
    steps = rows[1:]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:
        for name in ("arithmetic", "format"):
            assert low < r[f"constrained/multiplier/{name}"] < high
            assert r[f"constrained/violation/{name}"] >= 0
            assert f"constrained/reward/{name}" in r and f"reward/{name}/mean" in r
            assert r[f"constrained/threshold/{name}"] == pytest.approx({"arithmetic": 0.6, "format": 0.9}[name])
        assert r["constrained/task_reward"] <= 1e-6   # task = -alpha_KL * KL to the initial policy
        assert "constrained/multiplier_loss" in r
        assert r["constrained/multiplier_steps"] == 2.0        # steps_per_generation 2 x num_iterations 1
    # correctness (0/1) is far below 0.6 on a 22%-accurate model, so its multiplier rises every step
    mult = [r["constrained/multiplier/arithmetic"] for r in steps]
    assert mult[0] < mult[1] < mult[2]


def test_nm_search_checkpoint_resume(tmp_path, tiny_model_path):
    search = {"init_values": {"arithmetic": 0.2, "format": 0.8}, "max_values": {"arithmetic": 0.6, "format": 1.0},
              "eval_every": 1, "cap_iters": 1, "tol": 0.0}   # tol 0: never stops on a flat simplex
    adv = advantage("xi", proxy_search=search)
    code, full = run(tmp_path / "full", "trainer.max_steps=4", "trainer.save_steps=2", adv)
    assert code == 0
    for r in full[1:]:   # cap_iters=1: a proposal is scored every step (cached re-visits may add more)
        assert r["proxy_search/num_evals"] >= r["step"]
        assert "proxy_search/eval_score" in r and "proxy_search/threshold/arithmetic" in r
    # proposals move the constraint thresholds the advantage uses
    assert len({round(r["constrained/threshold/arithmetic"], 9) for r in full[1:]}) > 1
    state = torch.load(tmp_path / "full" / "checkpoints" / "step-2" / "state.pt", weights_only=False)
    assert state["methods"]["constrained"]["search"]["nm"]["num_evals"] == full[2]["proxy_search/num_evals"]
    # interrupted at step 3 (last checkpoint: step 2), then resumed: identical multiplier trajectory
    assert run(tmp_path / "part", "trainer.max_steps=3", "trainer.save_steps=2", adv)[0] == 0
    code, resumed = run(tmp_path / "part", "trainer.max_steps=4", "trainer.save_steps=2", adv,
                        "trainer.resume_from_checkpoint=latest")
    assert code == 0
    for a, b in zip(full, resumed):
        for key in ("constrained/multiplier/arithmetic", "constrained/threshold/format", "proxy_search/num_evals"):
            assert a.get(key) == pytest.approx(b.get(key), abs=1e-9) if a.get(key) is not None else b.get(key) is None


def test_constrained_method_config_errors(tmp_path, tiny_model_path, capsys):
    assert run(tmp_path / "a", "trainer.max_steps=1")[0] == 2          # advantage is grpo
    assert "method.constrained needs algo.advantage" in capsys.readouterr().err
    node = {"name": "constrained", "mode": "xi", "thresholds": {"arithmetic": 0.6, "rm_missing": 0.1}}
    assert run(tmp_path / "b", "trainer.max_steps=1", "algo.advantage=" + json.dumps(node))[0] == 2
    assert "no reward reports" in capsys.readouterr().err


def test_nm_ppo_must_not_maximise_the_constrained_reward_models(tmp_path, tiny_model_path, capsys):
    search = {"init_values": {"arithmetic": 0.2, "format": 0.8}, "max_values": {"arithmetic": 0.6, "format": 1.0}}
    code, _ = run(tmp_path / "rm", "trainer.max_steps=1", advantage("xi", proxy_search=search),
                  "method.constrained.eval_metric=eval/reward_mean")
    assert code == 2 and "NM-PPO would maximise the reward models it constrains" in capsys.readouterr().err


def test_multiplier_steps_per_update_follow_the_policy_steps(tmp_path, tiny_model_path):
    """optim.steps_per_generation x algo.num_iterations policy steps per update, one multiplier step after each:
    2 x 3 = 6 here; the full recipes set the paper's 20 x 5 = 100."""
    code, rows = run(tmp_path / "six", "trainer.max_steps=1", "algo.num_iterations=3", advantage("xi"))
    assert code == 0 and rows[-1]["constrained/multiplier_steps"] == 6.0
    code, rows = run(tmp_path / "one", "trainer.max_steps=1", advantage("xi", multiplier_update="rollout"))
    assert code == 0 and rows[-1]["constrained/multiplier_steps"] == 1.0
    from rlpost.config import load_config
    for name in ("full_xi", "full_ppo", "full_nm_ppo"):
        cfg = load_config(f"recipes/constrained_rlhf/{name}.yaml")
        assert cfg.optim.steps_per_generation * cfg.algo.num_iterations == 100, name


def test_recipe_configs_load():
    import glob

    from rlpost.algos import build_params
    from rlpost.algos.constrained import ConstrainedAdvParams
    from rlpost.config import component, load_config
    paths = sorted(glob.glob("recipes/constrained_rlhf/*.yaml"))
    assert len(paths) == 5
    for path in paths:
        cfg = load_config(path)
        name, node = component(cfg.algo.advantage)
        params = build_params(ConstrainedAdvParams, None, node, where=path)
        # the name each reward reports: kwargs.name (reward models, intent_match) or the registered name (meteor)
        names = [r.kwargs.get("name") or r.name for r in cfg.rewards]
        assert set(params.components) <= set(names), path
        assert "constrained" in cfg.method


def test_kl_in_the_reward_enters_the_task_reward(tmp_path, tiny_model_path):
    """PPO-sum with algo.kl_reward (fixed β = 0.5): the task reward the advantage normalises is the weighted sum of
    the components minus β Σ_t KL_t, so its batch mean is  mean(arithmetic) + mean(format) − 0.5 · kl_reward/kl_mean."""
    node = {"name": "constrained", "mode": "sum", "weights": {"arithmetic": 1.0, "format": 1.0}}
    code, rows = run(tmp_path / "kl", "trainer.max_steps=2", "optim.learning_rate=1e-3", "algo.kl_reward.coef=0.5",
                     "algo.advantage=" + json.dumps(node))
    assert code == 0
    assert rows[2]["kl_reward/kl_mean"] > 0 and rows[2]["kl_reward/coef"] == 0.5
    for r in rows[1:]:
        expected = r["reward/arithmetic/mean"] + r["reward/format/mean"] - 0.5 * r["kl_reward/kl_mean"]
        assert r["constrained/task_reward"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
