"""Rollout engines. ``build_engine`` creates the one ``rollout.engine`` names."""
from rlpost.engines.base import ENGINES, Engine, GenRequest, SamplingParams  # noqa: F401
from rlpost.engines import hf  # noqa: F401  (registration)


def build_engine(cfg, model, tokenizer, model_path: str):
    """hf: the learner's own model (no weight copy). Other engines are constructed from the config."""
    name = cfg.rollout.engine
    cls = ENGINES.get(name)
    if name == "hf":
        return cls(model, tokenizer)
    return cls.from_config(cfg, model_path, tokenizer)
