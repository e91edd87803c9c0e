"""rlpost/models/attention.py: sdpa_gqa gives sdpa's values on CPU without copying K/V heads, and is not saved."""
import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlpost.models import attention


@pytest.fixture()
def pair(tiny_model_path):
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    gqa = copy.deepcopy(plain)
    assert plain.config.num_key_value_heads < plain.config.num_attention_heads  # the tiny model is GQA
    assert attention.use_on_cpu(gqa) and gqa.config._attn_implementation == "sdpa_gqa"
    assert plain.config._attn_implementation == "sdpa"
    return plain, gqa


def test_values_and_gradients_equal_sdpa_with_left_padding(pair):
    plain, gqa = pair
    ids = torch.randint(3, plain.config.vocab_size, (5, 17), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[:2, :6] = 0  # left padding: the masked path, where sdpa would repeat the K/V heads
    out = []
    for m in (plain, gqa):
        m.zero_grad(set_to_none=True)
        logits = m(input_ids=ids, attention_mask=mask).logits
        (logits[mask.bool()].logsumexp(-1).sum()).backward()
        out.append((logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    (la, ga), (lb, gb) = out
    assert torch.allclose(la[mask.bool()], lb[mask.bool()], atol=1e-5)
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-5), name


def test_the_forward_goes_through_the_gqa_kernel_call(pair, monkeypatch):
    """The masked CPU call uses enable_gqa (not transformers' repeat_kv copy), so the test above compares two paths."""
    _, gqa = pair
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(k.get("enable_gqa")) or real(*a, **k))
    ids = torch.randint(3, 50, (2, 9))
    gqa(input_ids=ids, attention_mask=torch.tensor([[0, 0] + [1] * 7, [1] * 9]))
    assert calls and all(calls)


def test_not_saved_with_the_model(pair, tmp_path):
    _, gqa = pair
    gqa.save_pretrained(tmp_path)
    assert "sdpa_gqa" not in (tmp_path / "config.json").read_text()
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config._attn_implementation == "sdpa"
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "qwen2"


def test_only_cpu_sdpa_gqa_models_switch(tiny_model_path):
    eager = AutoModelForCausalLM.from_pretrained(tiny_model_path, attn_implementation="eager")
    assert not attention.use_on_cpu(eager) and eager.config._attn_implementation == "eager"
