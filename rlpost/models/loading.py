"""Load any HF causal LM and tokenizer through ``from_pretrained`` (tiny models included)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def resolve_model_path(model_cfg) -> str:
    """``tiny:...`` refs are built/cached on demand; anything else goes to from_pretrained as is."""
    return resolve_model_ref(model_cfg.name_or_path)


def resolve_model_ref(ref: str, key: str = "model.name_or_path") -> str:
    """A model reference as from_pretrained takes it (``tiny:...`` refs resolved to their folder); a ConfigError
    naming ``key`` when it is a local path that does not exist (it starts with / . ~ or has more than one '/', which
    no hub id has)."""
    if ref.startswith("tiny:"):
        from rlpost.models.tiny import ensure_tiny
        return str(ensure_tiny(ref))
    if (ref.startswith(("/", "./", "../", "~")) or ref.count("/") > 1) and not Path(ref).expanduser().exists():
        from rlpost.config import ConfigError
        raise ConfigError(f"{key}: no such folder {ref!r} (a local path; hub ids look like 'org/name')")
    return ref


@contextmanager
def model_ref_errors(ref: str, key: str = "model.name_or_path"):
    """from_pretrained's OSError (not a local folder, not on the hub or not in the offline cache) as a ConfigError
    naming ``key`` and ``ref``: bad input, reported in one line."""
    try:
        yield
    except OSError as err:
        from rlpost.config import ConfigError
        reason = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise ConfigError(f"{key}: cannot load {ref!r} ({reason})") from err


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_tokenizer(path: str, model_cfg):
    with model_ref_errors(path):
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code,
                                            revision=model_cfg.revision)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(path: str, model_cfg, device: str = "auto", frozen: bool = False):
    kwargs = dict(model_cfg.model_init_kwargs)
    kwargs.setdefault("dtype", _DTYPES[model_cfg.dtype])
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    from rlpost.models.lora import lora_enabled, quantization_kwargs
    quant = quantization_kwargs(model_cfg, pick_device(device)) if not frozen else {}  # QLoRA: 4-bit base weights
    kwargs.update(quant)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code,
                                                 revision=model_cfg.revision, **kwargs)
    if not quant:
        model.to(pick_device(device))
    if not model_cfg.attn_implementation:  # CPU + grouped-query attention: no K/V copy under masks (same values)
        from rlpost.models.attention import use_on_cpu
        use_on_cpu(model)
    if frozen:
        model.eval().requires_grad_(False)
    else:
        model.train()
        if model_cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        if lora_enabled(model_cfg):  # model.lora: a peft model whose adapters are the only trainable weights
            from rlpost.models.lora import apply_lora
            model = apply_lora(model, model_cfg)
    return model


def load_state_into(model, path: str | Path) -> None:
    """Load saved weights into an existing model object (keeps the optimizer's parameter identity)."""
    from rlpost.models.lora import is_peft_model, load_adapter_state_into
    if is_peft_model(model):  # a LoRA checkpoint holds the adapter only
        return load_adapter_state_into(model, path)
    fresh = AutoModelForCausalLM.from_pretrained(str(path), dtype=next(model.parameters()).dtype)
    model.load_state_dict(fresh.state_dict())
