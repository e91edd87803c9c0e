"""Truncated importance sampling and the sampler/learner KL against hand-computed numbers (rlpost/algos/mismatch.py)."""
import copy
import math

import pytest
import torch

from rlpost.algos.losses import ClipParams
from rlpost.algos.mismatch import ISCorrection, importance_weights, is_correction_from_config, sampler_learner_kl
from rlpost.batch import collate
from rlpost.config import AlgoConfig, ConfigError, OptimConfig, load_config
from rlpost.learner import Learner, LearnerSettings, build_scheduler
from rlpost.types import Prompt, Sample, Trajectory

# two rows, three tokens; row 1's last token is not trained on
LEARNER = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.2, 0.0]])
SAMPLER = torch.tensor([[-1.5, -1.0, -0.5], [-0.3, -1.0, -9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
# learner - sampler: [[0.5, -1.0, 0.0], [0.0, 0.8, (masked)]]; row sums -0.5 and 0.8
E = math.exp


def close(t, expected):
    return torch.allclose(t, torch.tensor(expected), atol=1e-6)


def weights(mode, clip_max=2.0, clip_min=None):
    return importance_weights(LEARNER, SAMPLER, MASK, ISCorrection(mode, clip_max, clip_min))


def test_token_truncate():
    w, m = weights("token_truncate")
    assert w.shape == (2, 3)
    assert close(w, [[E(0.5), E(-1.0), 1.0], [1.0, 2.0, 1.0]])  # e^0.8 = 2.23 -> 2
    assert m["rollout/is_ratio/outside_frac"] == pytest.approx(1 / 5)
    w, _ = weights("token_truncate", clip_min=0.5)
    assert w[0, 1].item() == pytest.approx(0.5)                                              # e^-1 = 0.37 -> 0.5


def test_token_mask():
    w, m = weights("token_mask", clip_min=0.5)
    assert close(w, [[E(0.5), 0.0, 1.0], [1.0, 0.0, 1.0]])
    assert m["rollout/is_ratio/outside_frac"] == pytest.approx(2 / 5)
    assert m["rollout/is_ratio/max"] == pytest.approx(E(0.5))
    assert m["rollout/is_ratio/min"] == 0.0
    assert m["rollout/is_ratio/mean"] == pytest.approx((E(0.5) + 1 + 1) / 5)


def test_sequence_truncate():
    w, _ = weights("sequence_truncate")
    assert w.shape == (2, 1)
    assert w.flatten().tolist() == pytest.approx([E(-0.5), 2.0], abs=1e-6)
    w, _ = weights("sequence_truncate", clip_min=0.7)
    assert w.flatten().tolist() == pytest.approx([0.7, 2.0], abs=1e-6)


def test_sequence_mask():
    w, m = weights("sequence_mask")
    assert w.flatten().tolist() == pytest.approx([E(-0.5), 0.0], abs=1e-6)
    assert m["rollout/is_ratio/outside_frac"] == pytest.approx(0.5)
    w, _ = weights("sequence_mask", clip_min=0.7)
    assert w.flatten().tolist() == [0.0, 0.0]


def test_no_bounds_and_empty_rows():
    w, _ = weights("sequence_truncate", clip_max=None)
    assert w.flatten().tolist() == pytest.approx([E(-0.5), E(0.8)], abs=1e-6)
    w, m = importance_weights(LEARNER, SAMPLER, torch.zeros_like(MASK), ISCorrection("sequence_mask"))
    assert w.flatten().tolist() == [1.0, 1.0] and m["rollout/is_ratio/mean"] == 1.0


def test_kl_k3():
    # k3 = e^x - 1 - x for x = learner - sampler over the 5 trained tokens
    xs = [0.5, -1.0, 0.0, 0.0, 0.8]
    expected = sum(E(x) - 1 - x for x in xs) / 5                    # = 0.188428
    assert sampler_learner_kl(LEARNER, SAMPLER, MASK).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.188428, abs=1e-5)
    assert sampler_learner_kl(LEARNER, LEARNER, MASK).item() == 0.0


def test_config_names_and_validation():
    assert is_correction_from_config(AlgoConfig()) is None
    cfg = load_config(None, ["vllm_importance_sampling_correction=true", "vllm_importance_sampling_mode=token_mask",
                             "vllm_importance_sampling_clip_min=0.5"])            # TRL names at the top level
    corr = is_correction_from_config(cfg.algo)
    assert corr == ISCorrection("token_mask", 3.0, 0.5)
    with pytest.raises(ConfigError, match="vllm_importance_sampling_mode"):
        load_config(None, ["algo.vllm_importance_sampling_mode=token"])
    with pytest.raises(ValueError, match="token_truncate"):
        ISCorrection("token")


def _batch(tok, sampler_shift: float):
    trajs = []
    for i in range(4):
        prompt = tok("12+34=", add_special_tokens=False)["input_ids"]
        comp = [10 + i, 20, 30]
        s = Sample(prompt_ids=prompt, completion_ids=comp, logprobs=[0.0] * 3)
        trajs.append(Trajectory(Prompt(0, "p"), group_id=0, samples=[s], final_text="", reward=float(i % 2)))
    return collate(trajs, tok.pad_token_id)


def test_learner_applies_the_weights(random_tiny_model, char_tokenizer):
    """sequence_mask with a sampler far from the learner zeroes every row's loss; with the sampler's log-probs
    equal to the learner's the weights are 1 and the loss is unchanged."""
    from rlpost.learner import batched_logprobs

    def loss_with(corr, sampler_lp):
        model = copy.deepcopy(random_tiny_model).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        settings = LearnerSettings("grpo", ClipParams(), "token-mean", max_completion_length=3, max_grad_norm=0.0,
                                   vllm_is=corr)
        learner = Learner(model, opt, build_scheduler(opt, OptimConfig(), 1), settings)
        batch = _batch(char_tokenizer, 0.0)
        batch.sampler_logprobs = sampler_lp(model, batch, settings)
        adv = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]]).expand(4, 3) * batch.response_mask
        return learner.update(batch, adv, learner.prepare(batch))

    exact = lambda model, batch, s: batched_logprobs(model, batch, s, False)[0]        # noqa: E731
    far = lambda model, batch, s: exact(model, batch, s) - 5.0                          # noqa: E731
    plain = loss_with(None, exact)
    same = loss_with(ISCorrection("sequence_mask"), exact)
    masked = loss_with(ISCorrection("sequence_mask"), far)
    assert same["loss"] == pytest.approx(plain["loss"], abs=1e-7)
    assert same["rollout/is_ratio/mean"] == pytest.approx(1.0, abs=1e-5)
    assert plain["rollout/kl_sampler_learner"] == pytest.approx(0.0, abs=1e-6)
    assert masked["loss"] == 0.0 and masked["rollout/is_ratio/outside_frac"] == 1.0
    assert masked["rollout/kl_sampler_learner"] > 1.0


def test_weights_scale_the_policy_term_only(random_tiny_model, char_tokenizer):
    """With beta > 0, IS weights multiply the policy-gradient term and leave the KL penalty alone (TRL, verl).
    A sampler 5 nats below the learner on every token masks every row (sequence_mask), so the loss is exactly
    beta * token-mean(k3), k3 = exp(ref - logp) - (ref - logp) - 1, computed here from the two models' log-probs."""
    from rlpost.learner import batched_logprobs
    torch.manual_seed(0)
    ref = copy.deepcopy(random_tiny_model).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    beta = 0.3

    def run(corr, shift):
        model = copy.deepcopy(random_tiny_model).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        settings = LearnerSettings("grpo", ClipParams(), "token-mean", max_completion_length=3, max_grad_norm=0.0,
                                   vllm_is=corr, beta=beta, kl_estimator="k3")
        learner = Learner(model, opt, build_scheduler(opt, OptimConfig(), 1), settings, ref_model=ref)
        batch = _batch(char_tokenizer, 0.0)
        logp = batched_logprobs(model, batch, settings, False)[0]
        batch.sampler_logprobs = logp - shift
        adv = torch.tensor([[1.0], [-1.0], [1.0], [1.0]]).expand(4, 3) * batch.response_mask
        ref_lp = batched_logprobs(ref, batch, settings, False)[0]
        return learner.update(batch, adv, learner.prepare(batch)), logp, ref_lp, batch.response_mask

    metrics, logp, ref_lp, mask = run(ISCorrection("sequence_mask"), 5.0)
    d = ref_lp - logp
    k3 = (torch.exp(d) - d - 1.0) * mask
    expected = beta * (k3.sum() / mask.sum()).item()
    assert metrics["rollout/is_ratio/outside_frac"] == 1.0 and expected > 1e-4
    assert metrics["loss"] == pytest.approx(expected, rel=1e-4)
    assert metrics["kl"] == pytest.approx(expected / beta, rel=1e-4)
    # no correction: the policy term -token-mean(A * ratio) = -(1 - 1 + 1 + 1) / 4 = -0.5 at ratio 1, plus the KL
    plain, *_ = run(None, 0.0)
    assert plain["loss"] == pytest.approx(expected - 0.5, rel=1e-4)
