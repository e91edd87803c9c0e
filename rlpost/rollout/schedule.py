"""The rollout schedule: which prompts, seed, sampling params and policy version make the batch of step t.

Policy versions. Version v is the weights after v RL updates (v = 0: the initial weights); the learner trains
step t (0-based) on version t and produces version t+1. With ``rollout.async_level = k`` (the lookahead):

    batch of step t: its first-round prompts drawn in step order, its rollout seed derived from
                     (seed, t, "rollout", round), generated on the weights of version max(0, t - k)
    k = 0: generate, score, update, publish (the synchronous loop: the same code with no lookahead)
    k = 1: one-step-off: batch t+1 is generated on version t while the learner updates step t (staleness 1)
    k > 1: bounded staleness: no batch is trained more than k versions after the one that sampled it

The schedule depends on the seed and k alone, so a run is reproducible and resume is exact.
"""
from __future__ import annotations

import dataclasses

from rlpost.config import ConfigError, explicit_fields
from rlpost.engines.base import SamplingParams, stable_seed

ASYNC_IS_MODE = "token_truncate"    # the default off-policy correction with async_level > 0


@dataclasses.dataclass
class RolloutJob:
    """One batch to generate.

    step:      the RL step that trains on it
    indices:   its first-round prompts (training-set rows, in draw order; this rank's share)
    version:   the policy version whose weights generate it, max(0, step - k)
    params:    its first-round sampling params (seeded; the methods' rollout hooks applied when it was queued)
    state_lag: updates between the rollout state it read (sampler, method hooks) and the step that trains on it
    """
    step: int
    indices: list[int]
    version: int
    params: SamplingParams | None = None
    state_lag: int = 0


def behaviour_version(step: int, level: int) -> int:
    """The policy version that generates the batch of ``step`` with ``rollout.async_level = level``."""
    return max(0, step - level)


def derived_seed(*parts) -> int:
    """A stable 62-bit seed from the run seed, the step and a purpose tag (resume-safe)."""
    return stable_seed(*parts)


def sampling_params(cfg, methods: dict, purpose: str, round_: int, step: int) -> SamplingParams:
    """The rollout's sampling params for ``step``, seeded from (seed, step, purpose, round), after the methods'
    ``rollout_params`` hooks (HAPO's adaptive temperature)."""
    r = cfg.rollout
    params = SamplingParams(n=r.num_generations, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                            min_p=r.min_p, repetition_penalty=r.repetition_penalty,
                            max_tokens=r.max_completion_length, stop=list(r.stop),
                            seed=derived_seed(cfg.trainer.seed, step, purpose, round_),
                            return_entropy=r.return_entropy)
    for method in methods.values():
        params = method.rollout_params(params, purpose, step)
    return params


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


# ---------------------------------------------------------------------------------------------- config rules

def check_async(cfg) -> None:
    """ConfigError, with the reason and the nearest setting that works, for what does not run with
    ``rollout.async_level > 0``."""
    r = cfg.rollout
    if r.async_level <= 0:
        return
    if r.engine == "vllm" and r.enable_sleep_mode:
        raise ConfigError(f"rollout.enable_sleep_mode does not work with rollout.async_level={r.async_level}: the "
                          "colocated engine generates during the learner's update instead of sleeping through it; "
                          "set rollout.enable_sleep_mode=false")
    multi_rank = cfg.distributed.backend != "none"
    if multi_rank and cfg.algo.dynamic_sampling and r.engine != "vllm_server":
        raise ConfigError(f"algo.dynamic_sampling with rollout.async_level={r.async_level} and several learner "
                          f"ranks needs rollout.engine=vllm_server (one driver generates and refills for all ranks; "
                          "colocated engines refill per rank in lockstep, which the generation thread cannot do "
                          "beside the learner's collectives)")


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
