"""SFT losses (rlpost/algos/sft_losses.py) against hand-computed numbers: vocab 3, 2 tokens."""
import math

import pytest
import torch

from rlpost.algos import build_params
from rlpost.algos.sft_losses import (
    SFT_LOSSES, FDivParams, LRReductionParams, NLLParams, implicit_reward, kl_to_initial, lr_sweep,
    sft_learning_rate,
)

LN2, LN3 = math.log(2), math.log(3)


def _logits():
    # token 1: logits (0, 0, 0)      -> p = (1/3, 1/3, 1/3), label 1 -> log p = −ln 3
    # token 2: logits (ln 2, 0, 0)   -> p = (1/2, 1/4, 1/4), label 0 -> log p = −ln 2
    return torch.tensor([[[0.0, 0.0, 0.0], [LN2, 0.0, 0.0]]], requires_grad=True), torch.tensor([[1, 0]])


def _logp():
    # label log-probs of _logits() and a reference with log p_ref = (−ln 3, −ln 4): log-ratio (0, ln 2)
    logp = torch.tensor([[-LN3, -LN2]], requires_grad=True)
    ref = torch.tensor([[-LN3, -math.log(4)]])
    return logp, ref, torch.ones(1, 2)


def test_registry_names_and_params():
    assert SFT_LOSSES.names() == ["f_hellinger", "f_js", "f_kl", "f_pearson", "f_tv", "nll"]
    assert SFT_LOSSES.entry("nll").params is NLLParams
    assert all(SFT_LOSSES.entry(n).params is FDivParams for n in SFT_LOSSES if n != "nll")
    with pytest.raises(ValueError, match="sft.reduction"):
        NLLParams(reduction="token-mena")


def test_nll_from_logits_value_and_gradient():
    # L = (ln 3 + ln 2)/2 = ln 6 / 2 = 0.8958797
    # dL/dlogits = (softmax − onehot)/2: token 1 (1/6, −1/3, 1/6), token 2 (−1/4, 1/8, 1/8)
    logits, labels = _logits()
    loss, metrics = SFT_LOSSES.get("nll")(logits, labels, torch.ones(1, 2), NLLParams())
    assert loss.item() == pytest.approx(math.log(6) / 2)
    loss.backward()
    expected = torch.tensor([[[1 / 6, -1 / 3, 1 / 6], [-1 / 4, 1 / 8, 1 / 8]]])
    assert torch.allclose(logits.grad, expected, atol=1e-6)
    assert metrics["sft/nll"] == pytest.approx(math.log(6) / 2) and metrics["sft/tokens"] == 2


def test_nll_mask_and_reductions():
    # row 2: logits (0, ln 3, 0) -> p = (1/5, 3/5, 1/5), label 1 -> −log p = ln(5/3); its second token is padding
    # token-mean: (ln 3 + ln 2 + ln 5/3)/3 = ln 10 / 3;  seq-mean-token-mean: (ln 6 / 2 + ln 5/3)/2
    logits = torch.tensor([[[0.0, 0.0, 0.0], [LN2, 0.0, 0.0]], [[0.0, LN3, 0.0], [5.0, -5.0, 0.0]]])
    labels = torch.tensor([[1, 0], [1, -100]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, _ = SFT_LOSSES.get("nll")(logits, labels, mask, NLLParams())
    assert loss.item() == pytest.approx(math.log(10) / 3, rel=1e-6)
    loss, _ = SFT_LOSSES.get("nll")(logits, labels, mask, NLLParams(reduction="seq-mean-token-mean"))
    assert loss.item() == pytest.approx((math.log(6) / 2 + math.log(5 / 3)) / 2, rel=1e-6)


def test_nll_logs_implicit_reward_with_a_reference():
    # r = β Σ_t (log π − log π_ref) = 1 · (0 + ln 2)
    logp, ref, mask = _logp()
    _, metrics = SFT_LOSSES.get("nll")(logp, None, mask, NLLParams(), ref_logprobs=ref)
    assert metrics["sft/implicit_reward"] == pytest.approx(LN2, rel=1e-6)


# u = β (0 + ln 2) = ln 2 = 0.6931472 with β = 1; loss = −φ(u); dL/dlogp_t = −φ'(u) β on each token
FDIV_CASES = {
    # Pearson χ²: φ = u − u²/4 = 0.5730339, φ' = 1 − u/2 = 0.6534264
    "f_pearson": (LN2 - LN2 ** 2 / 4, 1 - LN2 / 2),
    # squared Hellinger: φ = u/(1+u) = 0.4093818, φ' = 1/(1+u)² = 0.3488281
    "f_hellinger": (LN2 / (1 + LN2), 1 / (1 + LN2) ** 2),
    # Jensen–Shannon: φ = log(2 − e^{−u}) = log 1.5 = 0.4054651, φ' = e^{−u}/(2 − e^{−u}) = 0.5/1.5
    "f_js": (math.log(1.5), 1 / 3),
    # forward KL: φ = −e^{−u−1} = −0.5/e = −0.1839397, φ' = +0.1839397
    "f_kl": (-0.5 / math.e, 0.5 / math.e),
    # total variation: u = 0.693 > 1/2 is clipped -> φ = 0.5, no gradient
    "f_tv": (0.5, 0.0),
}


@pytest.mark.parametrize("name", sorted(FDIV_CASES))
def test_f_divergence_sequence_level(name):
    phi, dphi = FDIV_CASES[name]
    logp, ref, mask = _logp()
    loss, metrics = SFT_LOSSES.get(name)(logp, None, mask, FDivParams(beta=1.0), ref_logprobs=ref)
    assert loss.item() == pytest.approx(-phi, rel=1e-6)
    loss.backward()
    assert torch.allclose(logp.grad, torch.full((1, 2), -dphi), atol=1e-6)
    assert metrics["sft/u_mean"] == pytest.approx(LN2, rel=1e-6)
    assert metrics["sft/phi_weight_mean"] == pytest.approx(dphi, abs=1e-6)
    assert metrics["sft/frac_clamped"] == (1.0 if name == "f_tv" else 0.0)


def test_f_pearson_beta_token_level_and_length_norm():
    logp, ref, mask = _logp()
    # β = 0.5: u = ln2/2 = 0.3465736, φ = u − u²/4 = 0.3165453, dL/dlogp = −(1 − u/2)·0.5 = −0.4133566
    loss, _ = SFT_LOSSES.get("f_pearson")(logp, None, mask, FDivParams(beta=0.5), ref_logprobs=ref)
    assert loss.item() == pytest.approx(-(LN2 / 2 - (LN2 / 2) ** 2 / 4), rel=1e-6)
    loss.backward()
    assert torch.allclose(logp.grad, torch.full((1, 2), -(1 - LN2 / 4) * 0.5), atol=1e-6)
    # length_norm with β = 1: u = ln2 / 2 as well
    loss, _ = SFT_LOSSES.get("f_pearson")(logp, None, mask, FDivParams(beta=1.0, length_norm=True), ref_logprobs=ref)
    assert loss.item() == pytest.approx(-(LN2 / 2 - (LN2 / 2) ** 2 / 4), rel=1e-6)
    # token level, β = 1: u_t = (0, ln 2), φ = (0, 0.5730339), loss = −(0 + 0.5730339)/2 = −0.2865170
    loss, _ = SFT_LOSSES.get("f_pearson")(logp, None, mask, FDivParams(beta=1.0, level="token"), ref_logprobs=ref)
    assert loss.item() == pytest.approx(-(LN2 - LN2 ** 2 / 4) / 2, rel=1e-6)


def test_f_divergence_from_logits_matches_logprobs_and_skips_empty_rows():
    logits, labels = _logits()
    _, ref, mask = _logp()
    loss, _ = SFT_LOSSES.get("f_js")(logits, labels, mask, FDivParams(beta=1.0), ref_logprobs=ref)
    assert loss.item() == pytest.approx(-math.log(1.5), rel=1e-6)
    # a second row with no trained tokens (and -inf padding) changes nothing
    logp = torch.tensor([[-LN3, -LN2], [float("-inf"), float("-inf")]])
    ref2 = torch.cat([ref, torch.zeros(1, 2)])
    mask2 = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    loss, _ = SFT_LOSSES.get("f_js")(logp, None, mask2, FDivParams(beta=1.0), ref_logprobs=ref2)
    assert loss.item() == pytest.approx(-math.log(1.5), rel=1e-6)


def test_f_hellinger_clamps_outside_its_domain():
    # ref log-probs 0: u = −ln 6 = −1.79 < −1 -> clamped to −1 + 1e-3: φ = −0.999/0.001 = −999, no gradient
    logp, _, mask = _logp()
    fn = SFT_LOSSES.get("f_hellinger")
    loss, metrics = fn(logp, None, mask, FDivParams(beta=1.0), ref_logprobs=torch.zeros(1, 2))
    assert loss.item() == pytest.approx(999.0, rel=1e-4)   # float32: 1 + u = 0.001000002
    loss.backward()
    assert torch.all(logp.grad == 0) and metrics["sft/frac_clamped"] == 1.0


def test_f_divergence_needs_a_reference():
    logp, _, mask = _logp()
    with pytest.raises(ValueError, match="ref_logprobs"):
        SFT_LOSSES.get("f_pearson")(logp, None, mask, FDivParams())
    with pytest.raises(ValueError, match="level"):
        build_params(FDivParams, overrides={"level": "seq"}, where="sft")


def test_implicit_reward_token_and_sequence():
    # β = 0.1: per token 0.1·(0, ln 2); sequence 0.1·ln 2 = 0.0693147
    logp, ref, mask = _logp()
    assert torch.allclose(implicit_reward(logp, ref, mask, 0.1, "token"), torch.tensor([[0.0, 0.1 * LN2]]))
    assert implicit_reward(logp, ref, mask, 0.1).item() == pytest.approx(0.1 * LN2, rel=1e-6)


def test_kl_to_initial():
    # exact, from logits vs uniform reference logits:
    # token 1: 0;  token 2: ½ ln(½/⅓) + 2·¼ ln(¼/⅓) = ½ ln(9/8) = 0.0588915;  token mean 0.0294457
    logits, _ = _logits()
    kl, per_token = kl_to_initial(logits, torch.zeros(1, 2, 3), torch.ones(1, 2))
    assert kl.item() == pytest.approx(0.5 * math.log(9 / 8) / 2, rel=1e-5)
    assert per_token[0, 0].item() == pytest.approx(0.0, abs=1e-7)
    # label log-probs: k1 = mean(0, ln 2) = 0.3465736; k3 with d = ref − logp = (0, −ln 2): e^{−ln2} + ln2 − 1 = 0.1931472
    logp, ref, mask = _logp()
    assert kl_to_initial(logp, ref, mask, "k1")[0].item() == pytest.approx(LN2 / 2, rel=1e-6)
    assert kl_to_initial(logp, ref, mask, "k3")[0].item() == pytest.approx((0.5 + LN2 - 1) / 2, rel=1e-6)


def test_reduced_learning_rate_schedule():
    # peak 2e-5 · 0.25 = 5e-6; warmup ceil(0.1·100) = 10 steps
    p = LRReductionParams(base_lr=2e-5, lr_scale=0.25)
    assert sft_learning_rate(5, 100, p) == pytest.approx(2.5e-6)     # 5e-6 · 5/10
    assert sft_learning_rate(10, 100, p) == pytest.approx(5e-6)
    assert sft_learning_rate(55, 100, p) == pytest.approx(2.5e-6)    # cosine at progress 45/90 = ½
    assert sft_learning_rate(100, 100, p) == pytest.approx(0.0, abs=1e-15)
    assert sft_learning_rate(55, 100, LRReductionParams(lr_scale=0.25, schedule="linear")) == pytest.approx(2.5e-6)
    constant = LRReductionParams(lr_scale=0.25, schedule="constant")
    assert sft_learning_rate(80, 100, constant) == pytest.approx(5e-6)
    assert lr_sweep(2e-5) == pytest.approx([2e-5, 1e-5, 5e-6, 2e-6])
    with pytest.raises(ValueError, match="lr_scale"):
        LRReductionParams(lr_scale=2.0)
