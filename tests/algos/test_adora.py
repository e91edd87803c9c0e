"""ADORA (rlpost/algos/adora.py): the TAS/TDS truth table on hand-made groups and the weighted advantages."""
import pytest
import torch

from rlpost.algos.adora import ADORAParams, adora_advantage, group_weights
from rlpost.algos.core import ADVANTAGES, AdvantageInput, build_params

# Seven groups of G = 4, correct = R > 0.5. Hand-derived criteria (llm_code):
#   g0 R=1000 L=[10,5,7,3]:  max L+ = 10 > mean L- = 5 -> LA;  p = .25 <= .5 -> DA
#   g1 R=1100 L=[4,3,8,6]:   4 > 7? no;                       p = .50 <= .5 -> DA (boundary)
#   g2 R=1110 L=[9,2,2,5]:   9 > 5 -> LA;                      p = .75 -> not DA
#   g3 R=1110 L=[2,2,2,5]:   2 > 5? no;                        p = .75 -> not DA
#   g4 R=0000 L=[3,4,5,6]:   no correct -> max = -inf -> not LA (vlm_code: LA);   p = 0 -> DA
#   g5 R=1111 L=[3,3,3,3]:   no failure -> L_fail = -inf -> LA (vlm_code: +inf -> not LA);  p = 1 -> not DA
#   g6 R=1000 L=[6,3,5,20], last truncated: L_fail = mean(3,5) = 4 < 6 -> LA (with the truncated one: 9.33 -> not)
#                                                              p = .25 -> DA
REWARDS = [1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0]
LENGTHS = [10, 5, 7, 3, 4, 3, 8, 6, 9, 2, 2, 5, 2, 2, 2, 5, 3, 4, 5, 6, 3, 3, 3, 3, 6, 3, 5, 20]
TRUNC = [False] * 27 + [True]
LA = [1, 0, 1, 0, 0, 1, 1]
LA_VLM = [1, 0, 1, 0, 1, 0, 1]
DA = [1, 1, 0, 0, 1, 0, 1]


def _inputs(truncated=True):
    lengths = torch.tensor(LENGTHS)
    mask = (torch.arange(20)[None] < lengths[:, None]).float()
    return AdvantageInput(torch.tensor(REWARDS, dtype=torch.float32), torch.arange(28) // 4, mask,
                          truncated=torch.tensor(TRUNC) if truncated else None)


def _crit(params, truncated=True):
    inp = _inputs(truncated)
    w, crit = group_weights(inp.rewards, inp.response_mask.sum(-1), inp.group_ids,
                            torch.tensor(TRUNC) if truncated else torch.zeros(28, dtype=torch.bool), params)
    return w, {k: v.tolist() for k, v in crit.items()}


@pytest.mark.parametrize("mode,expected", [
    ("difficulty", DA),
    ("length", LA),
    ("length_and_difficulty", [a & b for a, b in zip(LA, DA)]),
    ("either", [a | b for a, b in zip(LA, DA)]),
])
def test_truth_table_llm_code(mode, expected):
    w, crit = _crit(ADORAParams(mode=mode))
    assert crit["la"] == [bool(x) for x in LA]
    assert crit["da"] == [bool(x) for x in DA]
    assert crit["tas"] == [bool(x) for x in expected]
    assert crit["weight"] == [2.0 if t else 1.0 for t in expected]
    assert w.tolist() == [2.0 if t else 1.0 for t in expected for _ in range(4)]


def test_truth_table_vlm_code_and_truncation():
    _, crit = _crit(ADORAParams(mode="length", variant="vlm_code", kappa_tas=1.0, kappa_tds=0.1))
    assert crit["tas"] == [bool(x) for x in LA_VLM]
    assert crit["weight"] == [1.0 if t else 0.1 for t in LA_VLM]
    _, crit = _crit(ADORAParams(mode="length"), truncated=False)       # g6's truncated failure now counts
    assert crit["la"][6] is False
    inp = _inputs(truncated=False)                                     # max_length decides instead
    _, m = adora_advantage(inp, ADORAParams(mode="length", max_length=20))
    assert m["adora/tas_frac"] == pytest.approx(sum(LA) / 7)


def test_success_rate_band_and_metrics():
    _, crit = _crit(ADORAParams(p_lo=0.1))            # p_lo excludes the all-wrong group g4
    assert crit["da"] == [True, True, False, False, False, False, True]
    assert crit["success_rate"] == [0.25, 0.5, 0.75, 0.75, 0.0, 1.0, 0.25]
    _, m = adora_advantage(_inputs(), ADORAParams())
    assert m["adora/tas_frac"] == pytest.approx(4 / 7)
    assert m["adora/weight_mean"] == pytest.approx((4 * 2 + 3 * 1) / 7)
    assert m["adora/success_rate_mean"] == pytest.approx(3.5 / 7)


def test_weighted_advantages_by_hand():
    # g0: R = [1,0,0,0], mean .25, unbiased std sqrt((.75^2 + 3*.25^2)/3) = .5 -> GRPO A = [1.5, -.5, -.5, -.5]
    #     difficulty TAS, w = 2 -> [3, -1, -1, -1] on every token of each completion
    # g3: not TAS, w = 1 -> R = [1,1,1,0], mean .75, std .5 -> [.5, .5, .5, -1.5]
    # g4 (all wrong) and g5 (all right): A = 0 whatever w
    inp = _inputs()
    adv, _ = adora_advantage(inp, ADORAParams())
    seq = adv.sum(-1) / inp.response_mask.sum(-1)
    assert torch.allclose(seq[:4], torch.tensor([3.0, -1, -1, -1]), atol=1e-4)
    assert torch.allclose(seq[12:16], torch.tensor([0.5, 0.5, 0.5, -1.5]), atol=1e-4)
    assert (adv[16:24] == 0).all()
    assert (adv[inp.response_mask == 0] == 0).all()
    # the released-code preset: length, lambda = 0.1 on TDS; g1 is TDS:
    #   R = [1,1,0,0], A = +-0.5/sqrt(1/3) = +-0.866, times 0.1
    adv, _ = adora_advantage(inp, ADORAParams(mode="length", kappa_tas=1.0, kappa_tds=0.1))
    seq = adv.sum(-1) / inp.response_mask.sum(-1)
    a = 0.5 / (1 / 3) ** 0.5          # (1 - .5) / unbiased std sqrt(1/3)
    assert torch.allclose(seq[4:8], 0.1 * torch.tensor([a, a, -a, -a]), atol=1e-4)


def test_rloo_base_and_registry():
    # g0 with RLOO: A = G/(G-1) (R - mean) = 4/3 * [.75, -.25, -.25, -.25] = [1, -1/3, -1/3, -1/3]; w = 2
    adv, _ = adora_advantage(_inputs(), ADORAParams(base="rloo"))
    seq = adv.sum(-1) / _inputs().response_mask.sum(-1)
    assert torch.allclose(seq[:4], torch.tensor([2.0, -2 / 3, -2 / 3, -2 / 3]), atol=1e-5)
    entry = ADVANTAGES.entry("adora")
    p = build_params(entry.params, shared={"scale_rewards": "none", "epsilon": 0.2}, overrides={"mode": "length"})
    assert p.scale_rewards == "none" and p.mode == "length"
    for bad in ({"mode": "lenght"}, {"variant": "x"}, {"base": "adora"}):
        with pytest.raises(ValueError):
            ADORAParams(**bad)


def test_activity_metrics_count_informative_groups_only():
    """tau .25: g0 (1 of 4 correct) x2, g1 (2 of 4) x1, g2 (none correct: A = 0 whatever its weight) x2.
    Among the informative groups g0, g1: half up-weighted, weights 2 and 1 -> spread 1."""
    R = torch.tensor([1., 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0])
    inp = AdvantageInput(rewards=R, group_ids=torch.tensor([0] * 4 + [1] * 4 + [2] * 4),
                         response_mask=torch.ones(12, 3))
    _, m = adora_advantage(inp, ADORAParams(tau=0.25))
    assert m["adora/tas_frac"] == pytest.approx(2 / 3)
    assert m["adora/informative_tas_frac"] == pytest.approx(0.5) and m["adora/weight_spread"] == pytest.approx(1.0)
    _, m = adora_advantage(inp, ADORAParams(tau=0.5))          # every group x2: a uniform rescaling
    assert m["adora/informative_tas_frac"] == 1.0 and m["adora/weight_spread"] == 0.0
