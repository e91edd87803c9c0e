"""optim.logprob_chunk_size (chunked LM head) and optim.padding_free (packed rows) give the plain path's values.

Tolerances: the chunked head computes the same matmuls row by row, so values are equal up to float32 rounding
(measured: 0 difference in log-probs, <= 4e-6 in gradients); packing changes the attention kernel's input layout
(one row, block-diagonal mask instead of padded rows), measured <= 3e-6 in log-probs and <= 8e-6 in gradients.
The tests allow 1e-4 (fp32).
"""
import copy
import random

import pytest
import torch

from rlpost.batch import collate
from rlpost.learner import FixedLogprobs, Learner, LearnerSettings, token_logprobs
from rlpost.types import Prompt, Sample, Trajectory

ATOL = 1e-4


def make_batch(vocab: int, n: int = 7, seed: int = 0):
    rng = random.Random(seed)
    trajs = []
    for i in range(n):
        P, C = rng.randint(2, 14), rng.randint(1, 10)
        s = Sample(prompt_ids=[rng.randrange(vocab) for _ in range(P)],
                   completion_ids=[rng.randrange(vocab) for _ in range(C)], logprobs=[-1.0] * C,
                   finish_reason="stop")
        s.loss_mask = [1] * C
        trajs.append(Trajectory(prompt=Prompt(id=i // 2, text="x"), group_id=i // 2, samples=[s], final_text="",
                                reward=float(rng.random())))
    return collate(trajs, 0)


@pytest.fixture(scope="module")
def model(random_tiny_model):
    return copy.deepcopy(random_tiny_model).float()


@pytest.mark.parametrize("kw", [dict(chunk_size=5), dict(chunk_size=1000), dict(packed=True),
                                dict(packed=True, chunk_size=3)])
def test_values_equal_plain_path(model, kw):
    batch = make_batch(model.config.vocab_size)
    mask = batch.response_mask.bool()
    with torch.no_grad():
        ref = token_logprobs(model, batch, 0.7, True, True)
        out = token_logprobs(model, batch, 0.7, True, True, **kw)
    assert len(out) == 3
    for o, r in zip(out, ref):
        assert o.shape == r.shape
        assert torch.allclose(o[mask], r[mask], atol=ATOL), float((o - r)[mask].abs().max())


@pytest.mark.parametrize("kw", [dict(chunk_size=4), dict(packed=True)])
def test_gradients_equal_plain_path(model, kw):
    batch = make_batch(model.config.vocab_size, seed=1)

    def grads(**k):
        model.zero_grad(set_to_none=True)
        lp, ent = token_logprobs(model, batch, 1.0, True, **k)
        ((lp + 0.1 * ent) * batch.response_mask).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}
    ref, out = grads(), grads(**kw)
    for name in ref:
        assert torch.allclose(out[name], ref[name], atol=ATOL), name


def test_chunked_head_with_lora_on_the_head(model):
    """A peft adapter on lm_head (tied to the embeddings) is part of the chunked head, and the adapter-disabled
    reference view computes base-model values."""
    from peft import LoraConfig, get_peft_model

    from rlpost.models.lora import AdapterDisabledView
    base = copy.deepcopy(model)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "lm_head"],
                                                                 init_lora_weights=False))
    batch = make_batch(model.config.vocab_size, seed=2)
    mask = batch.response_mask.bool()
    with torch.no_grad():
        ref = token_logprobs(peft_model, batch, 1.0, False)[0]
        out = token_logprobs(peft_model, batch, 1.0, False, chunk_size=6)[0]
        assert torch.allclose(out[mask], ref[mask], atol=ATOL)
        view = AdapterDisabledView(peft_model)
        base_lp = token_logprobs(base, batch, 1.0, False)[0]
        for kw in ({}, dict(chunk_size=6), dict(packed=True)):
            assert torch.allclose(token_logprobs(view, batch, 1.0, False, **kw)[0][mask], base_lp[mask], atol=ATOL)
        assert not torch.allclose(ref[mask], base_lp[mask], atol=1e-3)  # the adapter does change the policy


def test_unknown_logit_transform_is_refused(model):
    m = copy.deepcopy(model)
    m.config.final_logit_softcapping = None
    batch = make_batch(m.config.vocab_size, seed=3)
    orig = type(m).forward

    def forward(self, *a, **k):  # a model whose forward transforms logits in an undeclared way
        out = orig(self, *a, **k)
        out.logits = out.logits * 2.0
        return out
    m.forward = forward.__get__(m)
    from rlpost import logprobs
    logprobs._checked.discard(m)
    with pytest.raises(NotImplementedError, match="logprob_chunk_size"):
        token_logprobs(m, batch, 1.0, False, chunk_size=4)


def test_learner_update_equal_with_lean_options(model):
    """A full learner update (token-mean GRPO, two micro-batches) gives the same loss, grad norm and weights."""
    batch = make_batch(model.config.vocab_size, n=8, seed=4)
    adv = torch.randn(len(batch))[:, None] * batch.response_mask  # per-token advantages [B,T]

    def run(**opts):
        m = copy.deepcopy(model).train()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        from rlpost.algos import POLICY_LOSSES, build_params
        entry = POLICY_LOSSES.entry("grpo")
        settings = LearnerSettings(loss_name="grpo", loss_params=build_params(entry.params, None, {}, where="t"),
                                   loss_agg="token-mean", max_completion_length=16, micro_batch_size=3, **opts)
        learner = Learner(m, opt, sched, settings)
        metrics = learner.update(batch, adv, FixedLogprobs())
        return metrics, m
    ref_m, ref_model = run()
    for opts in (dict(logprob_chunk_size=5), dict(padding_free=True)):
        m, mod = run(**opts)
        assert m["loss"] == pytest.approx(ref_m["loss"], abs=1e-6)
        assert m["grad_norm"] == pytest.approx(ref_m["grad_norm"], rel=1e-4)
        for (n, a), b in zip(ref_model.named_parameters(), mod.parameters()):
            assert torch.allclose(a, b, atol=1e-5), n
