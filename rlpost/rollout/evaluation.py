"""Held-out evaluation during training: the eval prompts, greedy (or at trainer.eval_temperature), scored by the
run's reward functions; set-level metrics (trainer.eval_metrics); benchmarks (trainer.eval_benchmarks, the code
path of ``rlpost eval``). The pipeline decides which thread and engine it runs on (rlpost/rollout/pipeline.py)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from rlpost.rollout.schedule import sampling_params
from rlpost.rollout.scoring import Scorer


class HeldOutEval:
    """cfg: the run's config; prompts: the eval prompts; rewards: the RewardManager; methods: their rollout hooks
    (eval purpose); out_dir: where benchmark results go."""

    def __init__(self, cfg, prompts, tokenizer, rewards, methods: dict, out_dir: Path):
        from rlpost.rewards.dialog import build_eval_metric
        self.cfg, self.prompts, self.tokenizer, self.rewards, self.methods = cfg, prompts, tokenizer, rewards, methods
        self.metric_fns = [build_eval_metric(name) for name in cfg.trainer.eval_metrics]  # before any training
        self.out_dir = out_dir
        self.benchmarks = None

    def run(self, workflow, engine, step: int) -> dict:
        """Mean total reward and accuracy (the share of completions the first reward function scores >= 1) on the
        held-out prompts, the workflow's counters, set-level metrics and benchmarks."""
        t = self.cfg.trainer
        params = dataclasses.replace(sampling_params(self.cfg, self.methods, "eval", 0, step),
                                     n=t.eval_num_generations, temperature=t.eval_temperature or 0.0)
        trajs = getattr(workflow, "eval_rollout", workflow.rollout)(self.prompts, params)
        components = Scorer(self.rewards, workflow, self.cfg.rollout.max_completion_length).score(trajs)
        first = next(iter(components.values()))   # the first reward's component (it may name itself, e.g. an RM)
        metrics = {"eval/reward_mean": float(np.mean([tr.reward for tr in trajs])),
                   "eval/accuracy": float(np.mean([(v or 0.0) >= 1.0 for v in first]))}
        if callable(getattr(workflow, "metrics", None)):
            metrics.update({f"eval/{k}": v for k, v in workflow.metrics(trajs).items()})
        for fn in self.metric_fns:   # set-level metrics (e.g. constrained RLHF's eval score)
            columns = {k: [tr.prompt.columns.get(k) for tr in trajs] for k in trajs[0].prompt.columns}
            metrics.update({f"eval/{k}": float(v) for k, v in
                            fn([tr.prompt.text for tr in trajs], [tr.final_text for tr in trajs], columns).items()})
        if t.eval_benchmarks:
            metrics.update(self._benchmarks().run(step, engine, self.tokenizer))
        return metrics

    def _benchmarks(self):
        if self.benchmarks is None:
            from rlpost.eval.runner import PeriodicEval
            t = self.cfg.trainer
            self.benchmarks = PeriodicEval(t.eval_benchmarks, limit=t.eval_benchmark_limit, seed=t.seed,
                                           prompt_fn=self._prompt_fn(), extractor=t.eval_extractor,
                                           max_tokens=t.eval_max_tokens, out_dir=self.out_dir / "eval")
        return self.benchmarks

    def _prompt_fn(self):
        """trainer.eval_prompt_format=training: a benchmark question -> the engine text, worded and formatted as the
        training prompts are (eval_prompt_template, data.system_prompt, data.few_shot, chat template); else None."""
        t, d = self.cfg.trainer, self.cfg.data
        if t.eval_prompt_format != "training":
            return None
        from rlpost.data import format_prompt
        return lambda question: format_prompt(self.tokenizer, t.eval_prompt_template.replace("{prompt}", question),
                                              d.system_prompt, d.chat_template, "eval benchmark", d.few_shot)[0]
