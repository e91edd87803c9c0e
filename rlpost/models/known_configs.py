"""Architecture fields of the public models rlpost's recipes name, so that ``rlpost doctor`` can size a run (memory,
disk) where the model's own ``config.json`` cannot be read: no hub access (HF_HUB_OFFLINE, no network) and not in
the local cache.

Each entry copies the size-determining fields of the model's ``config.json`` on the hub (model_type, hidden size,
layers, MLP width, attention and KV heads, head_dim where it is not hidden / heads, vocabulary, tied embeddings);
transformers builds the model from them on the meta device, so the parameter count is exact, not a formula
(tests/test_doctor.py checks each against the count its model card publishes).
"""
from __future__ import annotations

_QWEN25_1_5B = dict(model_type="qwen2", hidden_size=1536, num_hidden_layers=28, intermediate_size=8960,
                    num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
_QWEN25_7B = dict(model_type="qwen2", hidden_size=3584, num_hidden_layers=28, intermediate_size=18944,
                  num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)
_LLAMA3_8B = dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, intermediate_size=14336,
                  num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)

KNOWN_CONFIGS: dict[str, dict] = {
    "Qwen/Qwen2.5-0.5B-Instruct": dict(model_type="qwen2", hidden_size=896, num_hidden_layers=24,
                                       intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                                       vocab_size=151936, tie_word_embeddings=True),
    "Qwen/Qwen2.5-1.5B-Instruct": _QWEN25_1_5B,
    "Qwen/Qwen2.5-Math-1.5B": _QWEN25_1_5B,
    "Qwen/Qwen2.5-Math-1.5B-Instruct": _QWEN25_1_5B,
    "starriver030515/Qwen2.5-Math-1.5B-16k": _QWEN25_1_5B,   # HAPO's context-extended copy: same weights' shapes
    "Qwen/Qwen2.5-7B": _QWEN25_7B,
    "Qwen/Qwen2.5-7B-Instruct": _QWEN25_7B,
    "Qwen/Qwen2.5-Math-7B": _QWEN25_7B,
    "Qwen/Qwen2.5-Math-7B-Instruct": _QWEN25_7B,
    "Qwen/Qwen2.5-32B-Instruct": dict(model_type="qwen2", hidden_size=5120, num_hidden_layers=64,
                                      intermediate_size=27648, num_attention_heads=40, num_key_value_heads=8,
                                      vocab_size=152064, tie_word_embeddings=False),
    "Qwen/Qwen3-4B-Base": dict(model_type="qwen3", hidden_size=2560, num_hidden_layers=36, intermediate_size=9728,
                               num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                               tie_word_embeddings=True),
    "Qwen/Qwen3-8B-Base": dict(model_type="qwen3", hidden_size=4096, num_hidden_layers=36, intermediate_size=12288,
                               num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                               tie_word_embeddings=False),
    "meta-llama/Meta-Llama-3-8B": _LLAMA3_8B,
    "meta-llama/Meta-Llama-3-8B-Instruct": _LLAMA3_8B,
    "mistralai/Mistral-7B-v0.1": dict(model_type="mistral", hidden_size=4096, num_hidden_layers=32,
                                      intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                                      vocab_size=32000, tie_word_embeddings=False),
    "gpt2": dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024),
}


def known_config(name_or_path: str):
    """A transformers config with the named model's architecture fields, or None for a model not in the table."""
    fields = KNOWN_CONFIGS.get(name_or_path)
    if fields is None:
        return None
    from transformers import AutoConfig
    fields = dict(fields)
    return AutoConfig.for_model(fields.pop("model_type"), **fields)
