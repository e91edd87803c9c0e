"""Wire a :class:`~rlpost.rollout.pipeline.RolloutPipeline` from the config: the engine (``rollout.engine``), the
workflow (``rollout.workflow``) on it, the scorer, and at ``async_level > 0`` with the ``hf`` engine a generator
model of the generation thread's own (held-out evaluation stays on the learner's model)."""
from __future__ import annotations

import dataclasses

from rlpost.algos import build_params
from rlpost.checks import registry_entry
from rlpost.config import component
from rlpost.rollout.pipeline import RolloutPipeline
from rlpost.rollout.scoring import Scorer


def build_workflow(cfg, engine, tokenizer):
    """``rollout.workflow`` (a name or ``{name: ..., params}``) built on ``engine``."""
    from rlpost.workflows import WORKFLOWS
    name, overrides = component(cfg.rollout.workflow)
    entry = registry_entry(WORKFLOWS, name, "rollout.workflow")
    params = build_params(entry.params, None, overrides, where=f"rollout.workflow ({name})")
    return entry.fn(engine, tokenizer, **(dataclasses.asdict(params) if params else {}))


def build_engine(cfg, model, tokenizer, model_path: str, dist):
    """The configured engine for this rank (hf: on ``model``)."""
    from rlpost.engines import build_engine as engine_for
    return dist.wrap_engine(engine_for(cfg, model, tokenizer, model_path))


def generator_model(cfg, model_path: str):
    """The hf engine's own model for the generation thread: the base checkpoint, frozen, without adapters (it is
    loaded with each version's full weights: merged LoRA, gathered ZeRO-3)."""
    from rlpost.models.loading import load_model
    return load_model(model_path, cfg.model, cfg.trainer.device, frozen=True)


def build_pipeline(cfg, *, model, tokenizer, model_path: str, dist, prompts, sampler, methods: dict, rewards,
                   times) -> RolloutPipeline:
    """The run's rollout pipeline (see rlpost/rollout/pipeline.py)."""
    engine = build_engine(cfg, model, tokenizer, model_path, dist)
    workflow = build_workflow(cfg, engine, tokenizer)
    eval_engine = eval_workflow = None
    if cfg.rollout.async_level > 0 and getattr(engine, "model", None) is model:
        # the learner's own model cannot generate while it trains: the generation thread gets a copy
        eval_engine, eval_workflow = engine, workflow
        engine = build_engine(cfg, generator_model(cfg, model_path), tokenizer, model_path, dist)
        workflow = build_workflow(cfg, engine, tokenizer)
    scorer = Scorer(rewards, workflow, cfg.rollout.max_completion_length)
    return RolloutPipeline(cfg, engine=engine, workflow=workflow, scorer=scorer, prompts=prompts, sampler=sampler,
                           methods=methods, dist=dist, model=model, times=times, eval_engine=eval_engine,
                           eval_workflow=eval_workflow)
