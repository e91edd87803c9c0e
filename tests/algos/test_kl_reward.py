"""KL in the reward (rlpost/algos/kl_reward.py) against numbers computed by hand from its equations."""
import math

import pytest
import torch

from rlpost.algos import ADVANTAGES, AdvantageInput, build_params
from rlpost.algos.advantages import GRPOAdvParams, returns_to_go
from rlpost.algos.constrained import ConstrainedAdvParams
from rlpost.algos.kl_reward import (AdaptiveKLController, FixedKLController, build_kl_controller, kl_penalty,
                                    last_token_onehot, sequence_kl, shape_rewards)
from rlpost.config import ConfigError, load_config

# Toy batch: two groups of two completions, T = 3. Reference log-probs are -1 everywhere and the old policy's are
# -1 + KL_t, so the k1 estimate log pi_old - log pi_ref is exactly the KL row below (9.0 sits on padding).
MASK = torch.tensor([[1., 1., 1.], [1., 1., 0.], [1., 0., 0.], [1., 1., 1.]])
KL = torch.tensor([[0.5, 0.25, 0.25], [0.125, 0.375, 9.0], [0.25, 9.0, 9.0], [0.0, 0.5, 0.125]])
REF = torch.full((4, 3), -1.0)
OLD = REF + KL
SCORES = torch.tensor([1.0, 0.0, 1.0, 1.0])
GROUPS = torch.tensor([0, 0, 1, 1])
BETA = 0.5
# By hand: Σ_t m_t KL_t = 1.0, 0.5, 0.25, 0.625; β Σ = 0.5, 0.25, 0.125, 0.3125
# R' = R − β Σ_t KL_t = 0.5, −0.25, 0.875, 0.6875
SHAPED = [0.5, -0.25, 0.875, 0.6875]


def _shaped():
    pen = kl_penalty(OLD, REF, MASK, BETA, "k1")
    return pen, shape_rewards(SCORES, pen, MASK)


def test_penalty_and_shaped_sequence_rewards():
    pen, (rewards, token_rewards, seq_pen) = _shaped()
    # p_t = β KL_t m_t: row 1 = [0.0625, 0.1875, 0] (the padded 9.0 is masked)
    assert pen[1].tolist() == pytest.approx([0.0625, 0.1875, 0.0])
    assert seq_pen.tolist() == pytest.approx([0.5, 0.25, 0.125, 0.3125])
    assert rewards.tolist() == pytest.approx(SHAPED)
    assert rewards.dtype == SCORES.dtype
    # r_t = −p_t + R 1[t = last]: row 0 [−0.25, −0.125, −0.125 + 1], row 1 last trained token is t = 1 (R = 0),
    # row 2 [−0.125 + 1, 0, 0], row 3 [0, −0.25, −0.0625 + 1]
    assert token_rewards.tolist() == [pytest.approx(r) for r in
                                      ([-0.25, -0.125, 0.875], [-0.0625, -0.1875, 0.0], [0.875, 0.0, 0.0],
                                       [0.0, -0.25, 0.9375])]
    assert token_rewards.sum(-1).tolist() == pytest.approx(SHAPED)


def test_last_token_onehot_and_empty_rows():
    mask = torch.tensor([[1., 1., 0.], [0., 0., 0.], [1., 0., 1.]])
    assert last_token_onehot(mask).tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 1]]


def test_sequence_kl_sums_a_multi_call_trajectory():
    # rows 0 and 1 are one trajectory (an APR tree): each gets 1.0 + 0.5 = 1.5; rows 2, 3 their own sums
    got = sequence_kl(KL * MASK, traj_index=torch.tensor([0, 0, 1, 2]))
    assert got.tolist() == pytest.approx([1.5, 1.5, 0.25, 0.625])


def test_estimators_k2_k3_in_the_penalty():
    # d = log ref − log old = −KL: k2 = KL²/2, k3 = e^{−KL} + KL − 1; row 0, t = 0 (KL 0.5), β = 1
    assert kl_penalty(OLD, REF, MASK, 1.0, "k2")[0, 0].item() == pytest.approx(0.125)
    assert kl_penalty(OLD, REF, MASK, 1.0, "k3")[0, 0].item() == pytest.approx(math.exp(-0.5) + 0.5 - 1.0)


def test_grpo_and_dr_grpo_advantages_of_the_shaped_rewards():
    _, (rewards, token_rewards, seq_pen) = _shaped()
    inp = AdvantageInput(rewards=rewards, group_ids=GROUPS, response_mask=MASK, token_rewards=token_rewards,
                         kl_penalty=seq_pen)
    # Dr.GRPO: A = R' − mean_g R'. Group 0: mean (0.5 − 0.25)/2 = 0.125 -> ±0.375. Group 1: mean 0.78125 ->
    # ±0.09375 (equal scores: without the KL both would be 0)
    adv, _ = ADVANTAGES.get("dr_grpo")(inp, None)
    assert adv[:, 0].tolist() == pytest.approx([0.375, -0.375, 0.09375, -0.09375])
    assert (adv * (1 - MASK)).abs().sum() == 0
    # GRPO: a group of two has unbiased std |d|/√2, so A = ±(|d|/2) / (|d|/√2 + 1e-4)
    adv, _ = ADVANTAGES.get("grpo")(inp, GRPOAdvParams())
    d0, d1 = 0.75, 0.1875
    a0, a1 = (d0 / 2) / (d0 / math.sqrt(2) + 1e-4), (d1 / 2) / (d1 / math.sqrt(2) + 1e-4)
    assert adv[:, 0].tolist() == pytest.approx([a0, -a0, a1, -a1], rel=1e-5)


def test_reinforce_pp_uses_per_token_returns_to_go():
    _, (rewards, token_rewards, _) = _shaped()
    # G_t = Σ_{s>=t} r_s: row 0 [0.5, 0.75, 0.875], row 1 [−0.25, −0.1875, 0], row 2 [0.875, 0, 0],
    # row 3 [0.6875, 0.6875, 0.9375]
    G = returns_to_go(token_rewards, MASK)
    assert G.tolist() == [pytest.approx(r) for r in
                          ([0.5, 0.75, 0.875], [-0.25, -0.1875, 0.0], [0.875, 0.0, 0.0], [0.6875, 0.6875, 0.9375])]
    tokens = [0.5, 0.75, 0.875, -0.25, -0.1875, 0.875, 0.6875, 0.6875, 0.9375]   # the 9 trained tokens
    mu = sum(tokens) / 9
    var = sum((x - mu) ** 2 for x in tokens) / 8
    inp = AdvantageInput(rewards=rewards, group_ids=GROUPS, response_mask=MASK, token_rewards=token_rewards)
    adv, _ = ADVANTAGES.get("reinforce_pp")(inp, None)
    assert adv[0].tolist() == pytest.approx([(x - mu) / math.sqrt(var + 1e-8) for x in tokens[:3]], rel=1e-5)
    assert adv[1, 2].item() == 0.0 and adv[1, 1].item() == pytest.approx((-0.1875 - mu) / math.sqrt(var + 1e-8), rel=1e-5)


def test_constrained_sum_subtracts_the_penalty_from_the_task():
    # mode sum, weights 1, no scaling: R_task = a + b − β Σ KL; one group of two.
    # rows: a = [1, 0], b = [0, 0], β Σ KL = [0.5, 0.25] -> R_task = [0.5, −0.25], mean 0.125 -> A = ±0.375
    params = build_params(ConstrainedAdvParams, overrides={"mode": "sum", "weights": {"a": 1.0, "b": 1.0},
                                                          "scale_rewards": "none"})
    inp = AdvantageInput(rewards=torch.zeros(2), group_ids=torch.tensor([0, 0]), response_mask=torch.ones(2, 1),
                         reward_components={"a": torch.tensor([1.0, 0.0]), "b": torch.zeros(2)},
                         kl_penalty=torch.tensor([0.5, 0.25], dtype=torch.float64))
    adv, metrics = ADVANTAGES.get("constrained")(inp, params)
    assert adv[:, 0].tolist() == pytest.approx([0.375, -0.375])
    assert metrics["constrained/task_reward"] == pytest.approx(0.125)


def test_adaptive_controller_three_steps_by_hand():
    # β0 = 0.1, target 1.0, horizon 100, n = 10 samples per step: gain n / horizon = 0.1
    c = AdaptiveKLController(coef=0.1, target=1.0, horizon=100.0)
    # step 1: KL 1.5 -> e = clip(0.5) = 0.2 -> β = 0.1 · (1 + 0.2 · 0.1) = 0.102
    assert c.update(1.5, 10) == pytest.approx(0.102)
    # step 2: KL 0.9 -> e = −0.1 -> β = 0.102 · (1 − 0.01) = 0.10098
    assert c.update(0.9, 10) == pytest.approx(0.10098)
    # step 3: KL 0 -> e = clip(−1) = −0.2 -> β = 0.10098 · (1 − 0.02) = 0.0989604
    assert c.update(0.0, 10) == pytest.approx(0.0989604)
    fixed = FixedKLController(0.3)
    assert [fixed.update(kl, 10) for kl in (5.0, 0.0)] == [0.3, 0.3]


def test_controller_state_round_trip():
    c = build_kl_controller("adaptive", 0.2, 0.5, 640.0)
    for kl in (0.7, 0.1, 0.55):
        c.update(kl, 64)
    restored = build_kl_controller("adaptive", 0.2, 0.5, 640.0)
    restored.load_state_dict(c.state_dict())
    assert restored.coef == c.coef and restored.coef != 0.2
    assert restored.update(0.9, 64) == c.update(0.9, 64)


@pytest.mark.parametrize("override, key", [
    (["algo.kl_reward.coef=-1"], "algo.kl_reward.coef"),
    (["algo.kl_reward.coef=0.1", "algo.kl_reward.controller=pid"], "algo.kl_reward.controller"),
    (["algo.kl_reward.coef=0.1", "algo.kl_reward.controller=adaptive"], "algo.kl_reward.target"),
    (["algo.kl_reward.coef=0.1", "algo.kl_reward.target=0.5"], "algo.kl_reward.target"),
    (["algo.kl_reward.coef=0.1", "algo.kl_reward.estimator=k4"], "algo.kl_reward.estimator"),
    (["algo.kl_reward.coef=0.1", "algo.kl_reward.controller=adaptive", "algo.kl_reward.target=1",
      "algo.kl_reward.horizon=0"], "algo.kl_reward.horizon"),
    (["algo.kl_reward.cof=0.1"], "algo.kl_reward.cof"),
])
def test_bad_kl_reward_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("configs/tiny/arith_grpo.yaml", override)


def test_kl_reward_and_kl_loss_together_are_allowed():
    cfg = load_config("configs/tiny/arith_grpo.yaml", ["algo.kl_reward.coef=0.05", "algo.beta=0.01",
                                                       "algo.sync_ref_model=true"])
    assert cfg.algo.kl_reward.coef == 0.05 and cfg.algo.beta == 0.01
    cfg = load_config("configs/tiny/arith_grpo.yaml", ["algo.kl_reward.coef=0.05", "algo.sync_ref_model=true"])
    assert cfg.algo.kl_reward.controller == "fixed"
