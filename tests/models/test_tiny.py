"""Tiny models and the char tokenizer: save_pretrained / from_pretrained round trips, warm-start band."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlpost.models.tiny import TinySpec, build_model, parse_tiny_ref
from rlpost.models.tokenizer import build_char_tokenizer

TEXT = "12 + 34 = ?\nok"


@pytest.mark.parametrize("arch, model_type", [("qwen2", "qwen2"), ("llama", "llama")])
def test_tiny_model_and_tokenizer_round_trip(tmp_path, arch, model_type):
    tok = build_char_tokenizer()
    model = build_model(TinySpec(arch=arch, hidden_size=64, num_heads=2, num_kv_heads=1), len(tok),
                        tok.eos_token_id, tok.pad_token_id)
    assert model.config.hidden_size // model.config.num_attention_heads >= 32  # vLLM on CPU needs head_dim >= 32
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)  # qwen2 folders load as Qwen2Tokenizer in transformers 5
    chat = tok.apply_chat_template([{"role": "user", "content": TEXT}], tokenize=False, add_generation_prompt=True)
    assert tok2(chat, add_special_tokens=False)["input_ids"] == tok(chat, add_special_tokens=False)["input_ids"]
    assert tok2.decode(tok2(TEXT)["input_ids"]) == TEXT  # spaces and newlines survive
    assert tok2.eos_token == "<|im_end|>" and tok2.pad_token == "<|endoftext|>"
    model2 = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.tensor([tok(chat)["input_ids"]])
    assert model2.config.model_type == model_type
    assert torch.allclose(model(ids).logits, model2(ids).logits)


def test_head_dim_and_refs_are_validated():
    with pytest.raises(ValueError, match="head_dim"):
        build_model(TinySpec(hidden_size=64, num_heads=4), 100, 2, 0)
    with pytest.raises(ValueError, match="arch must be"):
        build_model(TinySpec(arch="gpt2"), 100, 2, 0)
    assert parse_tiny_ref("tiny:llama:countdown:3") == TinySpec(arch="llama", task="countdown", seed=3)
    with pytest.raises(ValueError, match="tiny:<qwen2|llama>"):
        parse_tiny_ref("tiny:qwen2")


def test_warm_started_model_is_in_the_band(tiny_model_path):
    info = json.loads((tiny_model_path / "rlpost_tiny.json").read_text())
    assert 0.10 <= info["held_out_accuracy"] <= 0.50
    assert info["spec"]["arch"] == "qwen2"
