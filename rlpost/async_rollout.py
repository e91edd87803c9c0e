"""Asynchronous rollouts (``rollout.async_level: k``): generation of later batches overlaps the learner's update.

Policy versions. Version v is the weights after v RL updates (v = 0: the initial weights); the learner trains
step t (0-based) on version t and produces version t+1. Every trajectory records the version that sampled it
(``Trajectory.policy_version``); the learner's staleness on it is ``t - policy_version``.

The schedule is fixed by the seed and k alone, so a run is reproducible and resume is exact:

    batch of step t: its prompts drawn in step order, its rollout seed derived_seed(seed, t, "rollout", 0),
                     generated on the weights of version max(0, t - k)
    k = 0: today's synchronous loop (the trainer does not build this driver at all: bit for bit the old loop)
    k = 1: one-step-off: batch t+1 is generated on version t while the learner updates step t (staleness 1)
    k > 1: bounded staleness: no batch is trained more than k versions after the one that sampled it

Batch t needs version t-k, published when step t-k-1 ends; so when the learner finishes a step (version s) the
driver submits batch s+k, and before step 0 batches 0..k (all on version 0). One generation thread runs the
jobs in submission order; before a job it loads the job's weights into the rollout engine when the engine holds
another version. The weights of a version are a snapshot (a copy) taken when it is published and dropped once
no queued job needs it.

Engines. The rollout engine is used from the generation thread only:
- ``hf``: a second model object (a deep copy of the learner's, loaded with each snapshot): one more copy of the
  weights in memory, plus up to k snapshots; evaluation stays on the learner's own model in the main thread.
- ``vllm``: the colocated engine, used from the generation thread only (evaluation too, as for vllm_server).
- ``vllm_server``: the ``rlpost serve`` workers; a version's weights are pushed (with the fingerprint handshake
  of rlpost/engines/vllm_server.py) by the generation thread right before the first job that needs them, while
  the learner keeps updating. Evaluation runs on the generation thread too, on a snapshot of the current weights.

Off-policy correction. The learner's "old" log-probs stay the proximal policy (the learner's own log-probs of
the current weights, recomputed), and the behaviour policy (the sampler log-probs the engine returned) enters
through the truncated importance weight pi_old / pi_sampler: AReaL's decoupled PPO objective (Fu et al. 2025),
with the existing correction of rlpost/algos/mismatch.py. With async_level > 0 it is switched on by default in
mode ``token_truncate`` (clip_max 3.0, per-token weights: a sequence-level ratio over a stale policy is often
far outside the clip range and would drop whole samples); set ``algo.vllm_importance_sampling_*`` to choose.

Checkpoints. After step s the queued batches are s..s+k. A checkpoint keeps the trajectories of those generated
on an older version than s (waiting for them if needed) and only the prompt indices of those on version s,
which the resumed run regenerates from the checkpointed weights with the same seed: resume is exact.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch

from rlpost.config import ConfigError, component, explicit_fields

SYNC_WORKFLOWS = ("single_turn",)   # workflows that run asynchronously (one engine call per trajectory)
ASYNC_IS_MODE = "token_truncate"    # the default off-policy correction with async_level > 0


@dataclasses.dataclass
class RolloutJob:
    """One batch to generate. step: the RL step that trains on it; indices: its prompts (training-set rows, in
    draw order); version: the policy version whose weights generate it, max(0, step - k)."""
    step: int
    indices: list[int]
    version: int


def behaviour_version(step: int, level: int) -> int:
    """The policy version that generates the batch of ``step`` with ``rollout.async_level = level``."""
    return max(0, step - level)


# ---------------------------------------------------------------------------------------------- config rules

def check_async(cfg) -> None:
    """ConfigError, with the reason, for what does not run with ``rollout.async_level > 0``."""
    r, a = cfg.rollout, cfg.algo
    if r.async_level <= 0:
        return
    why = "rollout.async_level > 0 generates the next batch before this step's update is known"
    if a.dynamic_sampling:
        raise ConfigError(f"algo.dynamic_sampling does not work with rollout.async_level={r.async_level}: its refill "
                          "rounds choose new prompts from the rewards of the step's own rollouts; set "
                          "algo.dynamic_sampling=false or rollout.async_level=0")
    if component(r.logits_processor)[0] == "hapo_temperature" or "hapo" in (cfg.method or {}):
        raise ConfigError(f"method hapo / rollout.logits_processor hapo_temperature does not work with "
                          f"rollout.async_level={r.async_level}: HAPO's rollout temperature for step t+1 is set from "
                          f"step t's entropy statistics ({why}); use rollout.async_level=0")
    if component(cfg.data.sampler)[0] == "gain_rl" or "gain_rl" in (cfg.method or {}):
        raise ConfigError(f"data.sampler gain_rl does not work with rollout.async_level={r.async_level}: GAIN-RL "
                          f"draws step t+1's prompts from step t's accuracy and angle ({why}); use "
                          "rollout.async_level=0")
    workflow = component(r.workflow)[0]
    if workflow not in SYNC_WORKFLOWS:
        raise ConfigError(f"rollout.workflow {workflow} does not work with rollout.async_level={r.async_level}: "
                          "multi-call workflows (apr, a2fm) keep trees, tool calls and group scoring across engine "
                          f"calls; async rollouts support {', '.join(SYNC_WORKFLOWS)} only; use rollout.async_level=0")
    if r.engine == "vllm" and r.enable_sleep_mode:
        raise ConfigError(f"rollout.enable_sleep_mode does not work with rollout.async_level={r.async_level}: the "
                          "colocated engine generates during the learner's update instead of sleeping through it")
    if cfg.distributed.backend != "none":
        raise ConfigError(f"rollout.async_level={r.async_level} is single-process for now: set "
                          "distributed.backend=none (or rollout.async_level=0)")
    if r.engine == "hf" and cfg.model.lora.r > 0:
        raise ConfigError("rollout.async_level > 0 with rollout.engine=hf copies the model for the generation thread, "
                          "which model.lora does not support yet; use rollout.engine=vllm_server or model.lora.r=0")


def is_settings(cfg) -> dict:
    """The effective ``algo.vllm_importance_sampling_*`` values: with async_level > 0 the correction is on, in
    mode token_truncate, unless the user set those keys; unchanged otherwise."""
    a = cfg.algo
    keys = ("vllm_importance_sampling_correction", "vllm_importance_sampling_mode",
            "vllm_importance_sampling_clip_max", "vllm_importance_sampling_clip_min")
    out = {k: getattr(a, k) for k in keys}
    if cfg.rollout.async_level > 0:
        given = explicit_fields(a)
        if "vllm_importance_sampling_correction" not in given:
            out["vllm_importance_sampling_correction"] = True
        if "vllm_importance_sampling_mode" not in given:
            out["vllm_importance_sampling_mode"] = ASYNC_IS_MODE
    return out


# ---------------------------------------------------------------------------------------------- the driver

def snapshot(model) -> list[tuple[str, torch.Tensor]]:
    """A copy of the weights an engine loads (merged LoRA, names as in the HF state dict)."""
    from rlpost.distributed.weight_sync import named_parameters_for_sync
    with torch.no_grad():
        return [(name, t.detach().clone()) for name, t in named_parameters_for_sync(model)]


def generator_copy(model):
    """The hf engine's own model for the generation thread: a frozen deep copy of the learner's."""
    twin = copy.deepcopy(model)
    twin.requires_grad_(False)
    return twin.eval()


class AsyncRollout:
    """The queue of in-flight generations, the staleness bound and the weight pushes (see the module docstring).

    engine:     the rollout engine, used from the generation thread only
    rollout_fn: job -> trajectories (prompts, sampling params, workflow call, group ids), run on that thread
    level:      rollout.async_level (k >= 1)
    timeout_s:  bound on any wait for a job (rollout.timeout_s)
    """

    def __init__(self, engine, rollout_fn: Callable[[RolloutJob], list], level: int, timeout_s: float,
                 num_threads: int | None = None):
        self.engine, self.rollout_fn, self.level, self.timeout_s = engine, rollout_fn, level, timeout_s
        threads = num_threads or torch.get_num_threads()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlpost-rollout",
                                       initializer=torch.set_num_threads, initargs=(threads,))
        self.snapshots: dict[int, list] = {}       # version -> weights, while a queued job needs them
        self.pending: dict[int, tuple[RolloutJob, Future]] = {}   # step -> (job, its future)
        self.engine_version: object = None         # what the engine holds (generation thread only)
        self.generate_seconds: dict[int, float] = {}   # step -> seconds its generation took (generation thread)

    # ---- main thread
    def publish(self, version: int, model) -> None:
        """Version ``version`` of the weights is ``model`` now: keep a snapshot for the jobs that will need it."""
        self.snapshots[version] = snapshot(model)

    def submit(self, job: RolloutJob, result: list | None = None) -> None:
        """Queue ``job`` (its version must be published); ``result``: its trajectories, already generated."""
        if result is not None:
            future: Future = Future()
            future.set_result(result)
        else:
            future = self.pool.submit(self._run, job, self.snapshots[job.version])
        self.pending[job.step] = (job, future)

    def take(self, step: int) -> tuple[list, dict]:
        """The trajectories of ``step`` (waiting for them) and the async metrics of the batch."""
        job, future = self.pending.pop(step)
        trajs = future.result(timeout=self.timeout_s)
        self._drop_unused_snapshots()
        staleness = [step - t.policy_version for t in trajs]
        metrics = {"async/staleness_mean": sum(staleness) / max(len(staleness), 1),
                   "async/staleness_max": max(staleness, default=0), "async/queued_batches": len(self.pending)}
        if step in self.generate_seconds:   # absent for a batch restored from a checkpoint
            metrics["async/generate_time"] = self.generate_seconds.pop(step)
        return trajs, metrics

    def exclusive(self, fn: Callable[[], dict], model) -> dict:
        """Run ``fn`` on the generation thread with the current weights of ``model`` in the engine (evaluation
        on an engine that the generation thread owns), after the jobs queued before it."""
        weights = snapshot(model)

        def run():
            self.engine.load_weights(iter(weights))
            self.engine_version = "exclusive"   # the next job reloads its own version
            return fn()
        return self.pool.submit(run).result(timeout=self.timeout_s)

    def state_dict(self, current_version: int) -> dict:
        """Queued work for a checkpoint at ``current_version``: the trajectories of jobs generated on an older
        version (waits for them), the prompt indices of the others (regenerated on resume)."""
        jobs = []
        for step in sorted(self.pending):
            job, future = self.pending[step]
            done = future.result(timeout=self.timeout_s) if job.version < current_version else None
            jobs.append({"step": job.step, "indices": list(job.indices), "version": job.version, "result": done})
        return {"level": self.level, "jobs": jobs}

    def load_state_dict(self, state: dict, current_version: int) -> None:
        """Requeue a checkpoint's jobs: saved trajectories as they are, the rest regenerated on ``current_version``
        (which must be published)."""
        if state.get("level") != self.level:
            raise ConfigError(f"rollout.async_level={self.level}, but the checkpoint was written with "
                              f"async_level={state.get('level')}: resume with the same value")
        for j in state["jobs"]:
            job = RolloutJob(j["step"], list(j["indices"]), j["version"])
            if j["result"] is None and job.version != current_version:
                raise ValueError(f"checkpoint: queued batch of step {job.step} (version {job.version}) has no "
                                 f"trajectories and is not on the checkpoint's version {current_version}")
            self.submit(job, j["result"])

    def close(self) -> None:
        """Cancel queued jobs and stop the thread (a running job finishes first)."""
        for _, future in self.pending.values():
            future.cancel()
        self.pending.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)

    # ---- generation thread
    def _run(self, job: RolloutJob, weights: list) -> list:
        """Generate ``job`` on its weights (loaded only when the engine holds another version); tag the versions."""
        if self.engine_version != job.version:
            self.engine.load_weights(iter(weights))
            self.engine_version = job.version
        start = time.perf_counter()
        trajs = self.rollout_fn(job)
        self.generate_seconds[job.step] = time.perf_counter() - start
        for t in trajs:
            t.policy_version = job.version
        return trajs

    def _drop_unused_snapshots(self) -> None:
        """Forget the snapshots no queued job needs (the newest stays: the next queued batch may need it)."""
        needed = {job.version for job, _ in self.pending.values()}
        newest = max(self.snapshots, default=None)
        for v in [v for v in self.snapshots if v not in needed and v != newest]:
            del self.snapshots[v]
