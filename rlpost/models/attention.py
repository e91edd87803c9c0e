"""``sdpa_gqa``: transformers' sdpa attention, with grouped-query attention left to the kernel on CPU.

For a grouped-query model (fewer key/value heads than query heads, as in Qwen2 and LLaMA 3) transformers' sdpa
path copies the key/value heads up to the query heads (``repeat_kv``) whenever an attention mask is passed,
because CUDA's fused kernels cannot take a mask together with ``enable_gqa``. On CPU torch's sdpa takes both and
returns the same values without the copy. rlpost's left-padded rollouts and padded learner passes always carry a
mask, so on CPU the copy is the common case: per layer call at 64 rows x 200 keys (4 query / 2 key-value heads,
head dim 32) 0.49 ms with ``enable_gqa`` against 2.06 ms with the copy, identical outputs.

:func:`use_on_cpu` switches a loaded CPU model from ``sdpa`` to this implementation (registered under the name
``sdpa_gqa`` with sdpa's mask function); every call that is not the masked-GQA-on-CPU case goes to transformers'
own sdpa function unchanged. The choice is not saved with the model (transformers does not write
``_attn_implementation`` to config.json), so saved models load anywhere as before.
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_gqa"


def sdpa_gqa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     is_causal=None, **kwargs):
    """softmax(q k^T * scaling + mask) v with key/value head g serving query heads g*G .. g*G + G - 1."""
    groups = getattr(module, "num_key_value_groups", 1)
    special = kwargs.get("position_bias") is not None or kwargs.get("cache") is not None or kwargs.get("output_attentions")
    if query.device.type != "cpu" or groups <= 1 or attention_mask is None or special:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, sdpa_gqa_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_on_cpu(model) -> bool:
    """Switch ``model`` to ``sdpa_gqa`` when it runs sdpa on CPU with grouped-query attention; True if switched."""
    cfg = model.config
    heads, kv_heads = getattr(cfg, "num_attention_heads", None), getattr(cfg, "num_key_value_heads", None)
    on_cpu = next(model.parameters()).device.type == "cpu"
    if not (on_cpu and cfg._attn_implementation == "sdpa" and heads and kv_heads and kv_heads < heads):
        return False
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME
