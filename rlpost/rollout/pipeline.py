"""The rollout pipeline: everything between "the policy has version v" and "here is the scored batch of step t".

The trainer asks ``batch(t)`` for the scored trajectories of step t and calls ``publish(v)`` when the learner has
produced version v. Between the two the pipeline owns the schedule (rlpost/rollout/schedule.py: prompts drawn in
step order, seeds, the version each batch is generated on), the weight pushes to the rollout engine, the
workflow, the scoring (rlpost/rollout/scoring.py), the dynamic-sampling filter and its refills, and its own
checkpoint state. ``rollout.async_level = k`` is its lookahead:

- k = 0: ``batch(t)`` draws, generates and scores inline on the calling thread; ``publish(v)`` pushes the new
  weights to an engine that holds its own copy right away. This is the synchronous RL loop.
- k > 0: one generation thread runs the queued jobs in step order. ``publish(v)`` keeps a snapshot of version v
  and queues the batch of step v + k; before a job the thread loads its version into the engine when the engine
  holds another one. The learner trains step t while the thread generates step t + 1 .. t + k.

Rollout state that the learner changes (GAIN-RL's sampler, HAPO's adaptive temperature) is read when a batch is
queued: the batch of step t reads the state after update t - k - 1, a lag of k updates (``async/state_lag``).
Everything the schedule fixes (prompts, seeds, versions, the rollout state a batch reads) depends on the seed
and k alone, so runs are reproducible and resume is exact.

Dynamic sampling is a streaming filter inside a job: the job keeps generating groups (refill rounds, each with
new prompts from the sampler and its own seed) on the job's version until the step has its informative groups.
With k > 0 a batch's first-round prompts are drawn only once the previous batch has finished its refills, so the
sampler sees the same sequence of draws as with k = 0.

Layouts. One process: the engine the pipeline was given. Several learner ranks:

- k = 0, or k > 0 with a colocated engine (hf, vllm): every rank generates its share of the step's groups
  (``distributed.rollout: split``; collectives happen on the calling thread only).
- k > 0 with ``rlpost serve`` workers (vllm_server, shared by all ranks): rank 0 is the driver; it pushes each
  version, generates and refills the whole step, and every rank receives its contiguous share of the groups.

Engines at k > 0: the rollout engine belongs to the generation thread. ``hf`` gets a model of its own (a frozen
copy loaded with each version's full weights: merged LoRA, gathered ZeRO-3), so held-out evaluation stays on the
learner's model; ``vllm`` and ``vllm_server`` evaluate on the generation thread, on the current weights.

LoRA with ``model.lora.sync: adapter`` (rlpost/models/lora_sync.py ``lora_sync``): a version is the adapter alone, named
``policy-v{version}`` (evaluation's snapshot of the current weights: ``policy-v{version}-eval``); the engine keeps
the last k + 1 loaded live, so a job whose version is still live only activates it (no transfer).

Off-policy correction with k > 0: the learner's "old" log-probs are its own log-probs of the current weights
(the proximal policy), the sampler's are the behaviour policy, and the truncated importance weight
pi_old / pi_sampler (rlpost/algos/mismatch.py, mode token_truncate by default) corrects for the versions between.

Checkpoints. After step s the queued batches are s .. s + k. The checkpoint keeps the trajectories of those
generated on an older version than s (waiting for them) and the prompt indices, sampling params and sampler
state of those on version s, which the resumed run regenerates from the checkpointed weights: resume is exact.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from rlpost.algos.dynamic_sampling import informative_groups
from rlpost.config import ConfigError
from rlpost.distributed.weight_sync import push
from rlpost.rollout.schedule import RolloutJob, assign_group_ids, behaviour_version, sampling_params
from rlpost.timing import PhaseTimes

log = logging.getLogger("rlpost")


@dataclasses.dataclass
class JobResult:
    """What a job produced: the trajectories kept for training (this generator's share), the first round's
    trajectories and reward components (for the step's rollout metrics), and the dynamic-sampling counters."""
    kept: list
    first_round: list
    components: dict
    rounds: int = 1
    kept_groups: int | None = None      # dynamic sampling: informative groups kept (None: no filter)
    seconds: dict = dataclasses.field(default_factory=dict)   # generate / score seconds of the job


def snapshot(model, dist=None, adapter_name: str | None = None):
    """A copy of the weights an engine loads (merged LoRA, gathered ZeRO-3, names as in the HF state dict), or with
    ``adapter_name`` the LoRA adapter alone (:class:`~rlpost.models.lora_sync.AdapterWeights`)."""
    from rlpost.distributed.weight_sync import named_parameters_for_sync
    if adapter_name is not None:
        from rlpost.models.lora_sync import adapter_weights
        return adapter_weights(model, adapter_name)
    with torch.no_grad():
        return [(name, t.detach().clone()) for name, t in named_parameters_for_sync(model, dist)]


class RolloutPipeline:
    """See the module docstring.

    cfg:       the run's config (rollout.*, algo.dynamic_sampling, trainer.seed)
    engine:    the rollout engine (k > 0: used from the generation thread only)
    workflow:  the rollout workflow on ``engine``
    scorer:    :class:`~rlpost.rollout.scoring.Scorer`
    prompts:   the training prompts (indices drawn by ``sampler`` point into it)
    sampler:   the prompt sampler (``next_indices``, ``state_dict``)
    methods:   the active methods (their ``rollout_params`` hooks)
    dist:      the learner's :class:`~rlpost.distributed.Runtime`
    model:     the learner's model (its weights are published as versions)
    times:     the trainer's per-step phase times (k = 0 logs generate / score there)
    """

    def __init__(self, cfg, *, engine, workflow, scorer, prompts, sampler, methods, dist, model, times: PhaseTimes,
                 eval_engine=None, eval_workflow=None):
        r = cfg.rollout
        self.cfg, self.k, self.timeout_s = cfg, r.async_level, r.timeout_s
        self.engine, self.workflow, self.scorer = engine, workflow, scorer
        self.eval_engine = eval_engine or engine            # the engine held-out evaluation runs on
        self.eval_workflow = eval_workflow or workflow
        self.prompts, self.sampler, self.methods, self.dist, self.model = prompts, sampler, methods, dist, model
        self.times = times
        self.dynamic = cfg.algo.dynamic_sampling
        self.driver = dist.enabled and self.k > 0 and self._engine_shared_across_ranks()
        self.generates = not self.driver or dist.is_main   # driver layout: only rank 0 generates
        self.pending: dict[int, tuple[RolloutJob, Future]] = {}   # step -> (job, its future)
        self.weights: dict[int, list] = {}                  # version -> snapshot, while a queued job needs it
        self.version = None                                 # the newest published version
        self.engine_version: object = None                  # what the engine holds (the generating thread's view)
        self.sampler_state = None                           # sampler state after the newest job's first draws
        self.adapter_sync = self._adapter_sync()
        self.pool = None
        if self.k > 0 and self.generates:
            threads = cfg.trainer.num_threads or torch.get_num_threads()
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlpost-rollout",
                                           initializer=torch.set_num_threads, initargs=(threads,))

    def _adapter_sync(self) -> bool:
        """model.lora.sync as resolved (rlpost/models/lora_sync.py lora_sync), for an engine that loads adapters."""
        if self.cfg.model.lora.r <= 0 or not self.engine_has_own_weights:
            return False
        from rlpost.models.lora_sync import lora_sync
        mode, reason = lora_sync(self.cfg)
        if mode == "adapter" and not hasattr(self.engine, "load_adapter"):
            mode, reason = "merged", f"the {type(self.engine).__name__} engine loads no adapters"
        problem = getattr(self.engine, "lora_problem", None) if mode == "adapter" else None
        if problem:   # rlpost serve workers started without (enough) LoRA
            if "sync" in self.cfg.model.lora.__dict__.get("_explicit", ()):
                from rlpost.engines.base import EngineError
                raise EngineError(problem)
            mode, reason = "merged", problem
        log.info("model.lora.sync: %s%s", mode, f" ({reason})" if reason else "")
        return mode == "adapter"

    def _engine_shared_across_ranks(self) -> bool:
        shared = getattr(self.engine, "shared_across_ranks", None)
        return self.cfg.rollout.engine == "vllm_server" if shared is None else bool(shared)

    @property
    def engine_has_own_weights(self) -> bool:
        """False when the engine generates with the learner's model object itself (hf with k = 0)."""
        return getattr(self.engine, "model", None) is not self.model

    # ------------------------------------------------------------------ the trainer's side (main thread)
    def start(self, version: int, state: dict | None = None) -> None:
        """The learner holds version ``version`` (0, or a resumed checkpoint's step): push it, restore the queue a
        checkpoint kept (``state``), and queue the batches the schedule generates on it."""
        if state is not None:
            self.check_resumable(state)
            state = self._own_share(state)
        self.version = version
        self._check_base_weights()
        if self.k == 0:
            self._push_live()
            return
        self.weights[version] = self._snapshot()
        for j in (state or {}).get("jobs", []):
            self._restore(j, version)
        if state is not None and state.get("sampler") is not None:
            self.sampler.load_state_dict(state["sampler"])
        for step in range(version, version + self.k + 1):   # (a resumed run with a larger max_steps queues
            if step not in self.pending:                      # the batches its checkpoint had not)
                self._queue(step)

    def check_resumable(self, state: dict, path=None) -> None:
        """ConfigError when a checkpoint's queue was written with another lookahead (the batch schedule differs)."""
        if state.get("level", 0) != self.k:
            raise ConfigError(f"rollout.async_level={self.k}, but {path or 'the checkpoint'} was written with "
                              f"async_level={state.get('level', 0)}: resume with the same value (the batch "
                              "schedule differs)")

    def _own_share(self, state: dict) -> dict:
        """This rank's queue of a checkpoint written by every rank (``ranks``), or the single process's."""
        if "ranks" not in state:
            if self.dist.enabled and state.get("jobs"):
                raise ConfigError("the checkpoint's rollout queue was written by a single process; resume it with "
                                  "distributed.backend=none")
            return state
        if len(state["ranks"]) != self.dist.world_size:
            raise ConfigError(f"the checkpoint's rollout queue was written by {len(state['ranks'])} ranks, this run has "
                              f"{self.dist.world_size}: resume with the same number of ranks")
        return state["ranks"][self.dist.rank]

    def publish(self, version: int) -> None:
        """The learner's model is version ``version`` now. k = 0: an engine with its own weights gets them now
        (collective under ZeRO-3); k > 0: keep a snapshot and queue the batch of step version + k."""
        self.version = version
        if self.k == 0:
            self._push_live()
            return
        self.weights[version] = self._snapshot()
        self._queue(version + self.k)

    def batch(self, step: int) -> tuple[list, dict]:
        """This rank's scored trajectories of ``step`` and the step's rollout metrics (over all ranks)."""
        if self.k == 0:
            self._queue(step)
        job, future = self.pending.pop(step)
        if self.k == 0:     # produced inline: its generate / score seconds are this step's
            result = future.result()
            for phase, seconds in result.seconds.items():
                self.times.seconds[phase] = self.times.seconds.get(phase, 0.0) + seconds
        else:
            with self.times("generate_wait"):   # the time the learner waits for rollouts
                result = future.result(timeout=self.timeout_s) if future is not None else None
        if self.driver:
            result = self.dist.broadcast_object(result if self.dist.is_main else None)
        trajs = self._local_share(result.kept)
        metrics = self._metrics(step, job, result)
        self._drop_unused_weights()
        return trajs, metrics

    def evaluate(self, run, changed_since_publish: bool = False) -> dict:
        """``run(workflow, engine)`` on the learner's current weights: on the generation thread when it owns the
        engine, else here. ``changed_since_publish``: the learner updated after the last publish (a method's
        mid-step evaluation), so an engine with its own weights gets them first."""
        if self.k == 0 or self.eval_engine is not self.engine:
            if changed_since_publish and self.k == 0:
                self._push_live()
            with self._learner_weights(self.eval_engine):
                return run(self.eval_workflow, self.eval_engine)
        weights = self._snapshot(eval_=True)
        if not self.generates:        # driver layout: rank 0's thread evaluates; the others take its numbers
            return self.dist.broadcast_object(None)

        def on_thread():
            push(self.engine, weights)
            self.engine_version = "current"   # the next job reloads its own version
            return run(self.workflow, self.engine)
        out = self.pool.submit(on_thread).result(timeout=self.timeout_s)
        return self.dist.broadcast_object(out) if self.driver else out

    def state_dict(self, version: int) -> dict:
        """Queued work for a checkpoint at ``version``: the results of jobs on older versions (waits for them), the
        prompts, params and sampler state of the others (regenerated on resume). A job that failed (its engine
        died) is kept as one to regenerate, on the checkpoint's version. Several ranks: every rank's queue (each
        holds its own share), gathered (collective) for the checkpoint that rank 0 writes."""
        local = self._local_state(version)
        if not self.dist.enabled:
            return local
        return {"level": self.k, "ranks": self.dist.all_gather_object(local)}

    def _local_state(self, version: int) -> dict:
        jobs = []
        for step in sorted(self.pending):
            job, future = self.pending[step]
            result = None
            if job.version < version and future is not None:
                try:
                    result = future.result(timeout=self.timeout_s)
                except Exception as err:  # noqa: BLE001 - the failure is raised by batch(); keep the rest
                    log.warning("async rollouts: the batch of step %d failed (%s); the checkpoint regenerates it on "
                                "version %d", step, err, version)
                    job = dataclasses.replace(job, version=version)
            jobs.append({"step": job.step, "indices": list(job.indices), "version": job.version,
                         "params": job.params, "state_lag": job.state_lag, "result": result})
        regenerated = any(j["result"] is None for j in jobs)   # its refills redraw from the state after its first draws
        return {"level": self.k, "jobs": jobs, "sampler": self.sampler_state if regenerated else None}

    def close(self) -> None:
        """Cancel queued jobs and stop the generation thread (a running job finishes first)."""
        for _, future in self.pending.values():
            if future is not None:
                future.cancel()
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ queueing
    def _queue(self, step: int) -> None:
        """Draw the first-round prompts of ``step`` now (in step order) and queue its generation on its version
        (at least the newest: only a resumed run whose checkpoint stopped short of this batch needs that)."""
        if step >= self.cfg.trainer.max_steps or step in self.pending:
            return
        version = behaviour_version(step, self.k)
        if version > self.version:
            return   # (queued when its version is published)
        if version < self.version and self.k > 0:
            log.warning("async rollouts: the batch of step %d is generated on version %d, not %d (the checkpoint was "
                        "written by a run with a smaller trainer.max_steps)", step, self.version, version)
            version = self.version
        if self.dynamic and self.k > 0:       # refills draw from the sampler: the previous batch draws first
            self._wait_for_draws(step)
        indices = self._draw(self._groups_needed())
        params = sampling_params(self.cfg, self.methods, "rollout", 0, step)
        job = RolloutJob(step, list(indices), version, params, state_lag=step - self.version)
        self.sampler_state = copy.deepcopy(self.sampler.state_dict())
        self._submit(job)

    def _submit(self, job: RolloutJob, result: JobResult | None = None) -> None:
        if not self.generates:
            self.pending[job.step] = (job, None)
            return
        if result is not None:
            future: Future = Future()
            future.set_result(result)
        elif self.pool is None:         # k = 0: produced inline when batch() takes it
            future = Future()
            try:
                with self._learner_weights(self.engine):
                    future.set_result(self._produce(job))
            except BaseException as err:  # noqa: BLE001 - re-raised by batch()
                future.set_exception(err)
                raise
        else:
            future = self.pool.submit(self._run, job, self.weights[job.version])
        self.pending[job.step] = (job, future)

    def _restore(self, saved: dict, version: int) -> None:
        job = RolloutJob(saved["step"], list(saved["indices"]), saved["version"], saved.get("params"),
                         saved.get("state_lag", 0))
        if saved["result"] is None and job.version != version and self.generates:
            raise ValueError(f"checkpoint: queued batch of step {job.step} (version {job.version}) has no "
                             f"trajectories and is not on the checkpoint's version {version}")
        if job.params is None:
            job.params = sampling_params(self.cfg, self.methods, "rollout", 0, job.step)
        self._submit(job, saved["result"])

    def _wait_for_draws(self, step: int) -> None:
        previous = self.pending.get(step - 1)
        if previous is not None and previous[1] is not None:
            previous[1].exception(timeout=self.timeout_s)   # done (its error, if any, is raised by batch())

    def _groups_needed(self) -> int:
        count = self.cfg.rollout.prompts_per_step
        return count if self.driver else self.dist.local_prompt_count(count)

    def _draw(self, count: int) -> list[int]:
        """Prompt indices: the driver draws the whole step, otherwise each rank its share (in lockstep)."""
        return self.sampler.next_indices(count) if self.driver else self.dist.draw(self.sampler, count)

    # ------------------------------------------------------------------ producing a batch
    def _run(self, job: RolloutJob, weights: list) -> JobResult:
        """On the generation thread: load the job's version when the engine holds another one, then produce it."""
        if self.engine_version != job.version:
            live = self.adapter_sync and self.engine.use_adapter(self._adapter_name(job.version))
            if not live:
                push(self.engine, weights)
            self.engine_version = job.version
        return self._produce(job)

    def _produce(self, job: RolloutJob) -> JobResult:
        """Generate and score the batch of ``job``; with dynamic sampling keep only informative groups, refilling
        from new prompts (and seeds) up to algo.max_refill_rounds times, on the job's version."""
        a = self.cfg.algo
        seconds = PhaseTimes()
        rounds = 1 + (a.max_refill_rounds if self.dynamic else 0)
        target = groups_needed = len(job.indices)
        kept, first, components, indices = [], [], {}, job.indices
        for round_ in range(rounds):
            if round_ > 0:
                indices = self._draw(groups_needed)
            if not indices:   # several ranks: this one is full while others refill (their draws stay in lockstep)
                if self._refills_done(groups_needed):
                    break
                continue
            draws = [copy.copy(self.prompts[i]) for i in indices]   # one object per draw: a prompt twice is two groups
            params = job.params if round_ == 0 else sampling_params(self.cfg, self.methods, "rollout", round_, job.step)
            with seconds("generate"):
                trajs = self.workflow.rollout(draws, params)
            assign_group_ids(trajs, draws, round_, rounds, len(self.prompts))
            for t in trajs:
                t.policy_version = job.version
            with seconds("score"):
                comps = self.scorer.score(trajs)
            if round_ == 0:
                first, components = trajs, comps
            if not self.dynamic:
                return JobResult(trajs, first, components, seconds=seconds.seconds)
            keep = informative_groups(torch.tensor([t.reward for t in trajs]),
                                      torch.tensor([t.group_id for t in trajs]))
            kept += [t for t, k in zip(trajs, keep.tolist()) if k]
            groups_needed = target - len({t.group_id for t in kept})
            if self._refills_done(groups_needed):
                break
        group_ids = sorted({t.group_id for t in kept})[:target]
        chosen = set(group_ids)
        kept = [t for t in kept if t.group_id in chosen] or trajs   # none informative: the last round (zero advantages)
        return JobResult(kept, first, components, rounds=round_ + 1, kept_groups=len(group_ids),
                         seconds=seconds.seconds)

    def _refills_done(self, groups_needed: int) -> bool:
        return groups_needed <= 0 if self.driver else self.dist.done(groups_needed)

    # ------------------------------------------------------------------ weights
    def _push_live(self) -> None:
        """k = 0: an engine with its own weights gets the learner's current ones (merged LoRA, gathered ZeRO-3)."""
        if self.engine_has_own_weights:
            from rlpost.distributed.weight_sync import sync_engine
            sync_engine(self.engine, self.model, self.dist,
                        adapter_name=self._adapter_name(self.version) if self.adapter_sync else None)
        self.engine_version = self.version

    def _check_base_weights(self) -> None:
        """Adapter sync: an engine whose base is not the learner's (a reused rlpost serve worker) gets the learner's
        base weights once (rlpost/models/lora_sync.py); rank 0 alone for workers all ranks share."""
        needs = getattr(self.engine, "needs_base_weights", None)
        if not self.adapter_sync or needs is None or not self.generates:
            return
        if self.dist.enabled and not self.dist.is_main and self._engine_shared_across_ranks():
            return
        from rlpost.models.lora_sync import base_named_parameters
        from rlpost.serving.weights import weights_fingerprint
        if needs(weights_fingerprint(base_named_parameters(self.model))):
            log.info("model.lora.sync=adapter: the rollout engine's base weights are not the learner's; sending them "
                     "once")
            self.engine.load_weights(base_named_parameters(self.model))

    def _adapter_name(self, version, eval_: bool = False) -> str:
        return f"policy-v{version}" + ("-eval" if eval_ else "")

    def _snapshot(self, eval_: bool = False):
        """The learner's current weights for this rank's generator (None on a rank that does not generate, which
        still takes part in the gathers of sharded parameters: they are collective). Adapter sync: the adapter of
        version ``self.version`` (``eval_``: of the weights evaluation runs on, which may be newer)."""
        if self.generates and self.adapter_sync:
            return snapshot(self.model, self.dist, self._adapter_name(self.version, eval_))
        if self.generates:
            return snapshot(self.model, self.dist)
        if self.dist.gathers_parameters:
            for _ in snapshot(self.model, self.dist):
                pass
        return None

    def _learner_weights(self, engine):
        """An engine that generates with the learner's own model: under ZeRO-3 its parameters gathered (and the
        fetch hooks off) for the whole batch, collective on all ranks (which produce a batch in lockstep)."""
        on_learner = getattr(engine, "model", None) is self.model
        return self.dist.full_parameters() if on_learner else contextlib.nullcontext()

    def _drop_unused_weights(self) -> None:
        """Forget the snapshots no queued job needs (the newest stays: the next queued batch may need it)."""
        needed = {job.version for job, _ in self.pending.values()}
        newest = max(self.weights, default=None)
        for v in [v for v in self.weights if v not in needed and v != newest]:
            del self.weights[v]

    # ------------------------------------------------------------------ this rank's rows and the metrics
    def _local_share(self, trajs: list) -> list:
        """The driver's whole step or replicated rollouts: this rank's contiguous share of the groups."""
        from rlpost.distributed.sharding import group_share
        if self.driver or (self.dist.enabled and not self.dist.split):
            return group_share(trajs, self.dist.rank, self.dist.world_size)
        return trajs

    def _metrics(self, step: int, job: RolloutJob, result: JobResult) -> dict:
        """Rollout metrics over all ranks' first-round trajectories, dynamic-sampling counters, async metrics."""
        first, components = result.first_round, result.components
        if not self.driver:
            first, components = self.dist.gather_for_metrics(first, components)
        metrics = self.scorer.metrics(first, components)
        if result.kept_groups is not None:
            kept = result.kept_groups if self.driver else self.dist.global_count(result.kept_groups)
            metrics.update({"dynamic_sampling/kept_groups": kept, "dynamic_sampling/rounds": result.rounds})
        if self.k > 0:
            staleness = [step - t.policy_version for t in result.kept]
            metrics.update({"async/staleness_mean": sum(staleness) / max(len(staleness), 1),
                            "async/staleness_max": max(staleness, default=0), "async/state_lag": job.state_lag,
                            "async/queued_batches": len(self.pending)})
            if "generate" in result.seconds:
                metrics["async/generate_time"] = result.seconds["generate"]
            if "score" in result.seconds:
                metrics["async/score_time"] = result.seconds["score"]
        return metrics
