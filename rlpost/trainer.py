"""The RL loop: generate -> score -> compute advantages -> update -> log / evaluate / checkpoint.

Wiring happens in :func:`setup`; :meth:`Trainer.train` reads top to bottom as the RL cycle. No
algorithm math lives here: every algorithmic choice is a registered function named by the config.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from rlpost import checkpoint as ckpt
from rlpost import distributed
from rlpost.async_rollout import AsyncRollout, RolloutJob, behaviour_version, generator_copy, is_settings
from rlpost.algos import ADVANTAGES, AdvantageInput, build_params
from rlpost.algos.advantages import per_trajectory
from rlpost.algos.dynamic_sampling import informative_groups
from rlpost.algos.kl_reward import build_kl_controller, kl_penalty, sequence_kl, shape_rewards
from rlpost.algos.losses import DEFAULT_AGGREGATION
from rlpost.batch import collate
from rlpost.config import Config, ConfigError, component, save_config, to_dict
from rlpost.config import explicit_fields as user_set_fields  # the keys the user set (YAML or CLI)
from rlpost.data import build_prompts, task_or_file_rows
from rlpost.distributed.weight_sync import sync_engine
from rlpost.engines.base import EngineError, SamplingParams, stable_seed
from rlpost.learner import FixedLogprobs, Learner, LearnerSettings, build_optimizer, build_scheduler
from rlpost.methods import Extras, Needs, SetupContext, StepContext, build_methods, combine_needs
from rlpost.models.loading import load_model, load_tokenizer, resolve_model_path
from rlpost.models.lora import reference_model
from rlpost.models.reference import mix_into_reference
from rlpost.resolve import resolve_train
from rlpost.rewards import RewardManager
from rlpost.samplers import build_sampler
from rlpost.timing import PhaseTimes
from rlpost.tracking import Tracker, plot_metrics
from rlpost.types import Prompt, Trajectory
from rlpost.workflows import WORKFLOWS

log = logging.getLogger("rlpost")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def derived_seed(*parts) -> int:
    """A stable 62-bit seed from the run seed, the step and a purpose tag (resume-safe)."""
    return stable_seed(*parts)


class Trainer:
    dist = distributed.Runtime()  # single process until setup() joins a launcher's process group
    kl_controller = None          # algo.kl_reward's coefficient controller, built in setup() when it is on
    rollouts = None               # the async rollout driver (rollout.async_level > 0), built in setup()

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.out = Path(cfg.trainer.output_dir)
        self.step = 0
        self.times = PhaseTimes()   # timing/<phase> of each step (rlpost/timing.py)

    # ------------------------------------------------------------------ setup
    def setup(self) -> "Trainer":
        cfg = self.cfg
        resolved = resolve_train(cfg)  # names, params, method rules (rlpost/resolve.py), before any model is loaded
        self.dist = distributed.setup(cfg)  # multi-process learner (torchrun ...); a no-op in a single process
        if cfg.trainer.num_threads:
            torch.set_num_threads(cfg.trainer.num_threads)
        seed_everything(cfg.trainer.seed)
        writable_output_dir(self.out)
        if self.dist.is_main:
            save_config(resolved, self.out / "config.yaml")   # components expanded to their resolved params

        self.model_path = resolve_model_path(cfg.model)
        self.tokenizer = load_tokenizer(self.model_path, cfg.model)
        self.model = load_model(self.model_path, cfg.model, cfg.trainer.device)
        self.kl_controller = kl_reward_controller(cfg.algo.kl_reward)   # None when algo.kl_reward is off
        if cfg.algo.beta > 0 and cfg.algo.kl_estimator == "k1":
            log.warning("algo.beta > 0 with algo.kl_estimator=k1: the gradient of a k1 KL loss, grad log pi, has zero "
                        "expectation on fresh samples, so it barely regularises; use kl_estimator=k3 or put the KL in "
                        "the reward (algo.kl_reward, docs/algos/kl.md)")
        needs_ref = cfg.algo.beta > 0 or self.kl_controller is not None
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
        from rlpost.rewards.dialog import build_eval_metric
        self.eval_metric_fns = [build_eval_metric(name) for name in cfg.trainer.eval_metrics]  # before any training
        self.sampler = build_sampler(cfg.data.sampler, len(self.train_prompts), cfg.trainer.seed, cfg.data.shuffle_dataset)

        self.engine = self._build_engine()
        self.workflow = self._build_workflow()
        self.advantage_fn, self.advantage_params = self._build_advantage()
        settings = self._learner_settings()
        needs = self._setup_methods(settings)
        if needs.sampler is not None:
            self.sampler = needs.sampler
        self.learner = self._build_learner(settings, needs)

        if self.dist.is_main:
            for path in ckpt.remove_stale_temporaries(self.out):
                log.warning("removed %s (left half-written by an interrupted run)", path)
        resume_path = ckpt.resolve_resume(self.out, cfg.trainer.resume_from_checkpoint)
        async_state = None
        if resume_path is not None:
            async_state = self._load(resume_path)
        elif cfg.trainer.resume_from_checkpoint == "latest":
            log.warning("trainer.resume_from_checkpoint=latest: no checkpoint in %s, starting from step 0",
                        ckpt.checkpoint_dir(self.out))
        self.tracker = (Tracker(self.out, cfg.trainer.report_to, cfg.trainer.run_name, to_dict(cfg), resume_step=self.step)
                        if self.dist.is_main else distributed.NullTracker())
        if self.engine_needs_sync:  # before the first generation: a reused `rlpost serve` worker (or a resumed run's
            sync_engine(self.engine, self.model, self.dist)  # engine) may hold other weights than this run's
        if cfg.rollout.async_level > 0:
            self.rollouts = self._build_async_rollouts(async_state)
        return self

    def _build_async_rollouts(self, state: dict | None) -> AsyncRollout:
        """The async driver (rlpost/async_rollout.py) with its own engine and workflow (hf: on a copy of the
        model), the current weights published as version ``self.step`` and batches step..step+k queued (or the
        checkpoint's queue restored)."""
        from rlpost.engines.hf import HFEngine
        r = self.cfg.rollout
        engine = HFEngine(generator_copy(self.model), self.tokenizer) if r.engine == "hf" else self.engine.engine
        workflow = self._build_workflow(engine)
        rollouts = AsyncRollout(engine, lambda job: self._rollout_job(workflow, job), r.async_level, r.timeout_s,
                                self.cfg.trainer.num_threads)
        rollouts.publish(self.step, self.model)
        if state is not None:
            rollouts.load_state_dict(state, self.step)
        self.rollouts = rollouts
        for step in range(self.step, self.step + r.async_level + 1):   # (a resumed run with a larger max_steps
            if step not in rollouts.pending:                             # queues the batches its checkpoint had not)
                self.queue_batch(step)
        return rollouts

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

    def _build_engine(self):
        from rlpost.engines import GuardedEngine, build_engine
        engine = self.dist.wrap_engine(build_engine(self.cfg, self.model, self.tokenizer, self.model_path))
        return GuardedEngine(engine, self._engine_failed)

    def _build_workflow(self, engine=None):
        name, overrides = component(self.cfg.rollout.workflow)
        entry = _registry_entry(WORKFLOWS, name, "rollout.workflow")
        params = build_params(entry.params, None, overrides, where=f"rollout.workflow ({name})")
        return entry.fn(engine or self.engine, self.tokenizer, **(dataclasses.asdict(params) if params else {}))

    def _build_advantage(self):
        a = self.cfg.algo
        name, overrides = component(a.advantage)
        entry = _registry_entry(ADVANTAGES, name, "algo.advantage")
        shared = user_set_fields(a)
        return entry.fn, build_params(entry.params, shared, overrides, where=f"algo.advantage ({name})")

    def _setup_methods(self, settings: LearnerSettings) -> Needs:
        """Build the config's methods (``method:``), run their setup, and return their combined needs."""
        try:
            self.methods = build_methods(self.cfg.method)
        except (KeyError, ValueError) as err:
            raise ConfigError(str(err.args[0])) from None
        ctx = SetupContext(cfg=self.cfg, model=self.model, tokenizer=self.tokenizer, model_path=self.model_path,
                           train_prompts=self.train_prompts, reward_names=[spec.name for spec in self.rewards.specs],
                           advantage_params=self.advantage_params, has_ref_model=self.ref_model is not None,
                           learner_settings=dataclasses.replace(settings))
        return combine_needs({name: method.setup(ctx) for name, method in self.methods.items()})

    def _learner_settings(self) -> LearnerSettings:
        from rlpost.algos import POLICY_LOSSES
        cfg, a = self.cfg, self.cfg.algo
        name, overrides = component(a.loss)
        entry = _registry_entry(POLICY_LOSSES, name, "algo.loss")
        shared = user_set_fields(a)
        loss_params = build_params(entry.params, shared, overrides, where=f"algo.loss ({name})")
        agg = DEFAULT_AGGREGATION.get(name, "token-mean") if a.loss_agg == "auto" else a.loss_agg
        from rlpost.algos import AGGREGATIONS, KL_ESTIMATORS
        from rlpost.algos.mismatch import is_correction_from_config
        corrected = dataclasses.replace(a, **is_settings(cfg))   # async_level > 0: on by default (async_rollout.py)
        _registry_entry(AGGREGATIONS, agg, "algo.loss_agg")
        _registry_entry(KL_ESTIMATORS, a.kl_estimator, "algo.kl_estimator")
        return LearnerSettings(
            loss_name=name, loss_params=loss_params, loss_agg=agg,
            max_completion_length=cfg.rollout.max_completion_length, temperature=cfg.rollout.temperature or 1.0,
            beta=a.beta, kl_estimator=a.kl_estimator, entropy_coef=a.entropy_coef, num_iterations=a.num_iterations,
            steps_per_generation=cfg.optim.steps_per_generation, micro_batch_size=cfg.optim.micro_batch_size,
            max_grad_norm=cfg.optim.max_grad_norm, vllm_is=is_correction_from_config(corrected),
            max_consecutive_skipped_steps=cfg.optim.max_consecutive_skipped_steps,
            logprob_chunk_size=cfg.optim.logprob_chunk_size, padding_free=cfg.optim.padding_free,
            shared_prefix=cfg.optim.shared_prefix, max_tokens_per_micro_batch=cfg.optim.max_tokens_per_micro_batch,
            top_entropy_quantile=a.top_entropy_quantile, need_old_ref=self.kl_controller is not None)

    def _build_learner(self, settings: LearnerSettings, needs: Needs) -> Learner:
        """The learner with the methods' needs: their entropy / sum_p_sq flags, old-forward hooks, LR controller."""
        cfg = self.cfg
        settings = dataclasses.replace(settings, need_entropy=needs.entropies, need_sum_p_sq=needs.sum_p_sq)
        optimizer = build_optimizer(self.model, cfg.optim)
        total_opt_steps = cfg.trainer.max_steps * cfg.optim.steps_per_generation * cfg.algo.num_iterations
        scheduler = build_scheduler(optimizer, cfg.optim, total_opt_steps)
        lr_controller = self._build_lr_controller()
        if needs.lr_controller is not None:
            if lr_controller is not None:
                raise ConfigError("algo.lr_controller is set, but an active method provides its own LR controller: "
                                  "drop algo.lr_controller")
            lr_controller = needs.lr_controller
        learner = Learner(self.model, optimizer, scheduler, settings, ref_model=self.ref_model,
                          lr_controller=lr_controller, old_forward_hooks=needs.old_forward_hooks)
        self.dist.wrap_learner(learner)  # DDP / DeepSpeed (no-op in a single process)
        return learner

    def _build_lr_controller(self):
        from rlpost.algos.lr_controllers import LR_CONTROLLERS
        name, overrides = component(self.cfg.algo.lr_controller)
        if name is None:
            return None
        entry = _registry_entry(LR_CONTROLLERS, name, "algo.lr_controller")
        return entry.fn(build_params(entry.params, None, overrides, where=f"algo.lr_controller ({name})"))

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
            trajectories, gen_metrics = self.next_batch()                 # rollout + score (+ dynamic sampling)
            trajectories = self.dist.local_groups(trajectories)           # replicated rollouts: this rank's groups
            batch = collate(trajectories, self.tokenizer.pad_token_id, cfg.algo.mask_truncated_completions)
            self.apply_method_kl_coef()
            with self.times("logprobs"):
                fixed = self.learner.prepare(batch)                      # old / reference log-probs
            ctx = self.step_context(batch, fixed, trajectories)
            extras = self.method_extras(ctx)
            advantages, adv_metrics = self.compute_advantages(batch, fixed, extras.advantage)
            if cfg.trainer.log_completions and self.dist.is_main:
                self.tracker.log_completions(completion_rows(self.step + 1, trajectories, batch, advantages),
                                             cfg.trainer.num_completions_to_print)
            with self.times("update"):
                update_metrics = self.learner.update(batch, advantages, fixed, extras.loss_rows, extras.loss_step)
                update_metrics.update(self.methods_after_update(ctx, update_metrics))
            self.step += 1
            if cfg.algo.sync_ref_model and self.step % cfg.algo.ref_model_sync_steps == 0:
                mix_into_reference(self.ref_model, self.model, cfg.algo.ref_model_mixup_alpha)
            last = {"step": self.step, **gen_metrics, **adv_metrics, **update_metrics,
                    "tokens": self.dist.global_count(int(sum(len(s.completion_ids) for t in trajectories for s in t.samples)))}
            try:
                with self.times("weight_sync"):
                    self.sync_rollout_weights()
            except EngineError:  # the engine handler checkpointed this step: log its row too, so resume misses none
                self.tracker.log({**last, "step_time": time.perf_counter() - start, **self.times.metrics()})
                raise
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

    @property
    def engine_needs_sync(self) -> bool:
        return getattr(self.engine, "model", None) is not self.model

    def sampling_params(self, purpose: str, round_: int = 0, step: int | None = None) -> SamplingParams:
        """The rollout's sampling params for ``step`` (default: the current one), seeded from (seed, step, purpose,
        round), after the methods' rollout_params hooks."""
        r = self.cfg.rollout
        step = self.step if step is None else step
        params = SamplingParams(n=r.num_generations, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                min_p=r.min_p, repetition_penalty=r.repetition_penalty,
                                max_tokens=r.max_completion_length, stop=list(r.stop),
                                seed=derived_seed(self.cfg.trainer.seed, step, purpose, round_),
                                return_entropy=r.return_entropy)
        for method in getattr(self, "methods", {}).values():
            params = method.rollout_params(params, purpose, step)
        return params

    # ------------------------------------------------------------------ async rollouts (rlpost/async_rollout.py)
    def next_batch(self) -> tuple[list[Trajectory], dict]:
        """This step's scored trajectories: generated now (synchronous), or taken from the async queue (generated
        on version max(0, step - async_level) while earlier steps trained) and scored here."""
        if self.rollouts is None:
            return self.generate()
        with self.times("generate_wait"):   # the time the learner waits for rollouts
            trajs, async_metrics = self.rollouts.take(self.step)
        with self.times("score"):
            components = self.score(trajs)
        return trajs, {**self._rollout_metrics(trajs, components), **async_metrics}

    def queue_batch(self, step: int) -> None:
        """Draw the prompts of ``step``'s batch now (in step order) and queue its generation on its version
        (at least the current one: only a resumed run whose checkpoint stopped short of this batch needs that)."""
        if step >= self.cfg.trainer.max_steps:
            return
        version = behaviour_version(step, self.cfg.rollout.async_level)
        if version < self.step:
            log.warning("async rollouts: the batch of step %d is generated on version %d, not %d (the checkpoint was "
                        "written by a run with a smaller trainer.max_steps)", step, self.step, version)
            version = self.step
        indices = self.dist.draw(self.sampler, self.dist.local_prompt_count(self.cfg.rollout.prompts_per_step))
        self.rollouts.submit(RolloutJob(step, list(indices), version))

    def _rollout_job(self, workflow, job: RolloutJob) -> list[Trajectory]:
        """One queued batch, on the generation thread: the same draws, seed and group ids as generate()'s round 0."""
        draws = [copy.copy(self.train_prompts[i]) for i in job.indices]
        trajs = workflow.rollout(draws, self.sampling_params("rollout", 0, step=job.step))
        assign_group_ids(trajs, draws, 0, 1, len(self.train_prompts))
        return trajs

    def sync_rollout_weights(self) -> None:
        """After an update: the engine gets the new weights (synchronous), or the async driver publishes them as
        version ``self.step`` and queues the batch that is generated on them (step + async_level)."""
        if self.rollouts is not None:
            self.rollouts.publish(self.step, self.model)
            self.queue_batch(self.step + self.cfg.rollout.async_level)
        elif self.engine_needs_sync:
            sync_engine(self.engine, self.model, self.dist)

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

    def _evaluate_current(self) -> dict:
        """evaluate() mid-step, for a method: the engine gets the updated weights first (the step's sync is later)."""
        if self.engine_needs_sync and self.rollouts is None:   # async: evaluate() loads a snapshot of them itself
            sync_engine(self.engine, self.model, self.dist)   # merged LoRA / gathered ZeRO-3 weights, as every sync
        return self.evaluate()

    def generate(self) -> tuple[list[Trajectory], dict]:
        """Rollout prompts_per_step groups and score them; with dynamic sampling keep only informative
        groups, refilling from new prompts up to max_refill_rounds times."""
        r, a = self.cfg.rollout, self.cfg.algo
        kept: list[Trajectory] = []
        metrics: dict = {}
        rounds = 1 + (a.max_refill_rounds if a.dynamic_sampling else 0)
        groups_needed = target = self.dist.local_prompt_count(r.prompts_per_step)  # this rank's groups
        for round_ in range(rounds):
            prompts = [self.train_prompts[i] for i in self.dist.draw(self.sampler, groups_needed)]
            if not prompts:  # several ranks: this one is full while others refill (their draws stay in lockstep)
                if self.dist.done(groups_needed):
                    break
                continue
            draws = [copy.copy(p) for p in prompts]   # one object per draw: a prompt drawn twice is two groups
            with self.times("generate"):
                trajs = self.workflow.rollout(draws, self.sampling_params("rollout", round_))
            assign_group_ids(trajs, draws, round_, rounds, len(self.train_prompts))
            for t in trajs:
                t.policy_version = self.step   # synchronous: the weights being trained (staleness 0)
            with self.times("score"):
                component_metrics = self.score(trajs)
            if round_ == 0:  # over all ranks' trajectories
                metrics = self._rollout_metrics(*self.dist.gather_for_metrics(trajs, component_metrics))
            if not a.dynamic_sampling:
                return trajs, metrics
            rewards = torch.tensor([t.reward for t in trajs])
            keep = informative_groups(rewards, torch.tensor([t.group_id for t in trajs]))
            kept += [t for t, k in zip(trajs, keep.tolist()) if k]
            groups_needed = target - len({t.group_id for t in kept})
            if self.dist.done(groups_needed):
                break
        group_ids = sorted({t.group_id for t in kept})[: target]
        kept = [t for t in kept if t.group_id in set(group_ids)]
        metrics["dynamic_sampling/kept_groups"] = self.dist.global_count(len(group_ids))
        metrics["dynamic_sampling/rounds"] = round_ + 1
        if not kept:  # every group was uninformative: train on the last round (zero advantages)
            kept = trajs
        return kept, metrics

    def score(self, trajs: list[Trajectory]) -> dict[str, list[float]]:
        completions = [t.final_text for t in trajs]
        columns = {k: [t.prompt.columns.get(k) for t in trajs] for k in trajs[0].prompt.columns}
        columns["completion_ids"] = [sum((s.completion_ids for s in t.samples), []) for t in trajs]
        columns["finish_reasons"] = ["length" if t.truncated else "stop" for t in trajs]
        columns["max_completion_length"] = self.cfg.rollout.max_completion_length
        for key in trajs[0].info.get("reward_columns", {}):   # a workflow's own columns (multi_turn: conversation, env_reward)
            columns[key] = [t.info["reward_columns"][key] for t in trajs]
        totals, components = self.rewards.score([t.prompt.text for t in trajs], completions, columns)
        for i, t in enumerate(trajs):
            t.reward = totals[i]
            t.reward_components = {k: v[i] for k, v in components.items()}
        # Rewards that are not per-trajectory functions (A²FM's APO needs the whole group): a workflow with
        # score(trajs) -> {name: [float]} rewrites traj.reward from the above, adding its components.
        if callable(getattr(self.workflow, "score", None)):
            components = {**components, **self.workflow.score(trajs)}
        return components

    def _rollout_metrics(self, trajs, components) -> dict:
        rewards = torch.tensor([t.reward for t in trajs])
        lengths = torch.tensor([float(sum(len(s.completion_ids) for s in t.samples)) for t in trajs])
        m = {"reward/mean": rewards.mean().item(), "reward/std": rewards.std().item() if len(trajs) > 1 else 0.0,
             "completion/mean_length": lengths.mean().item(),
             "completion/clipped_ratio": float(np.mean([t.truncated for t in trajs]))}
        for name, vals in components.items():
            present = [v for v in vals if v is not None]
            m[f"reward/{name}/mean"] = float(np.mean(present)) if present else 0.0
        if callable(getattr(self.workflow, "metrics", None)):  # workflow counters (apr/..., a2fm/...)
            m.update(self.workflow.metrics(trajs))
        return m

    def compute_advantages(self, batch, fixed: FixedLogprobs, extra: dict | None = None) -> tuple[torch.Tensor, dict]:
        entropies = fixed.old_entropies if fixed.old_entropies is not None else batch.sampler_entropies
        multi_call = batch.traj_index is not None and batch.traj_index.unique().numel() < len(batch)
        shaped, kl_metrics = self.kl_shaped_rewards(batch, fixed, multi_call)
        inp = AdvantageInput(**{"rewards": batch.rewards, **shaped}, group_ids=batch.group_ids,
                             response_mask=batch.response_mask, entropies=entropies,
                             turn_index=batch.turn_index, turn_rewards=batch.turn_rewards, turn_states=batch.turn_states,
                             extra={"old_logprobs": fixed.old_logprobs, "sum_p_sq": fixed.sum_p_sq,
                                    "truncated": batch.truncated, **(extra or {})})
        if multi_call:
            # multi-call trajectories (APR trees): group stats over trajectories, each row gets its tree's advantage
            advantages, metrics = per_trajectory(self.advantage_fn, self.advantage_params, inp, batch.traj_index)
        else:
            advantages, metrics = self.advantage_fn(inp, self.advantage_params)
        return advantages, {**metrics, **kl_metrics}

    def kl_shaped_rewards(self, batch, fixed, multi_call: bool) -> tuple[dict, dict]:
        """algo.kl_reward: the AdvantageInput fields rewards (score − β Σ_t KL_t), token_rewards and kl_penalty
        (rlpost/algos/kl_reward.py), and the controller's update from this step's mean sequence KL over all ranks
        (the penalty uses the coefficient from before the update). ({}, {}) when off."""
        if self.kl_controller is None:
            return {}, {}
        k, mask = self.cfg.algo.kl_reward, batch.response_mask
        traj_index = batch.traj_index if multi_call else None
        coef = self.kl_controller.coef
        kl_tokens = kl_penalty(fixed.old_logprobs, fixed.ref_logprobs, mask, 1.0, k.estimator)      # [B,T]
        rewards, token_rewards, _ = shape_rewards(batch.rewards, coef * kl_tokens, mask, traj_index)
        seq_kl = sequence_kl(kl_tokens, traj_index)                    # [B]: Σ_t KL_t of the row's trajectory
        count = len(seq_kl) if traj_index is None else int(traj_index.unique().numel())   # samples n (trajectories)
        total = self.dist.all_reduce_sum(float(kl_tokens.to(torch.float64).sum()))
        count = self.dist.global_count(count)
        kl_mean = total / max(count, 1)                                # mean over trajectories of their sequence KL
        self.kl_controller.update(kl_mean, count)
        return ({"rewards": rewards, "token_rewards": None if multi_call else token_rewards, "kl_penalty": coef * seq_kl},
                {"kl_reward/coef": coef, "kl_reward/kl_mean": kl_mean})

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out prompts, greedy (or at trainer.eval_temperature): mean total reward and accuracy,
        the share of completions the first reward function scores >= 1 (e.g. a correct answer). With async
        rollouts on an engine of its own (vllm_server), it runs on the generation thread with the current weights."""
        if self.rollouts is not None and self.engine_needs_sync:
            return self.rollouts.exclusive(self._evaluate, self.model)
        return self._evaluate()

    @torch.no_grad()
    def _evaluate(self) -> dict:
        t = self.cfg.trainer
        params = dataclasses.replace(self.sampling_params("eval"), n=t.eval_num_generations,
                                     temperature=t.eval_temperature or 0.0)
        trajs = getattr(self.workflow, "eval_rollout", self.workflow.rollout)(self.eval_prompts, params)
        components = self.score(trajs)
        first = next(iter(components.values()))   # the first reward's component (it may name itself, e.g. an RM)
        metrics = {"eval/reward_mean": float(np.mean([tr.reward for tr in trajs])),
                   "eval/accuracy": float(np.mean([(v or 0.0) >= 1.0 for v in first]))}
        if callable(getattr(self.workflow, "metrics", None)):
            metrics.update({f"eval/{k}": v for k, v in self.workflow.metrics(trajs).items()})
        for fn in getattr(self, "eval_metric_fns", ()):   # set-level metrics (e.g. constrained RLHF's eval score)
            columns = {k: [tr.prompt.columns.get(k) for tr in trajs] for k in trajs[0].prompt.columns}
            metrics.update({f"eval/{k}": float(v) for k, v in
                            fn([tr.prompt.text for tr in trajs], [tr.final_text for tr in trajs], columns).items()})
        if t.eval_benchmarks:  # the same code path as `rlpost eval`
            if not hasattr(self, "benchmark_eval"):
                from rlpost.eval.runner import PeriodicEval
                self.benchmark_eval = PeriodicEval(t.eval_benchmarks, limit=t.eval_benchmark_limit, seed=t.seed,
                                                   prompt_fn=self._eval_prompt_fn(), extractor=t.eval_extractor,
                                                   max_tokens=t.eval_max_tokens,
                                                   out_dir=self.out / "eval")
            metrics.update(self.benchmark_eval.run(self.step, self.engine, self.tokenizer))
        return metrics

    def _eval_prompt_fn(self):
        """trainer.eval_prompt_format=training: a benchmark question -> the engine text, worded and formatted as the
        training prompts are (eval_prompt_template, data.system_prompt, data.few_shot, chat template); else None."""
        t, d = self.cfg.trainer, self.cfg.data
        if t.eval_prompt_format != "training":
            return None
        from rlpost.data import format_prompt
        return lambda question: format_prompt(self.tokenizer, t.eval_prompt_template.replace("{prompt}", question),
                                              d.system_prompt, d.chat_template, "eval benchmark", d.few_shot)[0]

    # ------------------------------------------------------------------ checkpoint / finish
    def state(self) -> dict:
        optimizer = None if self.dist.shards_optimizer else self.learner.optimizer.state_dict()  # ZeRO: in deepspeed/
        return {"optimizer": optimizer, "scheduler": self.learner.scheduler.state_dict(),
                "sampler": self.sampler.state_dict(),
                "methods": {name: m.state_dict() for name, m in self.methods.items()},
                "lr_controller": self.learner.lr_controller.state_dict() if self.learner.lr_controller else None,
                "kl_reward": self.kl_controller.state_dict() if self.kl_controller is not None else None,
                # a reference that moves (algo.sync_ref_model) is training state
                "ref_model": self.ref_model.state_dict() if self.cfg.algo.sync_ref_model else None,
                # queued async batches (rlpost/async_rollout.py): waits for those generated on older weights
                "async": self.rollouts.state_dict(self.step) if self.rollouts is not None else None}

    def save(self) -> Path:
        # collective with several ranks: rank 0 writes the checkpoint, every rank its RNG state / ZeRO shard
        path = ckpt.save_checkpoint(self.out, self.step, self.model, self.tokenizer, self.state(),
                                    keep=self.cfg.trainer.save_total_limit, runtime=self.dist)
        if self.dist.is_main:
            log.info("checkpoint written: %s", path)
        return path

    def _load(self, path: Path) -> dict | None:
        """Resume from checkpoint ``path``; returns its queued async batches (None for a synchronous run)."""
        state = ckpt.load_state(path)
        saved_level = (state.get("async") or {}).get("level", 0)
        if saved_level != self.cfg.rollout.async_level:
            raise ConfigError(f"rollout.async_level={self.cfg.rollout.async_level}, but {path} was written with "
                              f"async_level={saved_level}: resume with the same value (the batch schedule differs)")
        ckpt.load_model_and_optimizer(path, state, self.model, self.learner.optimizer, self.dist)
        self.learner.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        for name, method in self.methods.items():
            method.load_state_dict(state.get("methods", {}).get(name, {}))
        if self.learner.lr_controller is not None and state.get("lr_controller") is not None:
            self.learner.lr_controller.load_state_dict(state["lr_controller"])
        if self.kl_controller is not None and state.get("kl_reward") is not None:
            self.kl_controller.load_state_dict(state["kl_reward"])
        if self.cfg.algo.sync_ref_model and state.get("ref_model") is not None:
            self.ref_model.load_state_dict(state["ref_model"])
        ckpt.set_rng_state(ckpt.rank_rng_state(path, state, self.dist))
        self.step = state["step"]
        if self.engine_needs_sync:
            sync_engine(self.engine, self.model, self.dist)
        log.info("resumed from %s at step %d", path, self.step)
        return state.get("async")

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
        if self.rollouts is not None:
            self.rollouts.close()
        self.engine.close()
        if hasattr(self, "dist"):
            self.dist.close()

    def _engine_failed(self, err) -> None:
        """The engine failed mid-run (a vllm_server worker died, a weight sync timed out): checkpoint the last
        finished step (the weight sync runs after its step is counted), so `resume_from_checkpoint=latest` goes
        on from there; the error then propagates with the worker's log lines."""
        if not hasattr(self, "tracker") or self.step == 0:  # during setup / before any step: nothing to save
            return
        if self.dist.enabled:  # a checkpoint is collective and the other ranks need not be here: keep the last periodic one
            return
        if self.rollouts is not None:  # async: the failure may be on the generation thread, whose queue a checkpoint
            return                     # waits for; keep the last periodic checkpoint
        err.checkpoint = self.save()


def kl_reward_controller(k):
    """The algo.kl_reward controller (rlpost/algos/kl_reward.py), or None when coef is 0 (off)."""
    return build_kl_controller(k.controller, k.coef, k.target, k.horizon) if k.coef > 0 else None


def fit_prompts(prompts: list[Prompt], tokenizer, room: int, policy: str, which: str) -> list[Prompt]:
    """Prompts longer than ``room`` tokens (the context minus rollout.max_completion_length), handled before step 0
    by data.overlong_prompts: ``error`` (a ConfigError naming the first one), ``drop`` (a counted warning) or
    ``truncate_left`` (keep the last ``room`` tokens: the question usually sits at the end)."""
    if policy not in ("error", "drop", "truncate_left"):
        raise ConfigError(f"data.overlong_prompts: {policy!r} is not one of error, drop, truncate_left")
    ids = [tokenizer(p.text, add_special_tokens=False)["input_ids"] for p in prompts]
    lengths = [len(x) for x in ids]
    over = [i for i, n in enumerate(lengths) if n > room]
    if not over:
        return prompts
    first = over[0]
    if policy == "error" or room <= 0:
        raise ConfigError(f"{len(over)} of {len(prompts)} {which} prompts do not fit the model's context with "
                          f"rollout.max_completion_length room (first: row {prompts[first].id}, {lengths[first]} tokens > "
                          f"{room}); set data.overlong_prompts=drop or truncate_left, a smaller max_completion_length "
                          "or a larger rollout.max_model_len")
    log.warning("data.overlong_prompts=%s: %d of %d %s prompts are longer than %d tokens", policy, len(over),
                len(prompts), which, room)
    if policy == "drop":
        dropped = set(over)
        kept = [p for i, p in enumerate(prompts) if i not in dropped]
        if not kept:
            raise ConfigError(f"data.overlong_prompts=drop: every {which} prompt is longer than {room} tokens")
        return kept
    out = list(prompts)
    for i in over:
        out[i] = dataclasses.replace(prompts[i], text=tokenizer.decode(ids[i][-room:]))
    return out


def writable_output_dir(path: Path) -> None:
    """Create ``path`` and check that files can be written there; a ConfigError naming trainer.output_dir if not
    (before any model loads, rather than at the first checkpoint)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".rlpost-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"trainer.output_dir: cannot write to {str(path)!r} ({err.strerror or err})") from None


def assign_group_ids(trajs, draws, round_: int, rounds: int, num_prompts: int) -> None:
    """Groups never merge: group_id = prompt.id + N * (round + R * k), with N prompts in the training set, R refill
    rounds and k the draw's occurrence of that prompt in this round (0 for its first draw). Distinct prompts in a
    single round keep group_id = prompt.id. Workflows return each trajectory with the Prompt object it was drawn
    as (``draws`` holds one object per draw)."""
    occurrence, seen = {}, {}
    for d in draws:
        occurrence[id(d)] = seen.get(d.id, 0)
        seen[d.id] = occurrence[id(d)] + 1
    for t in trajs:
        k = occurrence.get(id(t.prompt), 0)
        t.group_id = t.prompt.id + num_prompts * (round_ + rounds * k)


def _registry_entry(registry, name, key):
    try:
        return registry.entry(name)
    except KeyError as err:
        raise ConfigError(f"{key}: {err.args[0]}") from None


def completion_rows(step: int, trajectories, batch, advantages: torch.Tensor) -> list[dict]:
    """One row per trajectory for completions.jsonl: prompt, completion, reward (and its components), the
    trajectory's advantage (mean over its trained tokens), completion tokens and whether it was truncated."""
    mask = batch.response_mask
    traj_index = batch.traj_index if batch.traj_index is not None else torch.arange(len(batch))
    adv_sum = torch.zeros(len(trajectories)).index_add_(0, traj_index, (advantages * mask).sum(-1))
    tokens = torch.zeros(len(trajectories)).index_add_(0, traj_index, mask.sum(-1))
    rows = []
    for j, t in enumerate(trajectories):
        rows.append({"step": step, "group": t.group_id, "prompt": t.prompt.text, "completion": t.final_text,
                     "reward": t.reward, **{f"reward/{k}": v for k, v in t.reward_components.items()},
                     "advantage": float(adv_sum[j] / tokens[j].clamp(min=1)),
                     "tokens": int(sum(len(s.completion_ids) for s in t.samples)), "truncated": t.truncated,
                     **({"conversation": t.info["conversation"]} if "conversation" in t.info else {})})
    return rows
