"""Context windows of public models that rlpost's recipes name, so that ``rlpost validate`` can refuse a length
the model cannot hold before anything is downloaded (vLLM refuses such a ``max_model_len`` only at start-up, after
the weights are loaded; the hf engine silently runs past the trained positions).

Each value is the ``max_position_embeddings`` (``n_positions`` for GPT-2) of the model's ``config.json`` on the hub.
A config may extend the window with ``model.model_init_kwargs``: ``max_position_embeddings`` replaces the value,
``rope_scaling: {factor: f}`` (YaRN / linear / dynamic) multiplies it, as transformers and vLLM read them.
"""
from __future__ import annotations

CONTEXT_WINDOWS: dict[str, int] = {
    "Qwen/Qwen2.5-Math-1.5B": 4096,
    "Qwen/Qwen2.5-Math-1.5B-Instruct": 4096,
    "starriver030515/Qwen2.5-Math-1.5B-16k": 16384,   # HAPO's context-extended copy (recipes/hapo/README.md)
    "Qwen/Qwen2.5-Math-7B": 4096,
    "Qwen/Qwen2.5-Math-7B-Instruct": 4096,
    "Qwen/Qwen2.5-0.5B-Instruct": 32768,
    "Qwen/Qwen2.5-1.5B-Instruct": 32768,
    "Qwen/Qwen2.5-7B-Instruct": 32768,
    "Qwen/Qwen2.5-32B-Instruct": 32768,
    "Qwen/Qwen2.5-7B": 131072,
    "Qwen/Qwen3-4B-Base": 32768,
    "Qwen/Qwen3-8B-Base": 32768,
    "meta-llama/Meta-Llama-3-8B": 8192,
    "meta-llama/Meta-Llama-3-8B-Instruct": 8192,
    "mistralai/Mistral-7B-v0.1": 32768,
    "gpt2": 1024,
}


def context_window(name_or_path: str, model_init_kwargs: dict | None = None) -> int | None:
    """Tokens the named model attends to, after the config's own extension; None for a model not in the table."""
    window = CONTEXT_WINDOWS.get(name_or_path)
    if window is None:
        return None
    kwargs = model_init_kwargs or {}
    window = int(kwargs.get("max_position_embeddings") or window)
    scaling = kwargs.get("rope_scaling") or {}
    if isinstance(scaling, dict) and scaling.get("factor"):
        window = int(window * float(scaling["factor"]))
    return window
