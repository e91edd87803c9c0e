"""LoRA / QLoRA through peft (``model.lora``, ``model.load_in_4bit``).

- :func:`apply_lora` wraps the policy in a ``peft`` model whose adapters are the only trainable parameters.
  The hf engine generates with that model directly (adapters active, no weight sync).
- :func:`merged_named_parameters` is what engines that hold their own copy of the weights (vLLM colocated,
  ``rlpost serve`` workers) receive: for every LoRA layer the merged weight ``W + scale * B @ A`` is computed
  in a new tensor (the trained model is not touched, unlike ``merge_and_unload``), under the plain Hugging Face
  parameter names (``model.layers.0.self_attn.q_proj.weight``), so ``engine.load_weights`` needs no peft
  knowledge. 4-bit base weights are dequantised first.
- :func:`save_final` writes what ``peft.PeftModel.from_pretrained`` loads (adapter_config.json +
  adapter_model.safetensors) and, unless ``model.lora.save_merged: false``, a merged full model in ``merged/``
  that plain ``AutoModelForCausalLM.from_pretrained`` (and vLLM) loads.
- With ``algo.beta > 0`` the reference model is the policy with its adapters switched off
  (:class:`AdapterDisabledView`): no second copy of the base weights.

QLoRA needs bitsandbytes, whose 4-bit kernels are CUDA-only: on CPU machines ``model.load_in_4bit`` stops with
a clear error (there is no CPU path to fall back to).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

import torch

_COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def lora_enabled(model_cfg) -> bool:
    lora = getattr(model_cfg, "lora", None)
    return bool(lora is not None and lora.r > 0)


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


# ---------------------------------------------------------------------------------------------- loading


def quantization_kwargs(model_cfg, device: torch.device) -> dict:
    """from_pretrained kwargs for ``model.load_in_4bit`` (empty when it is off)."""
    if not getattr(model_cfg, "load_in_4bit", False):
        return {}
    try:
        import bitsandbytes  # noqa: F401  (presence check)
    except ImportError:
        raise RuntimeError("model.load_in_4bit (QLoRA) needs bitsandbytes, which is not installed "
                           "(pip install bitsandbytes; its 4-bit kernels need a CUDA GPU). "
                           "On CPU use plain LoRA: model.lora.r > 0 without load_in_4bit.") from None
    if device.type != "cuda":
        raise RuntimeError(f"model.load_in_4bit (QLoRA): bitsandbytes 4-bit layers run on CUDA only, this run's "
                           f"device is {device}. Use plain LoRA (model.load_in_4bit=false) on CPU.")
    from transformers import BitsAndBytesConfig
    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=model_cfg.bnb_4bit_quant_type,
        bnb_4bit_compute_dtype=_COMPUTE_DTYPES[model_cfg.bnb_4bit_compute_dtype], bnb_4bit_use_double_quant=True),
        "device_map": {"": device.index or 0}}


def apply_lora(model, model_cfg):
    """Wrap ``model`` in a peft model (fresh adapters, or ``model.lora.adapter_path``); only adapters train."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    lc = model_cfg.lora
    if getattr(model_cfg, "load_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=model_cfg.gradient_checkpointing)
    if lc.adapter_path:
        model = PeftModel.from_pretrained(model, lc.adapter_path, is_trainable=True)
    else:
        targets = lc.target_modules
        config = LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, bias=lc.bias,
                            target_modules=list(targets) if isinstance(targets, (list, tuple)) else targets,
                            use_rslora=lc.use_rslora, modules_to_save=list(lc.modules_to_save) or None,
                            init_lora_weights=lc.init_lora_weights, task_type="CAUSAL_LM")
        model = get_peft_model(model, config)
    if model_cfg.gradient_checkpointing:
        # frozen embeddings give the checkpointed blocks inputs without grad; this keeps the graph connected
        model.enable_input_require_grads()
    model.train()
    return model


class AdapterDisabledView(torch.nn.Module):
    """The base model of a peft policy (adapters off), used as the frozen reference model (algo.beta > 0)."""

    def __init__(self, peft_model):
        super().__init__()
        object.__setattr__(self, "peft_model", peft_model)  # not a submodule: no parameters of its own

    def forward(self, *args, **kwargs):
        with torch.no_grad(), self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)

    def train(self, mode: bool = True):  # the view has no training state of its own
        self.training = mode
        return self

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "peft_model"), name)


def reference_model(path: str, model_cfg, device: str, policy):
    """The frozen reference policy (the policy before training): the adapter-disabled view of a fresh LoRA policy;
    the base with ``model.lora.adapter_path`` merged when training continues an adapter; else a frozen copy."""
    if is_peft_model(policy) and not model_cfg.lora.adapter_path:
        return AdapterDisabledView(policy)
    from rlpost.models.loading import load_model
    ref = load_model(path, model_cfg, device, frozen=True)
    if is_peft_model(policy):
        from peft import PeftModel
        ref = PeftModel.from_pretrained(ref, model_cfg.lora.adapter_path).merge_and_unload()
        ref.eval().requires_grad_(False)
    return ref


# ---------------------------------------------------------------------------------------------- weights


def hf_name(peft_name: str) -> str:
    """``base_model.model.model.layers.0.q_proj.base_layer.weight`` -> ``model.layers.0.q_proj.weight``."""
    name = peft_name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".")


def _dense_weight(module) -> torch.Tensor:
    weight = module.weight
    if weight.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        return weight.detach()
    from peft.utils.integrations import dequantize_module_weight  # bitsandbytes 4-/8-bit
    return dequantize_module_weight(module).detach()


GatherFn = Callable[[list], contextlib.AbstractContextManager]


@torch.no_grad()
def merged_named_parameters(peft_model, gather: GatherFn | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, merged tensor) for every weight of the base model, adapters folded in as new tensors.

    ``gather(params)`` is entered around the reads of each module's parameters (DeepSpeed ZeRO-3 passes
    ``deepspeed.zero.GatheredParameters``); tensors read inside it are cloned before it exits.
    """
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    gather = gather or (lambda params: contextlib.nullcontext())
    adapter = peft_model.active_adapter if isinstance(peft_model.active_adapter, str) else peft_model.active_adapters[0]
    base = peft_model.get_base_model()
    seen: set[int] = set()
    handled_prefixes: list[str] = []
    for mod_name, module in base.named_modules():
        if any(mod_name.startswith(p) for p in handled_prefixes):
            continue
        if isinstance(module, LoraLayer):
            handled_prefixes.append(mod_name + ".")
            base_layer = module.get_base_layer()
            if adapter in getattr(module, "lora_magnitude_vector", {}) or module.use_dora.get(adapter, False):
                raise NotImplementedError("merged_named_parameters: DoRA adapters are not supported (use_dora)")
            params = list(module.parameters())
            with gather(params):
                weight = _dense_weight(base_layer)
                if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
                    weight = weight.float() + module.get_delta_weight(adapter).float()
                weight = weight.to(_float_dtype(base_layer)).clone()
                others = [(f"{mod_name}.{n}", p.detach().clone()) for n, p in base_layer.named_parameters()
                          if n != "weight" and id(p) not in seen]
            seen.update(id(p) for p in base_layer.parameters())
            yield f"{mod_name}.weight", weight
            yield from others
        elif isinstance(module, ModulesToSaveWrapper):
            handled_prefixes.append(mod_name + ".")
            trained = module.modules_to_save[adapter] if adapter in module.modules_to_save else module.original_module
            with gather(list(trained.parameters())):
                out = [(f"{mod_name}.{n}", p.detach().clone()) for n, p in trained.named_parameters()]
            seen.update(id(p) for p in module.parameters())
            yield from out
        else:
            direct = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
            if not direct:
                continue
            with gather([p for _, p in direct]):
                out = [(f"{mod_name}.{n}" if mod_name else n, p.detach().clone()) for n, p in direct]
            seen.update(id(p) for _, p in direct)
            yield from out


def _float_dtype(layer) -> torch.dtype:
    dtype = layer.weight.dtype
    if dtype in (torch.float32, torch.float16, torch.bfloat16):
        return dtype
    return getattr(layer, "compute_dtype", None) or torch.bfloat16


def merged_state_dict(peft_model, gather: GatherFn | None = None) -> dict[str, torch.Tensor]:
    return {name: t.cpu() for name, t in merged_named_parameters(peft_model, gather)}


# ---------------------------------------------------------------------------------------------- saving


def save_final(model, tokenizer, path: str | Path, save_merged: bool = True, state_dict: dict | None = None,
               merged: dict | None = None) -> None:
    """Adapter (loads with ``PeftModel.from_pretrained(base, path)``) + tokenizer in ``path``; with
    ``save_merged`` a full merged model in ``path/merged``. ``state_dict`` / ``merged``: precomputed
    (gathered) adapter and merged weights, for ZeRO-3."""
    path = Path(path)
    model.save_pretrained(path, state_dict=state_dict) if state_dict is not None else model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if not save_merged:
        return
    weights = merged if merged is not None else merged_state_dict(model)
    base = model.get_base_model()
    config = base.config
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        shell = AutoModelForCausalLM.from_config(config)
    missing = {n for n, _ in shell.named_parameters()} - set(weights)
    tied = {n for n in missing if n.endswith("lm_head.weight")} if getattr(config, "tie_word_embeddings", False) else set()
    if missing - tied:
        raise RuntimeError(f"save_final: merged weights miss {sorted(missing - tied)[:5]}")
    shell.save_pretrained(path / "merged", state_dict=weights)
    tokenizer.save_pretrained(path / "merged")
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(path / "merged")


def load_adapter_state_into(peft_model, path: str | Path) -> None:
    """Resume: load a saved adapter's weights into the live peft model (keeps parameter identity)."""
    from peft.utils import load_peft_weights, set_peft_model_state_dict
    weights = load_peft_weights(str(path), device=str(next(peft_model.parameters()).device))
    result = set_peft_model_state_dict(peft_model, weights)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"adapter at {path} does not match the model: unexpected keys {unexpected[:5]}")
