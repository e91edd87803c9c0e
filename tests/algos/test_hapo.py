"""HAPO (rlpost/algos/hapo.py) against numbers computed by hand from the equations in the module docstring."""
import math

import pytest
import torch

from rlpost.algos.core import ADVANTAGES, POLICY_LOSSES, AdvantageInput, LossInput, build_params
from rlpost.algos.hapo import (
    EntropyStats, HAPOAdvParams, HAPOLossParams, HAPOTemperature, HAPOTemperatureParams, entropy_stats,
    h_tilde, hapo_advantage, hapo_loss, nearest_quantile,
)
from rlpost.algos.logits_processors import LOGITS_PROCESSORS


def _H(lams):
    """Entropies whose log-entropies are exactly ``lams``."""
    return torch.tensor(lams, dtype=torch.float64).exp().float()


# ---------------------------------------------------------------- h~

@pytest.mark.parametrize("n", [1, 2, 5, 6, 11, 40])
@pytest.mark.parametrize("rho", [0.0, 0.5, 0.8, 1.0])
def test_nearest_quantile_matches_torch(n, rho):
    vals = torch.randn(n, generator=torch.Generator().manual_seed(n))
    assert nearest_quantile(vals, rho) == torch.quantile(vals, rho, interpolation="nearest")


def test_entropy_stats_and_h_tilde_by_hand():
    # lam = [0,1,2,3,4] (+ a masked-out token at lam=100 that must be ignored), rho = 0.8:
    # rank 0.8*4 = 3.2 -> 3 -> q = 3;  lam - q = [-3,-2,-1,0,1];  sigma = sqrt((9+4+1+0+1)/5) = sqrt(3)
    # h+ = 1/sqrt(3), h- = -3/sqrt(3);  signed h~ = [-3,-2,-1,0]/3 and 1/1 = [-1, -2/3, -1/3, 0, 1]
    # released_code h~ = h/h- for h <= 0 = [1, 2/3, 1/3, 0] and 1 -> [1, 2/3, 1/3, 0, 1]
    H = _H([[0, 1, 2, 3, 4, 100]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    s = entropy_stats(H, mask, rho=0.8)
    assert s.q == pytest.approx(3.0, abs=1e-5)
    assert s.sigma == pytest.approx(math.sqrt(3), rel=1e-5)
    assert s.h_pos_max == pytest.approx(1 / math.sqrt(3), rel=1e-5)
    assert s.h_neg_min == pytest.approx(-3 / math.sqrt(3), rel=1e-5)
    ht = h_tilde(H[:, :5], s, "signed")
    assert torch.allclose(ht, torch.tensor([[-1, -2 / 3, -1 / 3, 0, 1]]), atol=1e-5)
    ht_code = h_tilde(H[:, :5], s, "released_code")
    assert torch.allclose(ht_code, torch.tensor([[1, 2 / 3, 1 / 3, 0, 1]]), atol=1e-5)
    assert EntropyStats.from_any(s.to_dict()) == s


def test_single_extreme_token_sets_the_scale():
    # rho = 0.5, n = 7: rank 3 -> q = 3. lam = [0..6]: positive h~ = [1,2,3]/3.
    # Replace the top token by lam = 33: h+ = 30/sigma, so the other positives become [1,2]/30 and 33 -> 1.
    mask = torch.ones(1, 7)
    base = _H([[0, 1, 2, 3, 4, 5, 6]])
    ht = h_tilde(base, entropy_stats(base, mask, 0.5))
    assert torch.allclose(ht[0, 4:], torch.tensor([1 / 3, 2 / 3, 1.0]), atol=1e-5)
    extreme = _H([[0, 1, 2, 3, 4, 5, 33]])
    ht = h_tilde(extreme, entropy_stats(extreme, mask, 0.5))
    assert torch.allclose(ht[0, 4:], torch.tensor([1 / 30, 2 / 30, 1.0]), atol=1e-5)
    assert torch.allclose(ht[0, :4], torch.tensor([-1, -2 / 3, -1 / 3, 0]), atol=1e-5)   # negatives unaffected


def test_all_equal_entropies_give_zero_and_empty_mask_gives_none():
    # lam all equal -> lam - q = 0 everywhere -> h = 0 -> h~ = 0 (sigma clamps at 1e-4, no NaN)
    H = torch.full((2, 3), 0.7)
    s = entropy_stats(H, torch.ones(2, 3))
    assert torch.equal(h_tilde(H, s), torch.zeros(2, 3))
    H0 = torch.zeros(2, 3)   # zero entropy is clamped to 1e-8 before the log
    assert torch.equal(h_tilde(H0, entropy_stats(H0, torch.ones(2, 3))), torch.zeros(2, 3))
    assert entropy_stats(H, torch.zeros(2, 3)) is None
    assert torch.equal(h_tilde(H, None), torch.zeros(2, 3))


def test_h_tilde_range_and_sign():
    g = torch.Generator().manual_seed(0)
    H = torch.exp(torch.randn(8, 50, generator=g) * 1.5 - 1)        # log-normal entropies
    mask = (torch.rand(8, 50, generator=g) > 0.2).float()
    s = entropy_stats(H, mask, 0.8)
    h = (H.log() - s.q) / s.sigma
    ht = h_tilde(H, s, "signed")
    assert ht.min() >= -1 and ht.max() <= 1
    assert ht[mask.bool()].min() == pytest.approx(-1.0) and ht[mask.bool()].max() == pytest.approx(1.0)
    assert torch.equal(torch.sign(ht), torch.sign(h))               # signed: same sign as h
    assert (h_tilde(H, s, "released_code") >= 0).all()              # the released code's non-negative h~
    other = torch.exp(torch.randn(4, 9, generator=g) * 5)           # out-of-window tokens are clipped
    assert h_tilde(other, s).abs().max() <= 1


# ---------------------------------------------------------------- B. token-level group average

def test_hapo_advantage_by_hand():
    # group 0: R = [1, 0], L = [1, 3]:  mu = (1*1 + 3*0)/4 = 0.25
    #   var = (1*0.75^2 + 3*0.25^2)/4 = 0.1875, sd = 0.4330127;  A = [0.75/sd, -0.25/sd] = [sqrt(3), -1/sqrt(3)]
    #   sum m A = 1*sqrt(3) + 3*(-1/sqrt(3)) = 0
    # group 1: R = [1, 1] (all equal) -> A = 0
    mask = torch.tensor([[1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.float32)
    inp = AdvantageInput(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]), mask)
    adv, m = hapo_advantage(inp, HAPOAdvParams())
    expect = torch.tensor([[math.sqrt(3), 0, 0], [-1 / math.sqrt(3)] * 3, [0, 0, 0], [0, 0, 0]])
    assert torch.allclose(adv, expect, atol=1e-5)
    assert m["hapo/max_abs_group_token_adv_sum"] < 1e-5
    adv_none, _ = hapo_advantage(inp, HAPOAdvParams(scale_rewards="none"))    # R - mu only
    assert torch.allclose(adv_none[:2], torch.tensor([[0.75, 0, 0], [-0.25] * 3]))


def test_hapo_advantage_zero_sum_per_group_random():
    g = torch.Generator().manual_seed(1)
    B, T = 24, 17
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    inp = AdvantageInput(torch.randint(0, 2, (B,), generator=g).float(), torch.arange(B) // 6, mask)
    adv, _ = hapo_advantage(inp, HAPOAdvParams(group_adv_fallback=False))   # the fallback breaks the zero sum
    for gid in range(4):
        assert abs((adv[gid * 6:(gid + 1) * 6] * mask[gid * 6:(gid + 1) * 6]).sum().item()) < 1e-4
    assert (adv[mask == 0] == 0).all()


def test_hapo_advantage_fallback_and_empty_group():
    # R = [1, 0], L = [1, 30]: mu = 1/31, sd = sqrt(30)/31 -> A = [sqrt(30), -1/sqrt(30)]; |sqrt(30)| = 5.48 >= 5
    # fallback: GRPO mean 0.5, unbiased std sqrt(0.5) -> A = [+-0.5/0.7071068] = [0.7071068, -0.7071068]
    mask = torch.zeros(3, 30)
    mask[0, 0] = 1
    mask[1] = 1                                   # row 2: a group whose only completion has no tokens
    inp = AdvantageInput(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1]), mask)
    adv, m = hapo_advantage(inp, HAPOAdvParams(group_adv_fallback=False))
    assert adv[0, 0].item() == pytest.approx(math.sqrt(30), rel=1e-5)
    assert adv[1, 0].item() == pytest.approx(-1 / math.sqrt(30), rel=1e-5)
    assert m["hapo/fallback_group_frac"] == 0.0
    adv, m = hapo_advantage(inp, HAPOAdvParams())                 # the released code's fallback is the default
    assert adv[0, 0].item() == pytest.approx(math.sqrt(0.5), rel=1e-5)
    assert adv[1, 0].item() == pytest.approx(-math.sqrt(0.5), rel=1e-5)
    assert m["hapo/fallback_group_frac"] == 0.5
    assert (adv[2] == 0).all() and not torch.isnan(adv).any()


def test_hapo_advantage_registered():
    entry = ADVANTAGES.entry("hapo")
    assert entry.fn is hapo_advantage
    p = build_params(entry.params, shared={"scale_rewards": False, "epsilon": 0.3})
    assert p.scale_rewards == "none"
    with pytest.raises(ValueError):
        HAPOAdvParams(scale_rewards="batch")


# ---------------------------------------------------------------- C + D. the loss

# Stats q=0, sigma=1, h+=2, h-=-4, so lam = 1 -> h~ 0.5, lam = 2 -> 1, lam = -2 -> -0.5, lam = -4 -> -1, lam = 0 -> 0
# (signed); the released code's mode maps lam = -2 -> +0.5 and lam = -4 -> +1 instead.
STATS = EntropyStats(q=0.0, sigma=1.0, h_pos_max=2.0, h_neg_min=-4.0)
# the prose reading (not the defaults): signed h~, eps_R 0.28, the step's statistics in the loss
PROSE = {"h_sign_mode": "signed", "epsilon_high": 0.28, "loss_stats": "step"}


def _loss_input(requires_grad=False):
    ht_lams = [1.0, -2.0, 2.0, -4.0, 0.0, 3.0]          # tokens a..e, f is masked out
    adv = [1.0, 1.0, -1.0, -1.0, -2.0, 5.0]
    ratio = [1.3, 1.0, 0.5, 0.45, 25.0, 9.0]
    old = torch.zeros(1, 6)
    logp = torch.tensor([ratio]).log().requires_grad_(requires_grad)
    return LossInput(logprobs=logp, old_logprobs=old, advantages=torch.tensor([adv]),
                     response_mask=torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.float32),
                     entropies=_H([ht_lams]), entropy_stats=STATS.to_dict())


def test_hapo_loss_by_hand():
    # eps_L = 0.2, eps_R = 0.28, alpha = beta = 1, c = 10.
    # a: h~=0.5, A=1, r=1.3:  eps_R = 0.28*1.5 = 0.42; zone (0.9, 1.21); r outside & h~>0 -> A' = 1.5
    #    clip(1.3, 0.8, 1.42) = 1.3 -> l = -1.5*1.3 = -1.95
    # b: h~=-0.5, A=1, r=1:  eps_L = 0.2*1.5 = 0.3; zone (0.85, 1.14); r inside & h~<=0 -> A' = 0.5 -> l = -0.5
    # c: h~=1, A=-1, r=0.5:  eps_R = 0.56; zone (0.9, 1.28); outside -> A' = -2
    #    l = max(2*0.5, 2*clip(0.5, 0.8, 1.56)=1.6) = 1.6; dual clip min(1.6, 20) = 1.6
    # d: h~=-1, A=-1, r=0.45: eps_L = 0.4; zone (0.8, 1.14); outside & h~<=0 -> A' = -1
    #    l = max(0.45, clip(0.45, 0.6, 1.28) = 0.6) = 0.6
    # e: h~=0, A=-2, r=25: zone (0.9, 1.14), outside, h~<=0 -> A' = -2;  l = max(50, 2.56) = 50 -> dual clip 20
    loss, m = hapo_loss(_loss_input(), HAPOLossParams(**PROSE))
    assert torch.allclose(loss[0, :5], torch.tensor([-1.95, -0.5, 1.6, 0.6, 20.0]), atol=1e-5)
    assert m["hapo/boost_frac"] == pytest.approx(2 / 5)        # a, c
    assert m["hapo/damp_frac"] == pytest.approx(1 / 5)         # b
    assert m["policy/clipfrac"] == pytest.approx(2 / 5)        # c, d
    assert m["hapo/eps_low_mean"] == pytest.approx((0.2 + 0.3 + 0.2 + 0.4 + 0.2) / 5)
    assert m["hapo/eps_high_mean"] == pytest.approx((0.42 + 0.28 + 0.56 + 0.28 + 0.28) / 5)
    assert m["hapo/h_tilde_mean"] == pytest.approx(0.0, abs=1e-6)


def test_defaults_are_the_released_code_behind_table_1():
    """starriver030515/HAPO @ 7671dde (../shared/papers: 1(d)): released_code h~, tau 0.05, eps_R 0.2, micro-batch
    statistics in the loss, the |A| >= 5 group fallback on."""
    loss, temp, adv = HAPOLossParams(), HAPOTemperatureParams(), HAPOAdvParams()
    assert (loss.h_sign_mode, loss.epsilon, loss.epsilon_high, loss.loss_stats) == ("released_code", 0.2, 0.2,
                                                                                    "microbatch")
    assert (temp.h_sign_mode, temp.temperature_tau) == ("released_code", 0.05)
    assert (adv.group_adv_fallback, adv.fallback_threshold) == (True, 5.0)


def test_hapo_loss_released_code_by_hand():
    # released_code h~ (STATS): a 0.5, b +0.5, c 1, d +1, e 0; eps_L = eps_R = 0.2, alpha = beta = 1, c = 10.
    # a: h~=0.5, A=1, r=1.3: eps_R = 0.3; zone (0.9, 1.15); outside & h~>0 -> A' = 1.5; clip(1.3, .8, 1.3) -> -1.95
    # b: h~=0.5, A=1, r=1: zone (0.9, 1.15); inside & h~>0 -> not boosted, and not damped (h~ > 0): l = -1
    # c: h~=1, A=-1, r=0.5: eps_R = 0.4; outside -> A' = -2; l = max(1.0, 2*0.8) = 1.6
    # d: h~=1, A=-1, r=0.45: eps_L stays 0.2 (h~ > 0); outside -> A' = -2; l = max(0.9, 1.6) = 1.6
    # e: h~=0, A=-2, r=25: zone (0.9, 1.1), outside & h~<=0 -> A' = -2; l = 50 -> dual clip 20
    loss, m = hapo_loss(_loss_input(), HAPOLossParams(loss_stats="step"))
    assert torch.allclose(loss[0, :5], torch.tensor([-1.95, -1.0, 1.6, 1.6, 20.0]), atol=1e-5)
    assert m["hapo/boost_frac"] == pytest.approx(3 / 5)        # a, c, d
    assert m["hapo/damp_frac"] == 0.0                          # the code's mode damps no token here (signed: b)
    assert m["hapo/eps_low_mean"] == pytest.approx(0.2)
    assert m["hapo/eps_high_mean"] == pytest.approx((0.3 + 0.3 + 0.4 + 0.4 + 0.2) / 5)


def test_hapo_loss_gradient_treats_redistribution_as_constant():
    # d l / d logp = -A' r when unclipped: a -> -1.5*1.3 = -1.95, b -> -0.5; clipped c, d and dual-clipped e -> 0
    inp = _loss_input(requires_grad=True)
    loss, _ = hapo_loss(inp, HAPOLossParams(**PROSE))
    (loss * inp.response_mask).sum().backward()
    assert torch.allclose(inp.logprobs.grad[0, :5], torch.tensor([-1.95, -0.5, 0.0, 0.0, 0.0]), atol=1e-5)


def test_hapo_loss_ablations_and_microbatch_stats():
    # without D, token a: eps_R = 0.28, zone (0.9, 1.14): still boosted, A' = 1.5; clip(1.3) = 1.28
    #   l = max(-1.95, -1.92) = -1.92
    loss, _ = hapo_loss(_loss_input(), HAPOLossParams(**PROSE, adaptive_clip=False))
    assert loss[0, 0].item() == pytest.approx(-1.92, abs=1e-5)
    # without C: A' = A, so b: -1*1 = -1
    loss, m = hapo_loss(_loss_input(), HAPOLossParams(**PROSE, adv_redistribution=False))
    assert loss[0, 1].item() == pytest.approx(-1.0) and m["hapo/boost_frac"] == 0
    # microbatch statistics = step statistics computed on the same tokens
    inp = _loss_input()
    inp.entropy_stats = entropy_stats(inp.entropies, inp.response_mask, 0.8)
    step, _ = hapo_loss(inp, HAPOLossParams(**PROSE))
    micro, _ = hapo_loss(_loss_input(), HAPOLossParams(**{**PROSE, "loss_stats": "microbatch"}))
    assert torch.allclose(step, micro)


def test_hapo_loss_uniform_entropy_equals_plain_clip_and_errors():
    # all-equal entropies -> h~ = 0: bounds stay (0.2, 0.28); zone (0.9, 1.14); only tokens with r in the zone
    # and h~ <= 0 get factor 1 + 0 = 1, so A' = A and the loss is the DAPO clip with dual clip.
    inp = _loss_input()
    inp.entropies = torch.full((1, 6), 0.3)
    inp.entropy_stats = None
    loss, m = hapo_loss(inp, HAPOLossParams(epsilon_high=0.28))      # default loss_stats: microbatch
    r = torch.tensor([1.3, 1.0, 0.5, 0.45, 25.0])
    A = torch.tensor([1.0, 1.0, -1.0, -1.0, -2.0])
    plain = torch.maximum(-A * r, -A * r.clamp(0.8, 1.28))
    plain = torch.where(A < 0, torch.minimum(plain, -A * 10), plain)
    assert torch.allclose(loss[0, :5], plain, atol=1e-5)
    assert m["hapo/boost_frac"] == 0 and m["hapo/damp_frac"] == 0
    inp.response_mask = torch.zeros(1, 6)                       # empty mask: finite, metrics 0
    loss, m = hapo_loss(inp, HAPOLossParams())
    assert torch.isfinite(loss).all() and m["hapo/h_tilde_mean"] == 0
    with pytest.raises(KeyError, match="entropy_stats"):
        hapo_loss(inp, HAPOLossParams(loss_stats="step"))
    inp.entropies = None
    with pytest.raises(ValueError, match="entropies"):
        hapo_loss(inp, HAPOLossParams())


def test_hapo_loss_registered_with_shared_knobs():
    entry = POLICY_LOSSES.entry("hapo")
    p = build_params(entry.params, shared={"epsilon": 0.2, "epsilon_high": None, "scale_rewards": "group"},
                     overrides={"h_sign_mode": "released_code"})
    assert p.epsilon_high == 0.2 and p.h_sign_mode == "released_code"
    with pytest.raises(ValueError, match="h_sign_mode"):
        HAPOLossParams(h_sign_mode="abs")


# ---------------------------------------------------------------- A. adaptive temperature

def test_temperature_processor_by_hand():
    # row 0: uniform over 4 -> H = ln 4, lam = ln ln 4 = 0.326634 -> h~ = 0.326634/2 = 0.163317, T = 1.0163317
    # row 1: [20, 0, 0, 0] -> H ~ 1.3e-7, lam ~ -15.9 -> h~ clipped to -1 -> factor 1 - 0.1 = 0.9
    # row 2: [0, 0, -inf, -inf] -> H = ln 2, lam = -0.366513 -> h~ = -0.0916282 -> factor 0.9908372
    proc = LOGITS_PROCESSORS.get("hapo_temperature")(HAPOTemperatureParams(temperature_tau=0.1, h_sign_mode="signed"),
                                                     STATS.to_dict())
    logits = torch.tensor([[0.0, 0, 0, 0], [20.0, 0, 0, 0], [0.0, 0, float("-inf"), float("-inf")]])
    out = proc(0, torch.zeros(3, 5, dtype=torch.long), logits)
    f0 = 1 + 0.1 * math.log(math.log(4)) / 2
    f2 = 1 + 0.1 * math.log(math.log(2)) / 4
    assert out[1, 0].item() == pytest.approx(20 / 0.9, rel=1e-5)
    assert out[2, 2].item() == float("-inf") and not torch.isnan(out).any()
    m = proc.metrics()
    assert m["hapo/temperature_max"] == pytest.approx(f0, rel=1e-5)
    assert m["hapo/temperature_min"] == pytest.approx(0.9, rel=1e-5)
    assert m["hapo/temperature_mean"] == pytest.approx((f0 + 0.9 + f2) / 3, rel=1e-5)
    assert m["hapo/temperature_up_frac"] == pytest.approx(1 / 3)
    assert m["hapo/temperature_down_frac"] == pytest.approx(2 / 3)
    # scaling logits by 1/factor then by 1/T_base is sampling at T = T_base * factor
    logits2 = torch.tensor([[1.0, 2.0, 3.0, 0.5]])
    out2 = proc(1, torch.zeros(1, 2, dtype=torch.long), logits2)
    factor = (logits2 / out2)[0, 0].item()
    assert 0.9 <= factor <= 1.1
    assert torch.allclose(torch.softmax(out2, -1), torch.softmax(logits2 / factor, -1))


def test_temperature_processor_released_code_by_hand():
    # default tau 0.05, released_code h~ >= 0: row 0 h~ = 0.163317 (as signed); row 1 lam ~ -15.9 -> h/h- = 3.97
    # -> clipped to 1 -> factor 1.05; row 2 lam = -0.366513 -> h~ = +0.0916282. No token is cooled.
    proc = HAPOTemperature(HAPOTemperatureParams(), STATS.to_dict())
    logits = torch.tensor([[0.0, 0, 0, 0], [20.0, 0, 0, 0], [0.0, 0, float("-inf"), float("-inf")]])
    out = proc(0, None, logits)
    f0 = 1 + 0.05 * math.log(math.log(4)) / 2
    f2 = 1 - 0.05 * math.log(math.log(2)) / 4
    assert out[1, 0].item() == pytest.approx(20 / 1.05, rel=1e-5)
    assert out[2, 0].item() == 0.0 and out[0, 0].item() == 0.0
    m = proc.metrics()
    assert m["hapo/temperature_min"] == pytest.approx(f2, rel=1e-5)
    assert m["hapo/temperature_max"] == pytest.approx(1.05, rel=1e-5)
    assert m["hapo/temperature_mean"] == pytest.approx((f0 + 1.05 + f2) / 3, rel=1e-5)
    assert m["hapo/temperature_up_frac"] == pytest.approx(1.0) and m["hapo/temperature_down_frac"] == 0.0


def test_temperature_processor_first_step_and_next_state():
    proc = HAPOTemperature(HAPOTemperatureParams(temperature=0.7), None)
    logits = torch.randn(2, 7)
    assert torch.equal(proc(0, torch.zeros(2, 1, dtype=torch.long), logits), logits)
    m = proc.metrics()
    assert m["hapo/temperature_mean"] == pytest.approx(0.7) and m["hapo/has_stats"] == 0.0
    state = HAPOTemperature.next_state(_H([[0, 1, 2, 3, 4, 100]]), torch.tensor([[1, 1, 1, 1, 1, 0]]),
                                       HAPOTemperatureParams())
    assert state["q"] == pytest.approx(3.0, abs=1e-5) and state["sigma"] == pytest.approx(math.sqrt(3), rel=1e-5)
    assert HAPOTemperature.next_state(torch.ones(1, 2), torch.zeros(1, 2)) is None
    with pytest.raises(ValueError):
        HAPOTemperatureParams(temperature_tau=1.0)


def test_token_mean_shift_by_hand():
    """g0: rewards 1,0,0,0 with lengths 2,3,3,3: token-weighted mean 2/11 vs plain .25 -> |shift| = .068182 on its
    4 rows; g1 (1,1,0,0, equal lengths) shifts 0; g2 (all 0) is not informative. Mean over 8 rows: .034091."""
    mask = torch.ones(12, 3)
    mask[0, 2] = 0
    inp = AdvantageInput(rewards=torch.tensor([1., 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]),
                         group_ids=torch.tensor([0] * 4 + [1] * 4 + [2] * 4), response_mask=mask)
    _, m = ADVANTAGES.get("hapo")(inp, HAPOAdvParams())
    assert m["hapo/token_mean_shift"] == pytest.approx((0.25 - 2 / 11) / 2)
