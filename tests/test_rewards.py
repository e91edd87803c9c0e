import pytest

from rlpost.config import RewardConfig
from rlpost.rewards import REWARDS, RewardError, RewardManager


def test_builtin_rewards():
    assert REWARDS.get("arithmetic")(None, ["46", " 46<x>", "47", ""], answer=["46"] * 4) == [1.0, 1.0, 0.0, 0.0]
    assert REWARDS.get("countdown")(None, ["(3+7)*5-9", "<answer>3*7+5+9</answer>", "3+7+5+9"],
                                    nums=[[3, 7, 5, 9]] * 3, target=[41, 35, 41]) == [1.0, 1.0, 0.0]
    assert REWARDS.get("format")(None, ["12", "12 apples"]) == [1.0, 0.0]
    assert REWARDS.get("math_verify")(None, ["the answer is $\\frac{1}{2}$", "42"], answer=["0.5", "41"]) == [1.0, 0.0]


def test_dapo_plus_minus_one_reward_through_the_config():
    """DAPO / HAPO score a wrong answer -1, not 0: ``kwargs: {incorrect_score: -1.0}``; the default stays 1 / 0."""
    manager = RewardManager.from_config([RewardConfig(name="math_verify", kwargs={"incorrect_score": -1.0})])
    totals, components = manager.score(["p", "p"], ["$\\frac{1}{2}$", "42"], {"answer": ["0.5", "41"]})
    assert totals == [1.0, -1.0] and components["math_verify"] == [1.0, -1.0]
    assert REWARDS.get("arithmetic")(None, ["46", "47"], answer=["46"] * 2, incorrect_score=-1.0) == [1.0, -1.0]
    assert REWARDS.get("countdown")(None, ["3+7", "3*7"], nums=[[3, 7]] * 2, target=[10, 10],
                                    incorrect_score=-1.0) == [1.0, -1.0]


def test_overlong_penalty_by_hand():
    # L_max = 10, buffer 4 -> expected 6: len 6 -> 0; len 8 -> (6-8)/4 = -0.5; len 10 -> -1.0; len 11 -> -1
    ids = [[0] * 6, [0] * 8, [0] * 10, [0] * 11]
    out = REWARDS.get("overlong_penalty")(None, [""] * 4, completion_ids=ids, max_completion_length=10, overlong_buffer=4)
    assert out == [0.0, -0.5, -1.0, -1.0]


def test_weighted_sum_and_components():
    manager = RewardManager.from_config([RewardConfig("arithmetic", 1.0), RewardConfig("format", 0.5)])
    totals, comps = manager.score(["p", "p"], ["46", "46 ok"], {"answer": ["46", "46"]})
    assert totals == [1.5, 1.0] and comps == {"arithmetic": [1.0, 1.0], "format": [1.0, 0.0]}


def flaky(prompts, completions, **kwargs):
    return [1.0 / (len(c) - 3) for c in completions]  # raises ZeroDivisionError for length-3 completions


def test_raising_reward_names_function_and_sample():
    manager = RewardManager.from_config([RewardConfig("test_rewards:flaky", 1.0)])
    with pytest.raises(RewardError, match=r"'test_rewards:flaky' raised ZeroDivisionError(.|\n)*failing sample 1: .*completion='abc'"):
        manager.score(["p0", "p1"], ["abcd", "abc"], {})


def test_bad_return_values_are_reported():
    manager = RewardManager([])
    from rlpost.rewards.manager import RewardSpec
    manager.specs = [RewardSpec("short", lambda p, c, **k: [1.0], 1.0, {})]
    with pytest.raises(RewardError, match="'short' returned 1 values for 2"):
        manager.score(["a", "b"], ["x", "y"], {})
    manager.specs = [RewardSpec("nan", lambda p, c, **k: [float("nan")] * len(c), 1.0, {})]
    with pytest.raises(RewardError, match="'nan' returned nan for sample 0"):
        manager.score(["a"], ["x"], {})
    with pytest.raises(KeyError, match="cannot import reward function"):
        RewardManager.from_config([RewardConfig("no_such_module:fn")])
