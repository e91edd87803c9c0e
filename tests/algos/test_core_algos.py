"""Built-in advantages, clipped losses, aggregations and KL estimators against hand-computed numbers."""
import math

import pytest
import torch

from rlpost.algos import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES, AdvantageInput, LossInput
from rlpost.algos.advantages import GRPOAdvParams
from rlpost.algos.dynamic_sampling import informative_groups
from rlpost.algos.losses import ClipParams, GSPOParams


def adv_input(rewards, groups, T=2):
    rewards = torch.tensor(rewards, dtype=torch.float)
    return AdvantageInput(rewards=rewards, group_ids=torch.tensor(groups), response_mask=torch.ones(len(rewards), T))


def test_grpo_group_scaling_by_hand():
    # group 0: R = [1, 0, 0, 1] -> mean 0.5, unbiased std = sqrt((4 * 0.25) / 3) = 0.57735
    # A = +-0.5 / (0.57735 + 1e-4) = +-0.86588
    # group 1: R = [2, 2, 2, 2] -> std 0 -> A = 0
    adv, metrics = ADVANTAGES.get("grpo")(adv_input([1, 0, 0, 1, 2, 2, 2, 2], [0, 0, 0, 0, 1, 1, 1, 1]), GRPOAdvParams())
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert adv[:, 0].tolist() == pytest.approx([expected, -expected, -expected, expected, 0, 0, 0, 0], abs=1e-5)
    assert torch.equal(adv[:, 0], adv[:, 1])  # broadcast over tokens
    assert metrics["reward/frac_zero_std"] == pytest.approx(0.5)


def test_grpo_batch_and_none_scaling():
    # R = [1, 0 | 3, 1]; group means 0.5, 2 -> centred [0.5, -0.5, 1, -1]
    # batch std of [1,0,3,1]: mean 1.25, sum sq dev = 0.0625+1.5625+3.0625+0.0625 = 4.75, /3 -> std 1.25831
    inp = adv_input([1, 0, 3, 1], [0, 0, 1, 1])
    batch, _ = ADVANTAGES.get("grpo")(inp, GRPOAdvParams(scale_rewards="batch"))
    assert batch[:, 0].tolist() == pytest.approx([v / (1.258306 + 1e-4) for v in (0.5, -0.5, 1, -1)], abs=1e-5)
    none, _ = ADVANTAGES.get("grpo")(inp, GRPOAdvParams(scale_rewards="none"))
    assert none[:, 0].tolist() == pytest.approx([0.5, -0.5, 1, -1])
    dr, _ = ADVANTAGES.get("dr_grpo")(inp, None)
    assert torch.equal(dr, none)


def test_rloo_by_hand():
    # group [1, 0, 0]: A_0 = 1 - (0+0)/2 = 1, A_1 = 0 - (1+0)/2 = -0.5, A_2 = -0.5; single-element group -> 0
    adv, _ = ADVANTAGES.get("rloo")(adv_input([1, 0, 0, 5], [0, 0, 0, 1]), None)
    assert adv[:, 0].tolist() == pytest.approx([1.0, -0.5, -0.5, 0.0])


def test_reinforce_pp_baseline_by_hand():
    # rewards 1 0 | 1 1 (two groups), completion lengths 1 2 1 1 -> centred 0.5 -0.5 | 0 0
    # tokens 0.5, -0.5, -0.5, 0, 0: mean -0.1; centred 0.6 -0.4 -0.4 0.1 0.1; sum sq 0.70; unbiased var 0.70/4 = 0.175
    inp = adv_input([1, 0, 1, 1], [0, 0, 1, 1], T=2)
    inp.response_mask = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    adv, _ = ADVANTAGES.get("reinforce_pp_baseline")(inp, None)
    s = 0.175 ** 0.5
    assert adv.tolist() == [pytest.approx([0.6 / s, 0.0]), pytest.approx([-0.4 / s, -0.4 / s]),
                            pytest.approx([0.1 / s, 0.0]), pytest.approx([0.1 / s, 0.0])]
    # no group baseline: tokens 1, 0, 0, 1, 1: mean 0.6, centred .4 -.6 -.6 .4 .4, sum sq 1.2, var 0.3
    adv, _ = ADVANTAGES.get("reinforce_pp")(inp, None)
    s = 0.3 ** 0.5
    assert adv.tolist() == [pytest.approx([0.4 / s, 0.0]), pytest.approx([-0.6 / s, -0.6 / s]),
                            pytest.approx([0.4 / s, 0.0]), pytest.approx([0.4 / s, 0.0])]


def test_advantage_respects_mask():
    inp = adv_input([1, 0], [0, 0], T=3)
    inp.response_mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv, _ = ADVANTAGES.get("grpo")(inp, GRPOAdvParams())
    assert adv[0, 2] == 0 and adv[1, 1] == 0 and adv[0, 0] > 0


def loss_input(logp, old, adv, mask=None):
    logp = torch.tensor(logp)
    return LossInput(logprobs=logp, old_logprobs=torch.tensor(old), advantages=torch.tensor(adv),
                     response_mask=torch.ones_like(logp) if mask is None else torch.tensor(mask))


def test_clip_loss_by_hand():
    # ratios r = exp(logp - old) = [1.5, 0.5, 1.1, 0.7]; eps = 0.2
    # A=+1, r=1.5: max(-1.5, -clip(1.5)=-1.2) = -1.2 (clipped)
    # A=-1, r=0.5: max(0.5, 0.8) = 0.8 (clipped)
    # A=+1, r=1.1: max(-1.1, -1.1) = -1.1
    # A=-2, r=0.7: max(1.4, 1.6) = 1.6 (clipped)
    r = torch.tensor([[1.5, 0.5, 1.1, 0.7]])
    inp = loss_input(r.log().tolist(), [[0.0] * 4], [[1.0, -1.0, 1.0, -2.0]])
    loss, metrics = POLICY_LOSSES.get("grpo")(inp, ClipParams(epsilon=0.2))
    assert loss[0].tolist() == pytest.approx([-1.2, 0.8, -1.1, 1.6], abs=1e-6)
    assert metrics["policy/clipfrac"] == pytest.approx(0.75)


def test_clip_higher_and_dual_clip():
    # clip-higher eps_high = 0.28: A=+1, r=1.5 -> -1.28
    r = torch.tensor([[1.5, 5.0]])
    inp = loss_input(r.log().tolist(), [[0.0, 0.0]], [[1.0, -1.0]])
    loss, _ = POLICY_LOSSES.get("dapo")(inp, ClipParams(epsilon=0.2, epsilon_high=0.28))
    assert loss[0, 0].item() == pytest.approx(-1.28)
    # A=-1, r=5: plain clip gives max(5, 1.28) = 5; dual-clip c=3 caps it at min(5, 3) = 3
    assert loss[0, 1].item() == pytest.approx(5.0)
    loss_dual, _ = POLICY_LOSSES.get("dapo")(inp, ClipParams(epsilon=0.2, epsilon_high=0.28, dual_clip_c=3.0))
    assert loss_dual[0, 1].item() == pytest.approx(3.0)


def test_gspo_sequence_ratio():
    # token log-ratios [0.2, -0.1, 0.5(masked)] -> s = exp((0.2 - 0.1) / 2) = exp(0.05) = 1.05127
    # eps 3e-4/4e-4: A=+1 -> max(-1.05127, -(1+4e-4)) = -1.0004 on every token
    inp = loss_input([[0.2, -0.1, 0.5]], [[0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0]], mask=[[1.0, 1.0, 0.0]])
    inp.logprobs.requires_grad_(True)
    loss, metrics = POLICY_LOSSES.get("gspo")(inp, GSPOParams())
    assert loss[0, :2].tolist() == pytest.approx([-1.0004, -1.0004], abs=1e-6)
    assert metrics["policy/ratio_mean"] == pytest.approx(math.exp(0.05), abs=1e-5)
    # unclipped case: gradient of -A*s_it wrt l_it is -A*s (sequence ratio, stop-gradient form)
    inp2 = loss_input([[1e-4, 1e-4]], [[0.0, 0.0]], [[1.0, 1.0]])
    inp2.logprobs.requires_grad_(True)
    l2, _ = POLICY_LOSSES.get("gspo")(inp2, GSPOParams())
    l2.sum().backward()
    assert inp2.logprobs.grad[0].tolist() == pytest.approx([-math.exp(1e-4)] * 2, abs=1e-6)


def test_aggregations_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    # token-mean: (1+2+3+4)/4 = 2.5
    assert AGGREGATIONS.get("token-mean")(loss, mask, 8).item() == pytest.approx(2.5)
    # seq-mean-token-mean: (6/3 + 4/1)/2 = 3
    assert AGGREGATIONS.get("seq-mean-token-mean")(loss, mask, 8).item() == pytest.approx(3.0)
    # seq-mean-token-sum: (6 + 4)/2 = 5
    assert AGGREGATIONS.get("seq-mean-token-sum")(loss, mask, 8).item() == pytest.approx(5.0)
    # seq-mean-token-sum-norm (Dr.GRPO): 10 / (2 * 8) = 0.625
    assert AGGREGATIONS.get("seq-mean-token-sum-norm")(loss, mask, 8).item() == pytest.approx(0.625)
    # empty mask gives 0, not NaN
    assert AGGREGATIONS.get("token-mean")(loss, torch.zeros_like(mask), 8).item() == 0.0
    assert AGGREGATIONS.get("seq-mean-token-mean")(loss, torch.zeros_like(mask), 8).item() == 0.0


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-1.5])
    # d = ref - logp = -0.5; k1 = 0.5; k2 = 0.125; k3 = exp(-0.5) + 0.5 - 1 = 0.106531
    assert KL_ESTIMATORS.get("k1")(logp, ref).item() == pytest.approx(0.5)
    assert KL_ESTIMATORS.get("k2")(logp, ref).item() == pytest.approx(0.125)
    assert KL_ESTIMATORS.get("k3")(logp, ref).item() == pytest.approx(math.exp(-0.5) - 0.5, abs=1e-6)
    assert KL_ESTIMATORS.get("k3")(ref, ref).item() == 0.0


def test_dynamic_sampling_keeps_informative_groups():
    keep = informative_groups(torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0]), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert keep.tolist() == [True, True, False, False, False, False]


def test_registry_errors_name_the_closest():
    with pytest.raises(KeyError, match="did you mean 'grpo'"):
        ADVANTAGES.get("grp")
    with pytest.raises(ValueError, match="already registered"):
        ADVANTAGES.add("grpo", lambda *a: None)
    with ADVANTAGES.scoped():
        ADVANTAGES.add("tmp_test_adv", lambda *a: None)
        assert "tmp_test_adv" in ADVANTAGES
    assert "tmp_test_adv" not in ADVANTAGES


def test_entropy_from_logprobs_hand_computed():
    from rlpost.algos.core import entropy_from_logprobs
    # p = (1/2, 1/4, 1/4): H = 1/2 ln 2 + 2 * 1/4 ln 4 = 3/2 ln 2; uniform over 4: ln 4
    logp = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.25] * 4]).log()
    assert torch.allclose(entropy_from_logprobs(logp), torch.tensor([1.5 * math.log(2), math.log(4)]), atol=1e-6)
    # a logit masked to -inf adds 0 (not NaN); a one-hot distribution has entropy 0
    masked = torch.log_softmax(torch.tensor([[0.0, 0.0, -float("inf")], [5.0, -float("inf"), -float("inf")]]), -1)
    assert torch.allclose(entropy_from_logprobs(masked), torch.tensor([math.log(2), 0.0]))
    # two tokens, logits (a, 0): p = sigmoid(a), dH/da = -a p (1 - p); at a = ln 3, p = 3/4: -3/16 ln 3
    a = torch.tensor(math.log(3.0), requires_grad=True)
    entropy_from_logprobs(torch.log_softmax(torch.stack([a, torch.tensor(0.0)]), -1)).backward()
    assert a.grad.item() == pytest.approx(-3 / 16 * math.log(3), abs=1e-6)
