"""optim.shared_prefix: one pass per distinct prompt gives the plain path's log-probs and gradients.

Measured on the random tiny Qwen2 (fp32, 5 seeds): log-prob differences <= 5e-7, gradient differences <= 3e-6; the
tests allow 1e-4.
"""
import copy
import logging
import random

import pytest
import torch

from rlpost import shared_prefix as sp
from rlpost.algos.losses import ClipParams
from rlpost.batch import collate
from rlpost.engines.base import GenRequest, SamplingParams
from rlpost.engines.hf import HFEngine
from rlpost.learner import Learner, LearnerSettings, token_logprobs
from rlpost.types import Prompt, Sample, Trajectory

ATOL = 1e-4


def grouped_batch(vocab: int, groups: int = 3, n: int = 4, seed: int = 0):
    """``groups`` prompts of different lengths, ``n`` completions of different lengths each (rows interleaved)."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(3, 12))] for _ in range(groups)]
    trajs = []
    for k in range(n):
        for g, prompt in enumerate(prompts):
            C = rng.randint(1, 9)
            s = Sample(prompt_ids=list(prompt), completion_ids=[rng.randrange(3, vocab) for _ in range(C)],
                       logprobs=[-1.0] * C, finish_reason="stop")
            s.loss_mask = [1] * C
            trajs.append(Trajectory(prompt=Prompt(id=g, text="x"), group_id=g, samples=[s], final_text="",
                                    reward=float(rng.random())))
    return collate(trajs, 0)


@pytest.fixture()
def model(random_tiny_model):
    return copy.deepcopy(random_tiny_model).float()


def test_prompt_owners_groups_equal_prompts():
    batch = grouped_batch(60, groups=3, n=2)
    owners, first = sp.prompt_owners(batch)
    assert owners.tolist() == [0, 1, 2, 0, 1, 2]
    assert first == [0, 1, 2]
    assert sp.sharing(batch)[1] == [0, 1, 2]
    assert sp.sharing(batch.select(torch.tensor([0, 1, 2]))) is None  # every prompt once: plain pass


def test_values_equal_plain_path(model):
    batch = grouped_batch(model.config.vocab_size)
    mask = batch.response_mask.bool()
    with torch.no_grad():
        ref = token_logprobs(model, batch, 0.7, True, True)
        out = token_logprobs(model, batch, 0.7, True, True, shared_prefix=True)
    for o, r in zip(out, ref):
        assert o.shape == r.shape
        assert torch.allclose(o[mask], r[mask], atol=ATOL), float((o - r)[mask].abs().max())


def test_completion_logits_differ_from_a_wrong_alignment(model):
    """The check above can fail: shifting the completion positions by one changes the values."""
    batch = grouped_batch(model.config.vocab_size, seed=3)
    with torch.no_grad():
        good = sp.completion_logits(model, batch)
        batch.prompt_lengths = batch.prompt_lengths + 1  # positions (and prompt keys) off by one
        bad = sp.completion_logits(model, batch)
    assert (good - bad).abs().max() > 1e-2


def test_gradients_equal_plain_path(model):
    batch = grouped_batch(model.config.vocab_size, seed=1)

    def grads(**k):
        model.zero_grad(set_to_none=True)
        lp, ent = token_logprobs(model, batch, 1.0, True, **k)
        ((lp + 0.1 * ent) * batch.response_mask).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}
    ref, out = grads(), grads(shared_prefix=True)
    for name in ref:
        assert torch.allclose(out[name], ref[name], atol=ATOL), name


def test_lora_policy_and_adapter_disabled_reference(model):
    from peft import LoraConfig, get_peft_model

    from rlpost.models.lora import AdapterDisabledView
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                 init_lora_weights=False))
    batch = grouped_batch(model.config.vocab_size, seed=2)
    mask = batch.response_mask.bool()
    with torch.no_grad():
        for m in (peft_model, AdapterDisabledView(peft_model)):
            ref = token_logprobs(m, batch, 1.0, False)[0]
            out = token_logprobs(m, batch, 1.0, False, shared_prefix=True)[0]
            assert torch.allclose(out[mask], ref[mask], atol=ATOL)
        base = token_logprobs(model, batch, 1.0, False)[0]
        assert torch.allclose(token_logprobs(AdapterDisabledView(peft_model), batch, 1.0, False, shared_prefix=True)[0][mask],
                              base[mask], atol=ATOL)


def test_disagreeing_cache_falls_back_to_the_plain_path(model, monkeypatch, caplog):
    batch = grouped_batch(model.config.vocab_size, seed=4)
    real = sp.completion_logits
    monkeypatch.setattr(sp, "completion_logits", lambda m, b, *rest: real(m, b, *rest) * 1.5)  # wrong numbers
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        ref = token_logprobs(model, batch, 1.0, False)[0]
        out = token_logprobs(model, batch, 1.0, False, shared_prefix=True)[0]
    assert torch.equal(out, ref)
    assert "optim.shared_prefix" in caplog.text and "Qwen2ForCausalLM" in caplog.text
    assert not sp.usable(model)


def test_gradient_checkpointing_uses_the_plain_path(model):
    model.gradient_checkpointing_enable()
    assert not sp.usable(model)


def test_micro_batches_keep_a_prompts_rows_together_and_match_the_plain_update(model):
    batch = grouped_batch(model.config.vocab_size, groups=4, n=4, seed=5)
    adv = torch.randn(batch.response_mask.shape, generator=torch.Generator().manual_seed(1)) * batch.response_mask

    def update(shared: bool):
        m = copy.deepcopy(model).train()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        settings = LearnerSettings(loss_name="grpo", loss_params=ClipParams(), loss_agg="token-mean", max_completion_length=16,
                                   micro_batch_size=4, shared_prefix=shared)
        learner = Learner(m, opt, sched, settings)
        if shared:
            order = learner._micro_batch_order(batch, torch.arange(len(batch)))
            owners = sp.prompt_owners(batch)[0][order]
            assert all(len(set(owners[i:i + 4].tolist())) == 1 for i in range(0, len(batch), 4))
        metrics = learner.update(batch, adv, learner.prepare(batch))
        return metrics, dict(m.named_parameters())
    (m_plain, p_plain), (m_shared, p_shared) = update(False), update(True)
    assert abs(m_plain["loss"] - m_shared["loss"]) < 1e-5
    assert abs(m_plain["grad_norm"] - m_shared["grad_norm"]) < 1e-4 * max(1.0, m_plain["grad_norm"])
    for name, p in p_plain.items():
        assert torch.allclose(p, p_shared[name], atol=1e-5), name


def test_engine_repeats_a_prompts_prefill_for_its_samples(random_tiny_model, char_tokenizer):
    """Greedy samples of a prompt (one prefill, cache rows repeated) equal a lone greedy sample of it."""
    engine = HFEngine(random_tiny_model, char_tokenizer)
    prompts = [char_tokenizer.encode("12+3="), char_tokenizer.encode("7*81-4=")]
    params = dict(temperature=0.0, max_tokens=6, seed=0)
    together = engine.generate([GenRequest(p) for p in prompts], SamplingParams(n=3, **params))
    for i, p in enumerate(prompts):
        alone = engine.generate([GenRequest(p)], SamplingParams(n=1, **params))[0]
        for s in together[3 * i:3 * i + 3]:
            assert s.prompt_ids == p
            assert s.completion_ids == alone.completion_ids
            assert s.logprobs == pytest.approx(alone.logprobs, abs=1e-5)


def test_bench_script_reports_agreement_and_speed(tmp_path):
    """scripts/bench_shared_prefix.py end to end on the tiny model (CPU): tiny gaps, both timings printed."""
    import re
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "scripts/bench_shared_prefix.py"), "--groups", "2", "--n", "4",
                           "--prompt-len", "24", "--completion-len", "8", "--repeats", "1"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gaps = re.search(r"log-prob difference\| ([\d.e+-]+); max relative gradient difference \(per tensor\) ([\d.e+-]+)",
                     proc.stdout)
    assert gaps and float(gaps.group(1)) < 1e-4 and float(gaps.group(2)) < 1e-4, proc.stdout
    assert re.search(r"plain [\d.]+ ms, shared prefix [\d.]+ ms, speed-up [\d.]+x", proc.stdout), proc.stdout


def test_length_buckets_by_hand():
    lengths = torch.tensor([9, 1, 2, 8, 1, 3, 7, 2])
    # padded to 9: 72 tokens for 33 real ones (39 wasted, 54%) -> 4 equal-count runs of the length-sorted rows
    assert [b.tolist() for b in sp.length_buckets(lengths, min_waste_tokens=13)] == [[1, 4], [2, 7], [5, 6], [3, 0]]
    assert len(sp.length_buckets(lengths, min_waste_tokens=14)) == 1             # 39 < 14 x 3 extra passes
    assert len(sp.length_buckets(lengths)) == 1                                  # default: >= 256 per extra pass
    assert len(sp.length_buckets(torch.tensor([5, 5, 5, 4, 5, 5, 5, 5]), min_waste_tokens=0)) == 1  # 2.5% waste
    assert len(sp.length_buckets(torch.tensor([9, 1, 2]), min_waste_tokens=0)) == 1  # too few rows to split


def test_length_buckets_give_the_plain_values_and_gradients(model, monkeypatch):
    """Completion lengths 1..9 in 24 rows: the bucketed pass runs (counted) and matches the plain one."""
    batch = grouped_batch(model.config.vocab_size, groups=3, n=8, seed=6)
    calls = []
    real, real_buckets = sp._select_rows, sp.length_buckets
    monkeypatch.setattr(sp, "_select_rows", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(sp, "length_buckets", lambda lengths: real_buckets(lengths, min_waste_tokens=0))  # tiny batch
    mask = batch.response_mask.bool()

    def run(**k):
        model.zero_grad(set_to_none=True)
        lp, ent = token_logprobs(model, batch, 1.0, True, **k)
        ((lp + 0.1 * ent) * batch.response_mask).sum().backward()
        return lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    (ref_lp, ref_g), (lp, g) = run(), run(shared_prefix=True)
    assert len(calls) >= 2
    assert torch.allclose(lp[mask], ref_lp[mask], atol=ATOL)
    for name in ref_g:
        assert torch.allclose(g[name], ref_g[name], atol=ATOL), name


def test_a_forward_that_cannot_take_the_cache_falls_back(model, monkeypatch, caplog):
    batch = grouped_batch(model.config.vocab_size, seed=7)

    def no_cache(*a, **k):
        raise TypeError("forward() got an unexpected keyword argument 'past_key_values'")
    monkeypatch.setattr(sp, "completion_logits", no_cache)
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        ref = token_logprobs(model, batch, 1.0, False)[0]
        out = token_logprobs(model, batch, 1.0, False, shared_prefix=True)[0]
    assert torch.equal(out, ref) and "cannot run the shared-prefix pass" in caplog.text and not sp.usable(model)
