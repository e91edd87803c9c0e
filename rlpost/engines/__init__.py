"""Rollout engines. ``build_engine`` creates the one ``rollout.engine`` names.

hf: transformers, in the learner's process on the learner's own model object. vllm: a colocated ``vllm.LLM`` in
the trainer's process (rlpost/engines/vllm_engine.py). vllm_server: the client of ``rlpost serve`` workers
(rlpost/engines/vllm_server.py). The vLLM modules import vllm only when an engine is built.
"""
from rlpost.engines.base import ENGINES, Engine, EngineError, GenRequest, SamplingParams  # noqa: F401
from rlpost.engines import hf, vllm_engine, vllm_server  # noqa: F401  (registration)


def build_engine(cfg, model, tokenizer, model_path: str):
    """hf: the learner's own model (no weight copy). Other engines are constructed from the config."""
    name = cfg.rollout.engine
    cls = ENGINES.get(name)
    if name == "hf":
        return cls(model, tokenizer)
    return cls.from_config(cfg, model_path, tokenizer)
