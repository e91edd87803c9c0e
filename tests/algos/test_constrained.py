"""Constrained RLHF (rlpost/algos/constrained.py) against hand-computed numbers."""
import dataclasses
import io
import math

import numpy as np
import pytest
import torch

from rlpost.algos import ADVANTAGES, AdvantageInput, build_params
from rlpost.algos.constrained import (
    ConstrainedAdvParams, LagrangeMultipliers, NelderMead, ProxyPointSearch, ProxySearchParams,
    adaptive_kl_coef, component_means, initial_simplex, normalize,
)

S = 1 / math.sqrt(2)  # a group of two, normalised with its unbiased std and eps=0, is ±1/√2


def _multipliers(mode, raw=0.0, **kw):
    m = LagrangeMultipliers({"a": 0.5, "b": 0.2}, mode=mode, **kw)
    with torch.no_grad():
        m.mu_raw.fill_(raw)
    return m


# ---------------------------------------------------------------- multipliers

def test_multiplier_init_is_one_small_draw_copied():
    m = LagrangeMultipliers({"a": 0.5, "b": 0.2, "c": 0.1}, mode="mu", seed=3)
    assert torch.all(m.mu_raw == m.mu_raw[0]) and abs(m.mu_raw[0].item()) < 0.05
    assert torch.allclose(m.weights(), torch.full((3,), 0.5, dtype=torch.float64), atol=0.02)
    xi = LagrangeMultipliers({"a": 0.5}, mode="xi")
    assert torch.allclose(xi.weights(), torch.zeros(1, dtype=torch.float64), atol=0.05)


def test_mu_update_two_sgd_momentum_steps():
    # θ = (0.5, 0.2), Ĵ = (0.3, 0.4): gap Ĵ − θ = (−0.2, 0.2), σ'(0) = 1/4
    # step 1: grad = (−0.05, 0.05), buf = grad, μ = −0.1·buf = (0.005, −0.005)
    # step 2: σ'(0.005) = σ(1−σ) = 0.2499984375 -> grad = (−0.0499996875, +)
    #         buf = 0.1·(−0.05) − 0.0499996875 = −0.0549996875, μ_a = 0.005 + 0.00549996875 = 0.01049996875
    m = _multipliers("mu")
    metrics = m.update({"a": 0.3, "b": 0.4})
    assert torch.allclose(m.mu_raw.detach(), torch.tensor([0.005, -0.005], dtype=torch.float64), atol=1e-12)
    assert metrics["constrained/multiplier_loss"] == pytest.approx(0.5 * -0.2 + 0.5 * 0.2)
    m.update(torch.tensor([0.3, 0.4], dtype=torch.float64))
    assert m.mu_raw[0].item() == pytest.approx(0.01049996875, abs=1e-10)
    assert m.mu_raw[1].item() == pytest.approx(-0.01049996875, abs=1e-10)
    w = m.weights()   # RM a below its floor gets more weight, b (satisfied) less
    assert w[0] > 0.5 > w[1]


def test_xi_update_pushes_overshoot_negative():
    # tanh'(0) = 1: μ = −0.1·(Ĵ − θ) = (0.02, −0.02); weights tanh(±0.02) = ±0.0199973336
    m = _multipliers("xi")
    m.update({"a": 0.3, "b": 0.4})
    assert torch.allclose(m.mu_raw.detach(), torch.tensor([0.02, -0.02], dtype=torch.float64), atol=1e-12)
    assert m.as_dict()["b"] == pytest.approx(-0.0199973336, abs=1e-9)


def test_all_update_is_an_upper_bound():
    # gap θ − Ĵ = (0.2, −0.2), σ'(0) = 1/4 -> grad (0.05, −0.05), μ = (−0.005, 0.005): b is over its cap
    m = _multipliers("all")
    m.update({"a": 0.3, "b": 0.4})
    assert torch.allclose(m.mu_raw.detach(), torch.tensor([-0.005, 0.005], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("mode,low,high", [("mu", 0.0, 1.0), ("all", 0.0, 1.0), ("xi", -1.0, 1.0)])
def test_weights_stay_inside_bounds(mode, low, high):
    m = _multipliers(mode, lr=5.0)
    previous = m.weights()
    for _ in range(100):   # a large, persistent violation in opposite directions
        m.update({"a": -0.5, "b": 1.2} if mode != "all" else {"a": 1.5, "b": -0.8})
        w = m.weights()
        assert torch.all(w > low) and torch.all(w < high)
    assert w[0] > previous[0] and w[1] < previous[1]


def test_multiplier_grad_clipping():
    # xi: grad = Ĵ − θ = (−0.2, 0.2), norm 0.283 clipped to 0.01 -> |Δμ| = lr · 0.01 = 0.001
    m = _multipliers("xi", max_grad_norm=0.01)
    m.update({"a": 0.3, "b": 0.4})
    assert m.mu_raw.detach().norm().item() == pytest.approx(0.001, rel=1e-4)


def test_multiplier_state_dict_roundtrip_and_thresholds():
    m = _multipliers("mu")
    m.update({"a": 0.3, "b": 0.4})
    m.set_thresholds({"a": 0.6, "b": 0.1})
    other = LagrangeMultipliers({"a": 0.5, "b": 0.2}, mode="mu", seed=9)
    other.load_state_dict(m.state_dict())
    for mult in (m, other):
        mult.update({"a": 0.3, "b": 0.4})
    assert torch.equal(m.mu_raw, other.mu_raw)
    assert other.extra()["thresholds"] == pytest.approx({"a": 0.6, "b": 0.1})
    with pytest.raises(ValueError, match="multiplier state"):
        LagrangeMultipliers({"a": 0.5, "b": 0.2}, mode="xi").load_state_dict(m.state_dict())


# ---------------------------------------------------------------- advantage

def _inp(**fields):
    # two groups of two; components a, b; old − ref log-ratios whose masked sums are (0.3, 0.4, 0.5, 0.2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.float32)
    log_ratio = torch.tensor([[0.1, 0.2, 9.0], [0.0, 0.1, 0.3], [0.5, 9.0, 9.0], [0.1, 0.1, 9.0]])
    base = {
        "reward_components": {"a": torch.tensor([0.0, 1.0, 0.2, 0.6]), "b": torch.tensor([0.0, 2.0, 3.0, 1.0])},
        "old_logprobs": log_ratio - 1.0, "ref_logprobs": torch.full((4, 3), -1.0),
    }
    base.update(fields)
    return AdvantageInput(rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]), group_ids=torch.tensor([0, 0, 1, 1]),
                          response_mask=mask, **base)


def _params(**kw):
    kw.setdefault("thresholds", {"a": 0.5, "b": 1.5})
    return build_params(ConstrainedAdvParams, overrides={"eps": 0.0, **kw}, where="algo.advantage")


def test_registered_with_params():
    assert ADVANTAGES.entry("constrained").params is ConstrainedAdvParams


def test_xi_mixing_hand_computed():
    # norm(a) = (−s, s, −s, s), norm(b) = (−s, s, s, −s), R_kl = −0.2·(0.3, 0.4, 0.5, 0.2) -> norm (s, −s, −s, s)
    # w = (0.5, −0.25): task weight N − Σw = 1.75
    # A = 1.75·norm(kl) + 0.5·norm(a) − 0.25·norm(b) = s·(1.5, −1.5, −2.5, 2.5)
    inp = _inp(multiplier_weights=torch.tensor([0.5, -0.25]))
    adv, metrics = ADVANTAGES.get("constrained")(inp, _params(mode="xi"))
    expected = S * torch.tensor([1.5, -1.5, -2.5, 2.5])
    assert torch.allclose(adv, expected[:, None] * inp.response_mask, atol=1e-6)
    assert metrics["constrained/task_weight"] == pytest.approx(1.75)
    assert metrics["constrained/task_reward"] == pytest.approx(-0.2 * 1.4 / 4)
    # Ĵ_a = 0.45 vs θ_a = 0.5; Ĵ_b = 1.5 = θ_b
    assert metrics["constrained/reward/a"] == pytest.approx(0.45)
    assert metrics["constrained/gap/a"] == pytest.approx(-0.05)
    assert metrics["constrained/violation/a"] == pytest.approx(0.05)
    assert metrics["constrained/violation/b"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["constrained/multiplier/b"] == pytest.approx(-0.25)


def test_mu_mixing_with_reward_task():
    # task = inp.rewards (1, 0, 0, 1) -> norm (s, −s, −s, s); w = (0.5, 0.5) -> task weight 1
    # A = (s, −s, −s, s) + 0.5(−s, s, −s, s) + 0.5(−s, s, s, −s) = (0, 0, −s, s)
    inp = _inp(multiplier_weights={"a": 0.5, "b": 0.5})
    adv, metrics = ADVANTAGES.get("constrained")(inp, _params(mode="mu", task="reward"))
    assert torch.allclose(adv[:, 0], torch.tensor([0.0, 0.0, -S, S]), atol=1e-6)
    assert metrics["constrained/violation/a"] == pytest.approx(0.05)   # floor 0.5 missed by 0.05


def test_all_mixing_subtracts_constraint_advantages():
    # task = 0.5a + b = (0, 2.5, 3.1, 1.3) -> norm (−s, s, s, −s); w = (0.5, 0.25) -> task weight 1.25
    # A = 1.25(−s, s, s, −s) − 0.5(−s, s, −s, s) − 0.25(−s, s, s, −s) = s·(−0.5, 0.5, 1.5, −1.5)
    inp = _inp(multiplier_weights=torch.tensor([0.5, 0.25]))
    params = _params(mode="all", weights={"a": 0.5, "b": 1.0})
    assert params.task == "weighted_sum"
    adv, metrics = ADVANTAGES.get("constrained")(inp, params)
    assert torch.allclose(adv[:, 0], S * torch.tensor([-0.5, 0.5, 1.5, -1.5]), atol=1e-6)
    assert metrics["constrained/violation/a"] == 0.0   # a = 0.45 is under its cap 0.5


def test_sat_reward():
    # r_SAT = −((a − 0.5)² + (b − 1.5)²) = (−2.5, −0.5, −2.34, −0.26) -> per group (−s, s, −s, s)
    adv, metrics = ADVANTAGES.get("constrained")(_inp(), _params(mode="sat"))
    assert torch.allclose(adv[:, 0], torch.tensor([-S, S, -S, S]), atol=1e-6)
    assert metrics["constrained/task_reward"] == pytest.approx((-2.5 - 0.5 - 2.34 - 0.26) / 4)


def test_sum_mode_one_group_of_three():
    # R = 2a + b = (1, 2, 4): mean 7/3, unbiased var = (16/9 + 1/9 + 25/9)/2 = 7/3, std 1.5275252
    # A = (−4/3, −1/3, 5/3)/1.5275252 = (−0.8728716, −0.2182179, 1.0910895)
    inp = AdvantageInput(rewards=torch.zeros(3), group_ids=torch.zeros(3, dtype=torch.long),
                         response_mask=torch.ones(3, 2),
                         reward_components={"a": torch.tensor([0.0, 0.5, 1.0]), "b": torch.tensor([1.0, 1.0, 2.0])})
    params = build_params(ConstrainedAdvParams, overrides={"mode": "sum", "weights": {"a": 2.0, "b": 1.0}, "eps": 0.0})
    adv, _ = ADVANTAGES.get("constrained")(inp, params)
    assert torch.allclose(adv[:, 1], torch.tensor([-0.8728716, -0.2182179, 1.0910895]), atol=1e-6)


def test_normalize_batch_scale():
    # group-centred (−0.5, 0.5, −1, 1), divided by the batch std of (0, 1, 2, 4) = 1.7078251
    v = torch.tensor([0.0, 1.0, 2.0, 4.0])
    out = normalize(v, torch.tensor([0, 0, 1, 1]), "batch", 0.0)
    assert torch.allclose(out, torch.tensor([-0.5, 0.5, -1.0, 1.0], dtype=torch.float64) / 1.7078251, atol=1e-6)


def test_thresholds_from_the_input_override_params():
    inp = _inp(multiplier_weights=torch.zeros(2), thresholds={"a": 0.4, "b": 1.5})
    _, metrics = ADVANTAGES.get("constrained")(inp, _params(mode="xi"))
    assert metrics["constrained/gap/a"] == pytest.approx(0.05)


def test_multipliers_feed_the_advantage():
    params = _params(mode="xi")
    mult = LagrangeMultipliers.from_params(params)
    mult.update(component_means(_inp().reward_components, index=torch.tensor([0, 1])))
    inp = dataclasses.replace(_inp(), **mult.extra())
    _, metrics = ADVANTAGES.get("constrained")(inp, params)
    assert metrics["constrained/multiplier/a"] == pytest.approx(mult.as_dict()["a"])


def test_errors_name_what_is_missing():
    fn = ADVANTAGES.get("constrained")
    with pytest.raises(KeyError, match="multiplier_weights"):
        fn(_inp(), _params(mode="xi"))
    with pytest.raises(KeyError, match="reward_components"):
        fn(AdvantageInput(torch.zeros(2), torch.zeros(2), torch.ones(2, 1)), _params(mode="sat"))
    with pytest.raises(KeyError, match=r"lacks \['c'\]"):
        fn(_inp(), _params(mode="sat", thresholds={"a": 0.5, "c": 1.0}))
    with pytest.raises(ValueError, match="mode"):
        _params(mode="nu")
    with pytest.raises(ValueError, match="thresholds is required"):
        build_params(ConstrainedAdvParams, overrides={"mode": "xi"})
    with pytest.raises(ValueError, match="did you mean 'tol'"):
        _params(proxy_search={"init_values": {"a": 0, "b": 0}, "max_values": {"a": 1, "b": 1}, "tool": 1})


def test_adaptive_kl_coef():
    # e = clip((0.75 − 0.5)/0.5, ±0.2) = 0.2 -> 0.2·(1 + 0.1·0.2) = 0.204;  KL 0.45: e = −0.1 -> 0.198
    assert adaptive_kl_coef(0.2, 0.75, 0.5) == pytest.approx(0.204)
    assert adaptive_kl_coef(0.2, 0.45, 0.5) == pytest.approx(0.198)


# ---------------------------------------------------------------- Nelder–Mead on 2-D quadratics

def bowl(p):
    return float(p[0] ** 2 + p[1] ** 2)


def saddle(p):
    return float(p[0] ** 2 - p[1] ** 2)


def _run_until_iteration(nm, f, evals):
    for _ in range(evals):
        nm.tell(f(nm.ask()))


def test_nm_reflection():
    # f = x² + y², simplex (0,0) f0, (−2,0) f4, (−2,−1) f5; c = (−1, 0)
    # x_r = c + (c − (−2,−1)) = (0, 1), f 1: 0 <= 1 < 4 -> accept
    nm = NelderMead([[0, 0], [-2, 0], [-2, -1]])
    _run_until_iteration(nm, bowl, 3)
    assert nm.phase == "reflect" and np.allclose(nm.ask(), [0, 1])
    nm.tell(bowl(nm.ask()))
    assert np.allclose(nm.simplex, [[0, 0], [0, 1], [-2, 0]]) and np.allclose(nm.values, [0, 1, 4])


def test_nm_expansion_accepted():
    # simplex (−1,−1) f2, (−2,0) f4, (−2,−1) f5; c = (−1.5,−0.5); x_r = (−1, 0) f1 < 2 -> expand
    # x_e = c + 2(x_r − c) = (−0.5, 0.5), f 0.5 < 1 -> keep x_e
    nm = NelderMead([[-1, -1], [-2, 0], [-2, -1]])
    _run_until_iteration(nm, bowl, 4)
    assert nm.phase == "expand" and np.allclose(nm.ask(), [-0.5, 0.5])
    nm.tell(bowl(nm.ask()))
    assert np.allclose(nm.simplex, [[-0.5, 0.5], [-1, -1], [-2, 0]]) and np.allclose(nm.values, [0.5, 2, 4])


def test_nm_expansion_rejected_keeps_reflection():
    # simplex (0,−1) f1, (−2,0) f4, (−2,−1) f5; c = (−1,−0.5); x_r = (0,0) f0 < 1 -> expand
    # x_e = (1, 0.5), f 1.25 >= 0 -> keep x_r
    nm = NelderMead([[0, -1], [-2, 0], [-2, -1]])
    _run_until_iteration(nm, bowl, 5)
    assert np.allclose(nm.simplex, [[0, 0], [0, -1], [-2, 0]]) and np.allclose(nm.values, [0, 1, 4])


def test_nm_outside_contraction():
    # simplex (0,0) f0, (−1,0) f1, (−1,−1) f2; c = (−0.5, 0); x_r = (0, 1) f1: f_n = 1 <= 1 < 2 -> outside
    # x_c = c + 0.5(x_r − c) = (−0.25, 0.5), f 0.3125 <= 1 -> accept
    nm = NelderMead([[0, 0], [-1, 0], [-1, -1]])
    _run_until_iteration(nm, bowl, 4)
    assert nm.phase == "contract_outside" and np.allclose(nm.ask(), [-0.25, 0.5])
    nm.tell(bowl(nm.ask()))
    assert np.allclose(nm.simplex, [[0, 0], [-0.25, 0.5], [-1, 0]]) and np.allclose(nm.values, [0, 0.3125, 1])


def test_nm_inside_contraction():
    # simplex (0,0) f0, (0,−1) f1, (−2,0) f4; c = (0,−0.5); x_r = (2,−1) f5 >= 4 -> inside
    # x_c = c + 0.5((−2,0) − c) = (−1,−0.25), f 1.0625 < 4 -> accept
    nm = NelderMead([[0, 0], [0, -1], [-2, 0]])
    _run_until_iteration(nm, bowl, 4)
    assert nm.phase == "contract_inside" and np.allclose(nm.ask(), [-1, -0.25])
    nm.tell(bowl(nm.ask()))
    assert np.allclose(nm.simplex, [[0, 0], [0, -1], [-1, -0.25]]) and np.allclose(nm.values, [0, 1, 1.0625])


def test_nm_shrink():
    # f = x² − y² (a convex f never shrinks); simplex (−1,−2) f−3, (0,1) f−1, (0,0) f0; c = (−0.5,−0.5)
    # x_r = (−1,−1) f0 >= 0 -> inside: x_c = (−0.25,−0.25) f0, not < 0 -> shrink toward (−1,−2), σ = 0.5:
    # (0,1) -> (−0.5,−0.5) f0;  (0,0) -> (−0.5,−1) f−0.75;  sorted: (−1,−2), (−0.5,−1), (−0.5,−0.5)
    nm = NelderMead([[-1, -2], [0, 1], [0, 0]])
    _run_until_iteration(nm, saddle, 5)
    assert nm.phase == "shrink" and np.allclose(nm.ask(), [-0.5, -0.5])
    assert nm.num_evals == 5
    _run_until_iteration(nm, saddle, 2)
    assert np.allclose(nm.simplex, [[-1, -2], [-0.5, -1], [-0.5, -0.5]]) and np.allclose(nm.values, [-3, -0.75, 0])
    assert nm.num_evals == 7


def test_nm_converges_and_stops_on_tol_or_budget():
    f = lambda p: float((p[0] - 1) ** 2 + (p[1] + 2) ** 2)  # noqa: E731
    nm = NelderMead([[0, 0], [1, 0], [0, 1]], tol=1e-10, max_evals=400)
    while not nm.done:
        nm.tell(f(nm.ask()))
    x, fx = nm.best()
    assert np.allclose(x, [1, -2], atol=1e-3) and np.std(nm.values) < 1e-10 and nm.num_evals < 400
    nm = NelderMead([[0, 0], [1, 0], [0, 1]], tol=0.0, max_evals=7)
    while not nm.done:
        nm.tell(f(nm.ask()))
    assert nm.num_evals == 7
    with pytest.raises(RuntimeError):
        nm.ask()


def test_nm_state_dict_resumes_identically():
    a = NelderMead([[0, 0], [1, 0], [0, 1]], tol=1e-12, max_evals=30)
    _run_until_iteration(a, bowl, 6)
    b = NelderMead([[5, 5], [6, 5], [5, 6]])
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    _run_until_iteration(a, bowl, 10)
    _run_until_iteration(b, bowl, 10)
    assert np.array_equal(a.simplex, b.simplex) and a.history == b.history


# ---------------------------------------------------------------- NM-PPO driver

def test_initial_simplex_between_init_and_max():
    s = initial_simplex([0.2, 0.4], [0.25, 0.5], seed=1)
    assert s.shape == (3, 2) and np.all(s >= [0.2, 0.4]) and np.all(s <= [0.25, 0.5])


def test_proxy_search_reach_cache_and_cap():
    params = ProxySearchParams(eval_every=2, cap_iters=6, reach_tol=0.05, cache_tol=5e-3)
    simplex = [[0.2, 0.4], [0.201, 0.4], [0.3, 0.5]]   # vertex 1 is within cache_tol of vertex 0
    search = ProxyPointSearch(["a", "b"], params, simplex=simplex)
    assert search.thresholds == pytest.approx({"a": 0.2, "b": 0.4})
    assert [search.tick(), search.tick()] == [False, True]
    assert search.report(0.7, {"a": 0.1, "b": 0.4}) is None          # a is 50 % off: keep training
    assert [search.tick(), search.tick()] == [False, True]
    new = search.report(0.7, {"a": 0.205, "b": 0.39})                  # within ±5 %: F = −0.7
    # vertex 1 reuses the cached −0.7 without training, so the next proposal is vertex 2
    assert new == pytest.approx({"a": 0.3, "b": 0.5}) and search.nm.num_evals == 2
    due = [search.tick() for _ in range(6)]
    assert due == [False, True, False, True, False, True]               # every 2, and the cap at 6
    new = search.report(0.5, {"a": 0.0, "b": 0.0})                      # cap reached: score counts
    assert search.nm.num_evals == 3 and search.nm.phase == "reflect"
    assert search.metrics()["proxy_search/best_score"] == pytest.approx(0.7)


def test_proxy_search_finds_the_peak_of_a_synthetic_eval():
    # the policy lands on θ at once; eval(θ) = 1 − (θ_a − 0.23)² − (θ_b − 0.48)²
    params = ProxySearchParams(init_values={"a": 0.1, "b": 0.3}, max_values={"a": 0.4, "b": 0.6},
                               eval_every=1, cap_iters=3, cache_tol=1e-4, tol=1e-7, max_evals=80)
    search = ProxyPointSearch(["a", "b"], params)
    steps = 0
    while not search.done and steps < 1000:
        theta = search.thresholds
        if search.tick():
            score = 1 - (theta["a"] - 0.23) ** 2 - (theta["b"] - 0.48) ** 2
            search.report(score, theta)
        steps += 1
    assert search.done
    assert search.thresholds == pytest.approx({"a": 0.23, "b": 0.48}, abs=0.01)
    resumed = ProxyPointSearch(["a", "b"], params)
    buffer = io.BytesIO()
    torch.save({"search": search.state_dict(), "mult": LagrangeMultipliers({"a": 0.2, "b": 0.4}).state_dict()}, buffer)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True)["search"])
    assert resumed.thresholds == search.thresholds and resumed.done


def test_zero_spread_component_contributes_nothing():
    # group 1 has b = (1, 1): with the default eps its normalised b is 0, not NaN
    inp = _inp(multiplier_weights=torch.tensor([0.0, 0.5]))
    inp.reward_components["b"] = torch.tensor([0.0, 2.0, 1.0, 1.0])
    adv, _ = ADVANTAGES.get("constrained")(inp, build_params(ConstrainedAdvParams, overrides={
        "mode": "xi", "thresholds": {"a": 0.5, "b": 1.5}}))
    assert torch.isfinite(adv).all()
    # rows 2, 3: only the task term 1.5 · norm(kl); R_kl = (−0.10, −0.04): centred ∓0.03, std 0.06/√2
    # -> 1.5 · 0.03 / (0.0424264 + 1e-4) = 1.058168
    assert torch.allclose(adv[2:, 0], torch.tensor([-1.058168, 1.058168]), atol=1e-5)
