"""GAIN-RL method hooks (rlpost/algos/gain_rl.py holds the math; docs/algos/gain_rl.md the YAML).

``data.sampler: {name: gain_rl, ...}`` plus ``method: {gain_rl: {}}``:

1. setup: one prefill pass scores every training prompt's angle concentration
   (:func:`compute_angle_scores`), cached under ``$RLPOST_CACHE/angles`` by (model path, revision, a weight
   fingerprint, the tokenized prompts, the scoring knobs); the sampler built with the scores
   (``rlpost.samplers.build_sampler(..., scores=...)``) is returned in ``Needs.sampler`` for the trainer to draw with.
2. every step: an :class:`MLPInputHook` around each micro-batch of the learner's old-policy forward
   (``Needs.old_forward_hooks``) gives the training-time angle :func:`sequence_angle` of every sequence,
   over prompt+response (``angle_span: full``) or the prompt only;
3. after the update: ``sampler.update({"accuracy", "angle"})`` with the step's accuracy (share of
   completions the first reward function scores >= 1, as ``eval/accuracy``) and the mean angle.

Logged: ``gain_rl/mu``, ``gain_rl/delta_mu``, ``gain_rl/accuracy``, ``gain_rl/angle`` (mean training-time
angle of the step's sequences), ``gain_rl/sampled_rank_mean``, ``gain_rl/sampled_score_mean`` (mean
offline angle score of the prompts drawn).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path

import torch

from rlpost.algos.data_samplers import DATA_SAMPLERS
from rlpost.algos.gain_rl import (
    MLPInputHook, angle_cache_key, cached_angle_scores, compute_angle_scores, decoder_layers, sequence_angle,
)
from rlpost.config import ConfigError
from rlpost.methods import METHODS, MethodHooks, Needs, SetupContext, StepContext
from rlpost.methods._util import active, name_of, params_of

log = logging.getLogger("rlpost")


def validate(cfg) -> None:
    uses_sampler = name_of(cfg.data.sampler) == "gain_rl"
    if uses_sampler and not active(cfg, "gain_rl"):
        raise ConfigError("data.sampler gain_rl needs `method: {gain_rl: {}}`: it computes the offline angle "
                          "scores and feeds the sampler the step's accuracy and training-time angle")
    if active(cfg, "gain_rl") and not uses_sampler:
        raise ConfigError("method.gain_rl drives the GAIN-RL curriculum: set data.sampler: {name: gain_rl, ...}")
    if not uses_sampler:
        return
    p = params_of(DATA_SAMPLERS, cfg.data.sampler, "data.sampler")
    if p.acc_scale <= 0:
        raise ConfigError(f"data.sampler gain_rl: acc_scale divides the accuracy and must be > 0, got {p.acc_scale}")
    if p.max_length < 1 or p.score_batch_size < 1:
        raise ConfigError("data.sampler gain_rl: max_length and score_batch_size must be >= 1")
    d = cfg.data
    if d.train_path is None and d.task is not None and cfg.rollout.prompts_per_step > d.num_train:
        raise ConfigError(f"data.sampler gain_rl draws rollout.prompts_per_step = {cfg.rollout.prompts_per_step} "
                          f"distinct prompts per step, but data.num_train is {d.num_train}")


def prompt_mask(mb) -> torch.Tensor:
    """[B,W] 1 on prompt tokens: positions < P_i, with P_i = completion_index[i, 0] + 1 (whole row if no completion)."""
    total = mb.attention_mask.sum(-1)                                            # [B]
    first = mb.completion_index[:, 0]
    prompt_len = torch.where(first > 0, first + 1, total)                         # [B]
    pos = torch.arange(mb.attention_mask.shape[1], device=total.device)
    return (pos[None, :] < prompt_len[:, None]).long() * mb.attention_mask


def model_fingerprint(model) -> str:
    """Cheap weight fingerprint: shapes of all parameters and the first values of the first and last."""
    params = list(model.parameters())
    h = hashlib.sha256(repr([tuple(p.shape) for p in params]).encode())
    for p in (params[0], params[-1]):
        h.update(p.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@METHODS.register("gain_rl")
class GainRLMethod(MethodHooks):
    """Offline angle scores -> the gain_rl sampler; per-step accuracy + training-time angle -> its update."""

    def __init__(self, cache_dir: str | None = None):
        self.cache_dir = cache_dir                 # None: $RLPOST_CACHE/angles
        self.params = None
        self.sampler = None                        # the gain_rl sampler this method builds (the trainer draws with it)
        self._angle_sum, self._angle_n = 0.0, 0

    def setup(self, ctx: SetupContext) -> Needs:
        from rlpost.models.tiny import cache_root
        from rlpost.samplers import build_sampler
        from rlpost.workflows.single_turn import tokenize_prompts

        cfg = ctx.cfg
        validate(cfg)
        p = self.params = params_of(DATA_SAMPLERS, cfg.data.sampler, "data.sampler")
        n = len(ctx.train_prompts)
        if cfg.rollout.prompts_per_step > n:
            raise ConfigError(f"data.sampler gain_rl draws rollout.prompts_per_step = {cfg.rollout.prompts_per_step} "
                              f"distinct prompts per step from {n} training rows")
        try:
            decoder_layers(ctx.model)[p.layer]
        except (IndexError, ValueError) as err:
            raise ConfigError(f"data.sampler gain_rl: layer {p.layer} does not exist in the model ({err})") from None
        if p.sigma >= n:
            log.warning("gain_rl: sigma=%s ranks >= %d training rows: the curriculum is close to uniform", p.sigma, n)
        if p.angle_order:   # a precomputed order (e.g. the authors' sorted indices): no scoring pass
            log.info("gain_rl: angle order from %s (no offline scoring pass)", p.angle_order)
            scores = [float("nan")] * n
        else:
            ids = tokenize_prompts(ctx.tokenizer, ctx.train_prompts)
            data_hash = hashlib.sha256(repr(ids).encode()).hexdigest()[:16]
            key = angle_cache_key(ctx.model_path, cfg.model.revision, model_fingerprint(ctx.model), data_hash,
                                  p.layer, p.n_prefix, p.n_suffix, p.w_intra, p.w_inter, p.max_length)
            cache = Path(self.cache_dir) if self.cache_dir else cache_root() / "angles"
            scores = cached_angle_scores(cache, key, lambda: compute_angle_scores(
                ctx.model, ctx.tokenizer, ids, p.layer, p.score_batch_size, p.n_prefix, p.n_suffix,
                p.w_intra, p.w_inter, p.max_length))
        self.sampler = build_sampler(cfg.data.sampler, n, cfg.trainer.seed, cfg.data.shuffle_dataset, scores=scores)
        self.reward_name = cfg.rewards[0].name
        return Needs(sampler=self.sampler, old_forward_hooks=(self.angle_hook,))

    @contextlib.contextmanager
    def angle_hook(self, model, mb):
        """Around one old-policy micro-batch forward: capture the MLP input, reduce it to one angle per row."""
        with MLPInputHook(model, self.params.layer) as hook:
            yield
        span = mb.attention_mask if self.params.angle_span == "full" else prompt_mask(mb)
        angles = sequence_angle(hook.hidden, span.to(hook.hidden.device))            # [b]
        self._angle_sum += float(angles.sum())
        self._angle_n += angles.numel()

    def after_update(self, ctx: StepContext) -> dict:
        trajectories = ctx.trajectories
        correct = sum(float((t.reward_components.get(self.reward_name) or 0.0) >= 1.0) for t in trajectories)
        sums = torch.tensor([correct, len(trajectories), self._angle_sum, self._angle_n], dtype=torch.float64)
        sums = ctx.all_reduce_sum(sums)   # several learner processes: every rank updates mu with the global numbers
        correct, count, angle_sum, angle_n = sums.tolist()
        accuracy, angle = correct / max(count, 1), angle_sum / max(angle_n, 1)
        self._angle_sum, self._angle_n = 0.0, 0
        out = self.sampler.update({"accuracy": accuracy, "angle": angle})
        return {**self.sampler.metrics(), **out}
