"""Tiny models and the char tokenizer: save_pretrained / from_pretrained round trips, warm-start band."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlpost.models.tiny import TinySpec, build_model, parse_tiny_ref
from rlpost.models.tokenizer import build_char_tokenizer

TEXT = "12 + 34 = ?\nok"
ROOT = Path(__file__).resolve().parents[2]


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


SHIPPED = [("qwen2", "arithmetic", 0.20, 0.30), ("llama", "arithmetic", 0.20, 0.30), ("qwen2", "countdown", 0.10, 0.20)]


@pytest.mark.parametrize("arch, task, low, high", SHIPPED)
def test_tiny_refs_load_the_shipped_checkpoints_without_building(arch, task, low, high, tmp_path, monkeypatch):
    """tiny:<arch>:<task> is the committed folder (safetensors + tokenizer + card), whatever the cache holds:
    nothing warm-starts, so every machine starts from the same bits."""
    import rlpost.models.tiny as tiny
    monkeypatch.setenv("RLPOST_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(tiny, "make_tiny", lambda *a, **k: pytest.fail("a shipped tiny model was rebuilt"))
    path = tiny.ensure_tiny(f"tiny:{arch}:{task}")
    assert path == tiny.SHIPPED_DIR / f"{arch}-{task}"
    assert {"model.safetensors", "config.json", "tokenizer.json", "CARD.md"} <= {p.name for p in path.iterdir()}
    info = json.loads((path / "rlpost_tiny.json").read_text())
    assert info["spec"]["arch"] == arch and info["spec"]["task"] == task
    assert low <= info["held_out_accuracy"] <= high and (info["spec"]["acc_low"], info["spec"]["acc_high"]) == (low, high)
    assert f"{info['held_out_accuracy']:.3f}" in (path / "CARD.md").read_text()
    assert AutoModelForCausalLM.from_pretrained(path).config.model_type == arch
    assert not (tmp_path / "empty-cache").exists()


def test_other_seeds_and_sizes_are_not_the_shipped_checkpoint():
    from rlpost.models.tiny import shipped_checkpoint
    assert shipped_checkpoint(TinySpec()) is not None
    assert shipped_checkpoint(TinySpec(seed=1)) is None
    assert shipped_checkpoint(TinySpec(hidden_size=64, num_heads=2)) is None


def test_warm_start_stops_at_the_first_evaluation_inside_the_band(monkeypatch):
    """The stopping rule: evaluate every ``eval_every`` steps, stop at the first accuracy in [acc_low, acc_high]
    (a trajectory that differs in the last bit still stops inside the band)."""
    import rlpost.models.tiny as tiny
    accs = iter([0.05, 0.12, 0.19, 0.24, 0.27])
    seen = []

    def fake_accuracy(*args, **kwargs):
        seen.append(1)
        return next(accs)
    monkeypatch.setattr(tiny, "greedy_accuracy", fake_accuracy)
    tok = build_char_tokenizer()
    spec = TinySpec(hidden_size=64, num_heads=2, num_kv_heads=1, intermediate_size=64, eval_every=2, batch_size=4)
    model = build_model(spec, len(tok), tok.eos_token_id, tok.pad_token_id)
    stats = tiny.warm_start(model, tok, spec)
    assert (stats["sft_steps"], stats["held_out_accuracy"], len(seen)) == (8, 0.24, 4)
    with pytest.raises(RuntimeError, match="never entered"):
        monkeypatch.setattr(tiny, "greedy_accuracy", lambda *a, **k: 0.5)
        tiny.warm_start(model, tok, TinySpec(hidden_size=64, num_heads=2, num_kv_heads=1, intermediate_size=64,
                                             eval_every=2, batch_size=4, max_sft_steps=4))


def test_the_builder_checks_answers_without_importing_rewards():
    """The tiny-model builder scores its warm start with rlpost.tasks' checkers; the reward layer stays out."""
    assert "rlpost.rewards" not in (ROOT / "rlpost" / "models" / "tiny.py").read_text()
    code = "\n".join([
        "import sys, torch",
        "from rlpost.models.tiny import TinySpec, build_model, greedy_accuracy",
        "from rlpost.models.tokenizer import build_char_tokenizer",
        "tok = build_char_tokenizer()",
        "torch.manual_seed(0)",
        "model = build_model(TinySpec(hidden_size=64, num_heads=2, num_kv_heads=1, intermediate_size=64), len(tok),",
        "                    tok.eos_token_id, tok.pad_token_id).eval()",
        "acc = greedy_accuracy(model, tok, [{'prompt': '1+2=', 'answer': '3'}], 'arithmetic', max_new_tokens=2)",
        "print(0.0 <= acc <= 1.0, sorted(m for m in sys.modules if m.startswith('rlpost.rewards')))"])
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "True []"


@pytest.mark.parametrize("task, script", [("apr_countdown", "apr_pretrain.py"), ("a2fm_mini", "a2fm_pretrain.py")])
def test_the_apr_and_a2fm_checkpoints_are_shipped_and_other_seeds_say_how_to_build_one(task, script):
    import rlpost.models.tiny as tiny
    path = tiny.ensure_tiny(f"tiny:llama:{task}")
    assert path == tiny.SHIPPED_DIR / f"llama-{task}" and (path / "CARD.md").exists()
    info = json.loads((path / "rlpost_study.json").read_text())
    assert info["sft"]["sft_steps"] > 1000 and len(info["sft"]["stages"]) == 2
    assert AutoModelForCausalLM.from_pretrained(path).config.model_type == "llama"
    with pytest.raises(ValueError, match=f"scripts/{script}"):
        tiny.ensure_tiny(f"tiny:llama:{task}:1")
