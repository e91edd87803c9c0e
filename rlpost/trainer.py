"""The RL loop: batch of step t -> old / reference log-probs -> advantages -> update -> publish version t+1 ->
log / evaluate / checkpoint.

Wiring happens in :meth:`Trainer.setup`; :meth:`Trainer.train` reads top to bottom as the RL cycle. The rollout
side (prompts, seeds, policy versions, engines, workflows, scoring, dynamic sampling, asynchronous generation)
is the pipeline's (rlpost/rollout/); the advantage step is rlpost/advantage_step.py; the learner's wiring is
rlpost/learner_setup.py. No algorithm math lives here: every algorithmic choice is a registered function named
by the config.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch

from rlpost import checkpoint as ckpt
from rlpost import distributed
from rlpost.advantage_step import AdvantageStep
from rlpost.batch import collate
from rlpost.config import Config, ConfigError, save_config, to_dict
from rlpost.data import build_prompts, fit_prompts, task_or_file_rows
from rlpost.engines.base import EngineError
from rlpost.learner import FixedLogprobs
from rlpost.learner_setup import build_learner, learner_settings
from rlpost.methods import Extras, Needs, SetupContext, StepContext, build_methods, combine_needs
from rlpost.models.loading import load_model, load_tokenizer, resolve_model_path
from rlpost.models.lora import reference_model
from rlpost.models.reference import mix_into_reference
from rlpost.rewards import RewardManager
from rlpost.rollout.build import build_pipeline
from rlpost.rollout.evaluation import HeldOutEval
from rlpost.samplers import build_sampler
from rlpost.timing import PhaseTimes
from rlpost.tracking import Tracker, completion_rows, plot_metrics
from rlpost.types import Prompt

log = logging.getLogger("rlpost")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    dist = distributed.Runtime()  # single process until setup() joins a launcher's process group
    pipeline = None               # the rollout pipeline (rlpost/rollout/), built in setup()

    def __init__(self, cfg: Config, resolved: dict | None = None):
        """``resolved``: the config's resolution (rlpost/resolve.py ``resolve_train``) when the caller has it;
        setup() resolves it once otherwise."""
        self.cfg = cfg
        self.resolved = resolved
        self.out = Path(cfg.trainer.output_dir)
        self.step = 0
        self.times = PhaseTimes()   # timing/<phase> of each step (rlpost/timing.py)

    # ------------------------------------------------------------------ setup
    def setup(self) -> "Trainer":
        cfg = self.cfg
        if self.resolved is None:   # names, params, method rules, before any model is loaded
            from rlpost.resolve import resolve_train
            self.resolved = resolve_train(cfg)
        self.dist = distributed.setup(cfg)  # multi-process learner (torchrun ...); a no-op in a single process
        if cfg.trainer.num_threads:
            torch.set_num_threads(cfg.trainer.num_threads)
        seed_everything(cfg.trainer.seed)
        ckpt.writable_output_dir(self.out)
        if self.dist.is_main:
            save_config(self.resolved, self.out / "config.yaml")   # components expanded to their resolved params

        self.model_path = resolve_model_path(cfg.model)
        self.tokenizer = load_tokenizer(self.model_path, cfg.model)
        self.model = load_model(self.model_path, cfg.model, cfg.trainer.device)
        self.advantage = AdvantageStep(cfg.algo, self.dist)
        if cfg.algo.beta > 0 and cfg.algo.kl_estimator == "k1":
            log.warning("algo.beta > 0 with algo.kl_estimator=k1: the gradient of a k1 KL loss, grad log pi, has zero "
                        "expectation on fresh samples, so it barely regularises; use kl_estimator=k3 or put the KL in "
                        "the reward (algo.kl_reward, docs/algos/kl.md)")
        needs_ref = cfg.algo.beta > 0 or self.advantage.kl_controller is not None
        self.ref_model = reference_model(self.model_path, cfg.model, cfg.trainer.device, self.model) if needs_ref else None

        self.train_prompts = self._prompts(cfg.data.train_path, cfg.data.train_split, cfg.data.num_train, "train")
        if cfg.rollout.prompts_per_step > len(self.train_prompts):
            log.warning("rollout.prompts_per_step (%d) is larger than the training set (%d prompts): prompts repeat "
                        "within a step (each draw is its own group of %d)", cfg.rollout.prompts_per_step,
                        len(self.train_prompts), cfg.rollout.num_generations)
        self.eval_prompts = self._prompts(cfg.data.eval_path, cfg.data.eval_split, cfg.data.num_eval, "test")
        room = self._context_length() - cfg.rollout.max_completion_length
        self.train_prompts = fit_prompts(self.train_prompts, self.tokenizer, room, cfg.data.overlong_prompts, "training")
        self.eval_prompts = fit_prompts(self.eval_prompts, self.tokenizer, room, cfg.data.overlong_prompts, "evaluation")
        self.rewards = RewardManager.from_config(cfg.rewards)
        self.sampler = build_sampler(cfg.data.sampler, len(self.train_prompts), cfg.trainer.seed, cfg.data.shuffle_dataset)

        settings = learner_settings(cfg, need_old_ref=self.advantage.kl_controller is not None)
        needs = self._setup_methods(settings)
        if needs.sampler is not None:
            self.sampler = needs.sampler
        self.learner = build_learner(cfg, self.model, self.ref_model, settings, needs, self.dist)
        self.heldout = HeldOutEval(cfg, self.eval_prompts, self.tokenizer, self.rewards, self.methods, self.out)
        self.pipeline = build_pipeline(cfg, model=self.model, tokenizer=self.tokenizer, model_path=self.model_path,
                                       dist=self.dist, prompts=self.train_prompts, sampler=self.sampler,
                                       methods=self.methods, rewards=self.rewards, times=self.times)

        if self.dist.is_main:
            for path in ckpt.remove_stale_temporaries(self.out):
                log.warning("removed %s (left half-written by an interrupted run)", path)
        resume_path = ckpt.resolve_resume(self.out, cfg.trainer.resume_from_checkpoint)
        rollout_state = None
        if resume_path is not None:
            rollout_state = self._load(resume_path)
        elif cfg.trainer.resume_from_checkpoint == "latest":
            log.warning("trainer.resume_from_checkpoint=latest: no checkpoint in %s, starting from step 0",
                        ckpt.checkpoint_dir(self.out))
        self.tracker = (Tracker(self.out, cfg.trainer.report_to, cfg.trainer.run_name, to_dict(cfg), resume_step=self.step)
                        if self.dist.is_main else distributed.NullTracker())
        # before the first generation: a reused `rlpost serve` worker (or a resumed run's engine) may hold other
        # weights than this run's; the pipeline pushes this version and queues what the schedule generates on it
        self.pipeline.start(self.step, rollout_state)
        return self

    @property
    def engine(self):
        """The rollout engine (the generation thread's with async rollouts)."""
        return self.pipeline.engine

    @property
    def workflow(self):
        return self.pipeline.workflow

    def _context_length(self) -> int:
        """Tokens the model can attend to: rollout.max_model_len when set, else the model's max_position_embeddings."""
        return self.cfg.rollout.max_model_len or getattr(self.model.config, "max_position_embeddings", None) or 10**9

    def _prompts(self, path, split, n, task_split) -> list[Prompt]:
        d = self.cfg.data
        rows = task_or_file_rows(d.task, d.task_kwargs, path, split if path else task_split, n, self.cfg.trainer.seed)
        source = path or f"task {d.task!r} ({task_split} split)"
        return build_prompts(rows, self.tokenizer, prompt_column=d.prompt_column, answer_column=d.answer_column,
                             system_prompt=d.system_prompt, chat_template=d.chat_template, source=source,
                             few_shot=d.few_shot)

    def _setup_methods(self, settings) -> Needs:
        """Build the config's methods (``method:``), run their setup, and return their combined needs."""
        try:
            self.methods = build_methods(self.cfg.method)
        except (KeyError, ValueError) as err:
            raise ConfigError(str(err.args[0])) from None
        ctx = SetupContext(cfg=self.cfg, model=self.model, tokenizer=self.tokenizer, model_path=self.model_path,
                           train_prompts=self.train_prompts, reward_names=[spec.name for spec in self.rewards.specs],
                           advantage_params=self.advantage.params, has_ref_model=self.ref_model is not None,
                           learner_settings=dataclasses.replace(settings))
        return combine_needs({name: method.setup(ctx) for name, method in self.methods.items()})

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        cfg = self.cfg
        if self.step == 0 and cfg.trainer.eval_steps >= 0:
            self.tracker.log({"step": 0, **self.evaluate()})
        from tqdm.auto import tqdm
        bar = tqdm(range(self.step, cfg.trainer.max_steps), initial=self.step, total=cfg.trainer.max_steps,
                   disable=not cfg.trainer.progress_bar, desc="rlpost", dynamic_ncols=True)
        last = {}
        for _ in bar:
            start = time.perf_counter()
            self.times.reset()
            trajectories, rollout_metrics = self.engine_call(self.pipeline.batch, self.step)   # scored, this rank's
            batch = collate(trajectories, self.tokenizer.pad_token_id, cfg.algo.mask_truncated_completions)
            self.apply_method_kl_coef()
            with self.times("logprobs"):
                fixed = self.learner.prepare(batch)                      # old / reference log-probs
            ctx = self.step_context(batch, fixed, trajectories)
            extras = self.method_extras(ctx)
            advantages, adv_metrics = self.advantage(batch, fixed, extras.advantage)
            if cfg.trainer.log_completions and self.dist.is_main:
                self.tracker.log_completions(completion_rows(self.step + 1, trajectories, batch, advantages),
                                             cfg.trainer.num_completions_to_print)
            with self.times("update"):
                update_metrics = self.learner.update(batch, advantages, fixed, extras.loss_rows, extras.loss_step)
                update_metrics.update(self.methods_after_update(ctx, update_metrics))
            self.step += 1
            if cfg.algo.sync_ref_model and self.step % cfg.algo.ref_model_sync_steps == 0:
                mix_into_reference(self.ref_model, self.model, cfg.algo.ref_model_mixup_alpha)
            last = {"step": self.step, **rollout_metrics, **adv_metrics, **update_metrics,
                    "tokens": self.dist.global_count(int(sum(len(s.completion_ids) for t in trajectories for s in t.samples)))}
            with self.times("weight_sync"):
                self.engine_call(self.pipeline.publish, self.step, row={**last, "step_time": time.perf_counter() - start})
            last["step_time"] = time.perf_counter() - start
            last["perf/tokens_per_s"] = last["tokens"] / last["step_time"]
            if self._due(cfg.trainer.eval_steps) or self.step == cfg.trainer.max_steps:
                with self.times("eval"):
                    last.update(self.evaluate())
            last.update(self.times.metrics())
            self.tracker.log(last)
            bar.set_postfix(reward=f"{last['reward/mean']:.3f}", **({"acc": f"{last['eval/accuracy']:.2f}"} if "eval/accuracy" in last else {}))
            if self._due(cfg.trainer.save_steps) and self.step < cfg.trainer.max_steps:
                self.save()
        return self.finish(last)

    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def engine_call(self, fn, *args, row: dict | None = None):
        """``fn(*args)``; when the engine or a worker fails (EngineError), checkpoint the last finished step first
        (and log ``row``, that step's metrics, when the failure came after it was counted), so that
        ``resume_from_checkpoint=latest`` goes on from there; the error then propagates with the worker's log lines.
        Several ranks: a checkpoint is collective and the other ranks need not be here, so the last periodic one
        is kept."""
        try:
            return fn(*args)
        except EngineError as err:
            if row is not None:
                self.tracker.log({**row, **self.times.metrics()})
            if self.step > 0 and not self.dist.enabled:
                err.checkpoint = self.save()
            raise

    # ------------------------------------------------------------------ methods (rlpost/methods/__init__.py)
    def apply_method_kl_coef(self) -> None:
        """The KL coefficient a method sets for the coming update (constrained RLHF's adaptive beta)."""
        for method in self.methods.values():
            coef = method.kl_coef()
            if coef is not None:
                self.learner.settings.beta = coef

    def step_context(self, batch, fixed: FixedLogprobs, trajectories) -> StepContext:
        return StepContext(step=self.step, batch=batch, fixed=fixed, trajectories=trajectories,
                           mini_batches=self.learner.mini_batches(len(batch)), evaluate=self._evaluate_current,
                           all_reduce_sum=self.dist.all_reduce_sum)

    def method_extras(self, ctx: StepContext) -> Extras:
        extras = Extras()
        for method in self.methods.values():
            extras = extras.merge(method.extras(ctx))
        return extras

    def methods_after_update(self, ctx: StepContext, update_metrics: dict) -> dict:
        ctx = dataclasses.replace(ctx, update_metrics=dict(update_metrics))
        out: dict = {}
        for method in self.methods.values():
            out.update(method.after_update(ctx))
        return out

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out prompts on the learner's current weights (rlpost/rollout/evaluation.py), on the engine and
        thread the pipeline says."""
        step = self.step
        return self.pipeline.evaluate(lambda workflow, engine: self.heldout.run(workflow, engine, step))

    @torch.no_grad()
    def _evaluate_current(self) -> dict:
        """evaluate() mid-step, for a method: the learner has updated since the last published version."""
        step = self.step
        return self.pipeline.evaluate(lambda workflow, engine: self.heldout.run(workflow, engine, step),
                                      changed_since_publish=True)

    # ------------------------------------------------------------------ checkpoint / finish
    def state(self) -> dict:
        optimizer = None if self.dist.shards_optimizer else self.learner.optimizer.state_dict()  # ZeRO: in deepspeed/
        return {"optimizer": optimizer, "scheduler": self.learner.scheduler.state_dict(),
                "sampler": self.sampler.state_dict(),
                "methods": {name: m.state_dict() for name, m in self.methods.items()},
                "lr_controller": self.learner.lr_controller.state_dict() if self.learner.lr_controller else None,
                "kl_reward": self.advantage.state_dict(),
                # a reference that moves (algo.sync_ref_model) is training state
                "ref_model": self.ref_model.state_dict() if self.cfg.algo.sync_ref_model else None,
                # the pipeline's queue (rlpost/rollout/pipeline.py): batches generated on older weights, the rest
                "async": self.pipeline.state_dict(self.step)}

    def save(self) -> Path:
        # collective with several ranks: rank 0 writes the checkpoint, every rank its RNG state / ZeRO shard
        path = ckpt.save_checkpoint(self.out, self.step, self.model, self.tokenizer, self.state(),
                                    keep=self.cfg.trainer.save_total_limit, runtime=self.dist)
        if self.dist.is_main:
            log.info("checkpoint written: %s", path)
        return path

    def _load(self, path: Path) -> dict | None:
        """Resume from checkpoint ``path``; returns the pipeline's state (its queued batches)."""
        state = ckpt.load_state(path)
        rollout_state = state.get("async") or {"level": 0, "jobs": []}   # (written before the pipeline: synchronous)
        self.pipeline.check_resumable(rollout_state, path)   # before anything is loaded
        ckpt.load_model_and_optimizer(path, state, self.model, self.learner.optimizer, self.dist)
        self.learner.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        for name, method in self.methods.items():
            method.load_state_dict(state.get("methods", {}).get(name, {}))
        if self.learner.lr_controller is not None and state.get("lr_controller") is not None:
            self.learner.lr_controller.load_state_dict(state["lr_controller"])
        self.advantage.load_state_dict(state.get("kl_reward"))
        if self.cfg.algo.sync_ref_model and state.get("ref_model") is not None:
            self.ref_model.load_state_dict(state["ref_model"])
        ckpt.set_rng_state(ckpt.rank_rng_state(path, state, self.dist))
        self.step = state["step"]
        log.info("resumed from %s at step %d", path, self.step)
        return rollout_state

    def finish(self, last: dict) -> dict:
        final = self.out / "final_model"
        # rank 0 writes (gathered under ZeRO-3); LoRA: the adapter, + merged/ with model.lora.save_merged
        ckpt.save_model(self.model, self.tokenizer, final, self.dist, save_merged=self.cfg.model.lora.save_merged)
        self.tracker.close()
        if not self.dist.is_main:
            return {"metrics": str(self.out / "metrics.jsonl"), "plot": None, "final_model": str(final), "last": last}
        plot = plot_metrics(self.out / "metrics.jsonl", self.out / "curves.png")
        summary = {"metrics": str(self.out / "metrics.jsonl"), "plot": str(plot), "final_model": str(final),
                   "last": last}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
            self.pipeline.engine.close()
            if self.pipeline.eval_engine is not self.pipeline.engine:
                self.pipeline.eval_engine.close()
        if hasattr(self, "dist"):
            self.dist.close()
