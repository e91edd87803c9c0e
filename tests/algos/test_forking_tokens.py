"""algo.top_entropy_quantile (rlpost/algos/forking_tokens.py) against hand-computed numbers, and in the learner."""
import copy

import pytest
import torch

from rlpost.algos.forking_tokens import high_entropy_mask
from rlpost.algos.losses import ClipParams
from rlpost.batch import collate
from rlpost.config import ConfigError, OptimConfig, load_config
from rlpost.learner import Learner, LearnerSettings, build_scheduler
from rlpost.types import Prompt, Sample, Trajectory


def test_mask_by_hand():
    # response entropies 0.1 0.5 0.9 | 0.3 0.7 (the 6th position is padding)
    H = torch.tensor([[0.1, 0.5, 0.9], [0.3, 0.7, 5.0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    # rho 0.4: tau = 0.6-quantile of sorted (0.1 0.3 0.5 0.7 0.9): index 0.6 * 4 = 2.4 -> 0.5 + 0.4 * 0.2 = 0.58
    assert high_entropy_mask(H, mask, 0.4).tolist() == [[0, 0, 1], [0, 1, 0]]
    # rho 0.8: tau at index 0.8 -> 0.1 + 0.8 * 0.2 = 0.26: everything but 0.1; padding never kept
    assert high_entropy_mask(H, mask, 0.8).tolist() == [[0, 1, 1], [1, 1, 0]]
    assert high_entropy_mask(H, mask, 1.0).tolist() == mask.tolist()
    # ties: equal entropies are all >= tau
    assert high_entropy_mask(torch.ones(2, 3), mask, 0.2).tolist() == mask.tolist()


def _batch(tok, n=8):
    g = torch.Generator().manual_seed(0)
    trajs = []
    for i in range(n):
        prompt = tok(f"{i}+3=", add_special_tokens=False)["input_ids"]
        comp = torch.randint(5, 60, (2 + i % 4,), generator=g).tolist()
        trajs.append(Trajectory(Prompt(i // 4, "p"), group_id=i // 4, final_text="", reward=float(i % 3),
                                samples=[Sample(prompt_ids=prompt, completion_ids=comp, logprobs=[-1.0] * len(comp))]))
    return collate(trajs, tok.pad_token_id)


def _grads(model, batch, adv, rho, micro):
    model = copy.deepcopy(model).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    settings = LearnerSettings("grpo", ClipParams(), "token-mean", max_completion_length=8, micro_batch_size=micro,
                               max_grad_norm=0.0, top_entropy_quantile=rho)
    learner = Learner(model, opt, build_scheduler(opt, OptimConfig(), 1), settings)
    captured = {}
    opt.step = lambda *a, **k: captured.update({n: p.grad.clone() for n, p in model.named_parameters()})
    fixed = learner.prepare(batch)
    metrics = learner.update(batch, adv, fixed)
    return captured, fixed, metrics


def test_learner_masks_the_policy_term_and_is_micro_batch_invariant(random_tiny_model, char_tokenizer):
    """At the first iteration (ratio 1, no clipping) the GRPO loss is linear in A, so masking the loss equals
    zeroing the advantages of the dropped tokens with rho = 1; and the selection does not depend on micro-batches."""
    batch = _batch(char_tokenizer)
    adv = torch.randn(batch.response_mask.shape, generator=torch.Generator().manual_seed(1)) * batch.response_mask
    masked, fixed, metrics = _grads(random_tiny_model, batch, adv, 0.3, micro=8)
    keep = fixed.entropy_mask
    assert 0 < keep.sum() < batch.response_mask.sum()
    assert metrics["policy/entropy_mask_frac"] == pytest.approx(float(keep.sum() / batch.response_mask.sum()), abs=1e-6)
    zeroed, _, _ = _grads(random_tiny_model, batch, adv * keep, 1.0, micro=8)
    small_micro, _, _ = _grads(random_tiny_model, batch, adv, 0.3, micro=3)
    for name in masked:
        assert torch.allclose(masked[name], zeroed[name], atol=1e-6), name
        assert torch.allclose(masked[name], small_micro[name], atol=1e-6), name
    assert any(not torch.allclose(masked[n], _grads(random_tiny_model, batch, adv, 1.0, 8)[0][n]) for n in masked)


def test_config_names_and_bounds():
    cfg = load_config(None, ["top_entropy_quantile=0.2"])
    assert cfg.algo.top_entropy_quantile == 0.2
    with pytest.raises(ConfigError, match="algo.top_entropy_quantile must be in"):
        load_config(None, ["algo.top_entropy_quantile=0"])
    with pytest.raises(ConfigError, match="single-process"):
        load_config(None, ["algo.top_entropy_quantile=0.5", "distributed.backend=ddp"])
