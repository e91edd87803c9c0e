"""OBLR-PO (rlpost/algos/oblr_po.py): gradient-weighted baseline and SNR learning-rate controller."""
import math

import pytest
import torch

from rlpost.algos.core import ADVANTAGES, AdvantageInput
from rlpost.algos.lr_controllers import LR_CONTROLLERS, ConstantLR
from rlpost.algos.oblr_po import (
    OBLRAdvParams, SNRLRController, SNRParams, oblr_advantage, score_norm_proxy, signal_noise_from_groups,
    signal_noise_from_prefix, sum_p_squared, weighted_baseline,
)


def test_weight_equals_squared_logit_score_norm():
    # per token: 1 - 2 p(o) + sum_v p_v^2 = ||softmax(z) - onehot(o)||^2 = ||d log p(o) / dz||^2
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, 11, (3, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.float64)
    logp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
    w = score_norm_proxy(logp, sum_p_squared(logits), mask)
    direct = ((torch.softmax(logits, -1) - torch.nn.functional.one_hot(tokens, 11)) ** 2).sum(-1)
    assert torch.allclose(w, (direct * mask).sum(-1), atol=1e-6)
    z = logits[1, 0].clone().requires_grad_(True)                   # and it is the logit-gradient norm
    torch.log_softmax(z, -1)[tokens[1, 0]].backward()
    assert (z.grad ** 2).sum().item() == pytest.approx(direct[1, 0].item(), rel=1e-6)
    assert w[2].item() == 0.0


def test_leave_one_out_baseline_closed_form_by_hand():
    # R = [1, 0, 1], w = [1, 2, 3]: sum wR = 4, sum w = 6
    #   b_1 = (4 - 1)/(6 - 1) = 0.6;  b_2 = (4 - 0)/(6 - 2) = 1;  b_3 = (4 - 3)/(6 - 3) = 1/3
    #   plug-in b = 4/6 = 2/3
    R, w, gid = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3, dtype=torch.long)
    b = weighted_baseline(R, w, gid, leave_one_out=True)
    assert torch.allclose(b, torch.tensor([0.6, 1.0, 1 / 3], dtype=torch.float64))
    brute = [sum(w[j] * R[j] for j in range(3) if j != i) / sum(w[j] for j in range(3) if j != i) for i in range(3)]
    assert torch.allclose(b, torch.tensor(brute, dtype=torch.float64))
    b_plug = weighted_baseline(R, w, gid, leave_one_out=False)
    assert torch.allclose(b_plug, torch.full((3,), 2 / 3, dtype=torch.float64))
    # the plug-in baseline minimises sum_i w_i (R_i - b)^2 (the variance-optimal b* = E[w R] / E[w])
    grid = torch.linspace(0, 1, 1001, dtype=torch.float64)
    cost = (w[None].double() * (R[None].double() - grid[:, None]) ** 2).sum(-1)
    assert grid[cost.argmin()].item() == pytest.approx(2 / 3, abs=1e-3)


def test_baseline_edge_cases():
    # group of one -> b = R (A = 0); all-zero weights -> unweighted leave-one-out mean:
    #   R = [1, 0, 0] -> b = [0, .5, .5]
    R = torch.tensor([5.0, 1.0, 0.0, 0.0])
    gid = torch.tensor([0, 1, 1, 1])
    b = weighted_baseline(R, torch.tensor([2.0, 0.0, 0.0, 0.0]), gid)
    assert torch.allclose(b, torch.tensor([5.0, 0.0, 0.5, 0.5], dtype=torch.float64))
    b = weighted_baseline(R, torch.zeros(4), gid, leave_one_out=False)
    assert torch.allclose(b[1:], torch.full((3,), 1 / 3, dtype=torch.float64))


def test_oblr_advantage_by_hand_from_extras():
    # every token has pi(o) = 0.5 and sum pi^2 = 0.5 -> 1 - 1 + 0.5 = 0.5 per token;
    # lengths 2, 4, 6 -> w = [1, 2, 3]; R = [1, 0, 1] -> A = R - b = [0.4, -1, 2/3] on each completion's tokens
    mask = (torch.arange(6)[None] < torch.tensor([[2], [4], [6]])).float()
    inp = AdvantageInput(torch.tensor([1.0, 0.0, 1.0]), torch.zeros(3, dtype=torch.long), mask,
                         old_logprobs=torch.full((3, 6), math.log(0.5)), sum_p_sq=torch.full((3, 6), 0.5))
    adv, m = ADVANTAGES.get("oblr")(inp, OBLRAdvParams())
    assert torch.allclose(adv, torch.tensor([[0.4], [-1.0], [2 / 3]]) * mask, atol=1e-6)
    assert m["oblr/weight_mean"] == pytest.approx(2.0)
    assert m["oblr/baseline_mean"] == pytest.approx((0.6 + 1 + 1 / 3) / 3)
    adv_len, _ = oblr_advantage(inp, OBLRAdvParams(weight="length"))      # w = L = [2, 4, 6]: same ratios
    assert torch.allclose(adv_len, adv, atol=1e-6)
    with pytest.raises(KeyError, match="sum_p_sq"):
        oblr_advantage(AdvantageInput(inp.rewards, inp.group_ids, mask), OBLRAdvParams())
    with pytest.raises(ValueError):
        OBLRAdvParams(weight="grad")


def test_uniform_weights_reduce_to_rloo_and_dr_grpo():
    g = torch.Generator().manual_seed(3)
    mask = torch.ones(8, 3)
    inp = AdvantageInput(torch.rand(8, generator=g), torch.arange(8) // 4, mask)
    loo, _ = oblr_advantage(inp, OBLRAdvParams(weight="uniform"))
    assert torch.allclose(loo, ADVANTAGES.get("rloo")(inp)[0], atol=1e-6)
    plug, _ = oblr_advantage(inp, OBLRAdvParams(weight="uniform", leave_one_out=False))
    assert torch.allclose(plug, ADVANTAGES.get("dr_grpo")(inp)[0], atol=1e-6)


# ---------------------------------------------------------------- SNR controller

def test_signal_noise_from_groups_by_hand():
    # g1 = [1, 0], g2 = [3, 2]: ||g1||^2 = 1, ||g2||^2 = 13, g_bar = [2, 1], ||g_bar||^2 = 5
    #   noise = (1 + 13 - 2*5) / (2*1) = 2  (= (||g1 - g_bar||^2 + ||g2 - g_bar||^2) / 2 = (2 + 2) / 2)
    #   signal = 5 - 2 = 3
    assert signal_noise_from_groups([1.0, 13.0], 5.0) == (3.0, 2.0)
    with pytest.raises(ValueError, match=">= 2"):
        signal_noise_from_groups([1.0], 1.0)


def test_signal_noise_from_prefix_by_hand():
    # y_k = ||g_bar_k||^2 = [10, 7, 6] = 4 + 6/k exactly -> intercept 4 (signal), slope 6 -> noise 6/K = 2
    signal, noise = signal_noise_from_prefix([10.0, 7.0, 6.0])
    assert signal == pytest.approx(4.0) and noise == pytest.approx(2.0)


def test_signal_noise_from_prefix_with_unequal_micro_batches_by_hand():
    # shares .5 .25 .25 -> S_k = .5 .75 1, x_k = 1/S_k = 2 4/3 1; y_k = 4 + 2 x_k = 8 6.6667 6 -> signal 4, noise 2
    y = [8.0, 4 + 2 * 4 / 3, 6.0]
    signal, noise = signal_noise_from_prefix(y, [0.5, 0.75, 1.0])
    assert signal == pytest.approx(4.0) and noise == pytest.approx(2.0)
    # reading the same norms as equal shares (x = 3/k = 3 1.5 1) gives another answer: the old mismatch
    assert signal_noise_from_prefix(y) != pytest.approx((4.0, 2.0))
    # two micro-batches .25 / .75: S = .25 1, y = 4 + 2/S = 12 6 -> exactly (4, 2)
    assert signal_noise_from_prefix([12.0, 6.0], [0.25, 1.0]) == pytest.approx((4.0, 2.0))
    with pytest.raises(ValueError, match="cum_shares"):
        signal_noise_from_prefix([1.0, 2.0], [0.0, 1.0])


def test_prefix_estimator_unbiased_with_unequal_shares():
    # micro-batches of 1, 2, 5 units (shares c = 1/8, 2/8, 5/8), unit noise s2 = 16 per coordinate over D = 10
    # coordinates: g_j = g + e_j, Var e_j = D s2 / (N c_j) in total; the step's noise is D s2 / N = 20, ||g||^2 = 4
    g = torch.Generator().manual_seed(0)
    D, N, trials = 10, 8, 6000
    c = torch.tensor([1.0, 2.0, 5.0]) / N
    true = torch.zeros(D)
    true[0] = 2.0
    e = torch.randn(trials, 3, D, generator=g) * (16.0 / (N * c))[None, :, None].sqrt()
    acc = torch.cumsum((true + e) * c[None, :, None], 1)                          # accumulated grad [trials, K, D]
    S = torch.cumsum(c, 0)
    prefix = ((acc / S[None, :, None]) ** 2).sum(-1)                              # ||g_bar_k||^2 [trials, K]
    est = [signal_noise_from_prefix(prefix[i].tolist(), S.tolist()) for i in range(trials)]
    assert sum(n for _, n in est) / trials == pytest.approx(20.0, rel=0.1)
    equal = [signal_noise_from_prefix(prefix[i].tolist()) for i in range(trials)]   # the equal-share reading
    assert abs(sum(n for _, n in equal) / trials - 20.0) > 4.0


def test_learner_passes_each_micro_batchs_own_gradient_and_share(random_tiny_model, char_tokenizer):
    """Unequal micro-batches (3, 3, 2 rows of different lengths, token-mean): the learner passes each micro-batch's
    own mean gradient norm (what a step over that micro-batch alone accumulates), its token share, and the whole
    mini-batch's gradient norm before clipping."""
    import copy
    from tests.test_learner import make_batch
    from rlpost.algos.losses import ClipParams
    from rlpost.config import OptimConfig
    from rlpost.learner import Learner, LearnerSettings, build_scheduler, micro_batches

    class Recorder:
        needs_grad_stats = True

        def observe(self, stats):
            self.stats = stats
            return {}

        def lr_scale(self, step):
            return 1.0

    batch = make_batch(char_tokenizer)
    adv = torch.randn(batch.response_mask.shape, generator=torch.Generator().manual_seed(1)) * batch.response_mask

    def grad_sq_norm(rows, recorder=None):
        model = copy.deepcopy(random_tiny_model).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        settings = LearnerSettings("grpo", ClipParams(), "token-mean", max_completion_length=5, micro_batch_size=3,
                                   max_grad_norm=1e-3)   # clipping on: the statistics are taken before it
        learner = Learner(model, opt, build_scheduler(opt, OptimConfig(), 1), settings, lr_controller=recorder)
        sub = batch.select(rows)
        captured = {}
        clip = torch.nn.utils.clip_grad_norm_
        torch.nn.utils.clip_grad_norm_ = lambda params, *a, **k: (
            captured.update(sq=sum(float((p.grad ** 2).sum()) for p in model.parameters() if p.grad is not None))
            or clip(model.parameters(), *a, **k))
        try:
            learner.update(sub, adv[rows], learner.prepare(sub))
        finally:
            torch.nn.utils.clip_grad_norm_ = clip
        return captured["sq"], learner

    rec = Recorder()
    full_sq, learner = grad_sq_norm(torch.arange(len(batch)), rec)
    parts = micro_batches(batch, learner._micro_batch_order(batch, torch.arange(len(batch))), learner.settings)
    tokens = [float(batch.response_mask[p].sum()) for p in parts]
    assert len(parts) == 3 and len(set(tokens)) > 1                                 # unequal shares
    assert rec.stats["micro_shares"] == pytest.approx([t / sum(tokens) for t in tokens])
    own = [grad_sq_norm(p)[0] for p in parts]                                          # each micro-batch on its own
    assert rec.stats["micro_grad_sq_norms"] == pytest.approx(own, rel=1e-4)
    assert rec.stats["mean_grad_sq_norm"] == pytest.approx(full_sq, rel=1e-4)
    assert full_sq > 1e-6                                                              # clipping had work to do


def test_estimators_unbiased_on_synthetic_gradients():
    # g_k = g + e_k, e_k ~ N(0, s^2 I_D): ||g||^2 = 4, noise of the mean = D s^2 / K = 20 * 1 / 4 = 5
    g = torch.Generator().manual_seed(0)
    D, K, trials = 20, 4, 4000
    true = torch.zeros(D)
    true[0] = 2.0
    grads = true + torch.randn(trials, K, D, generator=g)                       # [trials, K, D]
    sq = (grads ** 2).sum(-1)                                                   # [trials, K]
    mean_sq = (grads.mean(1) ** 2).sum(-1)
    running_mean = torch.cumsum(grads, 1) / torch.arange(1, K + 1)[None, :, None]   # g_bar_k, [trials, K, D]
    prefix = (running_mean ** 2).sum(-1)                                        # [trials, K]
    est_g = [signal_noise_from_groups(sq[i].tolist(), mean_sq[i].item()) for i in range(trials)]
    est_p = [signal_noise_from_prefix(prefix[i].tolist()) for i in range(trials)]
    # the signal is clipped at 0, so compare noise (unclipped on average) and the mean of the signal loosely
    assert sum(n for _, n in est_g) / trials == pytest.approx(5.0, rel=0.05)
    assert sum(s for s, _ in est_g) / trials == pytest.approx(4.0, abs=0.6)
    assert sum(n for _, n in est_p) / trials == pytest.approx(5.0, rel=0.1)
    assert sum(s for s, _ in est_p) / trials == pytest.approx(4.0, abs=1.0)


def test_snr_controller_ema_scale_and_state():
    ctrl = LR_CONTROLLERS.get("oblr_snr")(SNRParams(beta=0.9, floor=0.05))
    assert ctrl.needs_grad_stats and ctrl.lr_scale(0) == 1.0          # no observation yet
    # step 1: signal 3, noise 2 -> SNR 1.5 -> scale 1.5 / 2.5 = 0.6
    m = ctrl.observe({"grad_sq_norms": [1.0, 13.0], "mean_grad_sq_norm": 5.0})
    assert m["oblr/snr"] == pytest.approx(1.5) and m["oblr/lr_scale"] == pytest.approx(0.6)
    assert ctrl.lr_scale(1) == pytest.approx(0.6)
    # step 2: g1 = [2, 0], g2 = [-2, 0] -> g_bar = 0, noise (4 + 4 - 0)/2 = 4, signal 0
    #   EMA: S = .9*3 + .1*0 = 2.7, N = .9*2 + .1*4 = 2.2, SNR = 1.22727, scale = 1.22727/2.22727 = 0.55102
    m = ctrl.observe({"grad_sq_norms": [4.0, 4.0], "mean_grad_sq_norm": 0.0})
    assert m["oblr/snr"] == pytest.approx(2.7 / 2.2) and m["oblr/snr_step"] == 0.0
    assert ctrl.lr_scale(2) == pytest.approx((2.7 / 2.2) / (1 + 2.7 / 2.2))
    resumed = SNRLRController(SNRParams())
    resumed.load_state_dict(ctrl.state_dict())
    assert resumed.lr_scale(3) == ctrl.lr_scale(3)
    pure_noise = SNRLRController(SNRParams(floor=0.05))               # signal 0 -> the floor
    pure_noise.observe({"prefix_grad_sq_norms": [6.0, 3.0, 2.0]})    # y = 0 + 6/k: intercept 0
    assert pure_noise.lr_scale(0) == pytest.approx(0.05)
    with pytest.raises(KeyError):
        pure_noise.observe({"grad_norm": 1.0})


def test_constant_controller():
    ctrl = LR_CONTROLLERS.get("constant")()
    assert isinstance(ctrl, ConstantLR) and not ctrl.needs_grad_stats
    assert ctrl.observe({}) == {} and ctrl.lr_scale(10) == 1.0 and ctrl.state_dict() == {}
