"""The learner: micro-batched log-prob/entropy passes, the registered loss, backward, optimizer step.

It knows which registered functions to call (advantage, policy loss, aggregation, KL estimator), not
which paper is running. Loss for one mini-batch of samples:

    L = agg( w_i * loss_mat_it + beta * KL_it - entropy_coef * H_it )

with w_i the per-sample weight (APR: 1/calls in the tree), applied to the policy term only: the KL and
entropy regularisers stay per token (TinyRL does not divide the KL term by the tree size). Gradient accumulation over micro-batches is exact: each micro-batch's
aggregated loss is weighted by its share of the mini-batch's tokens (``token-mean``) or rows (others).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from dataclasses import dataclass

import torch

from rlpost.algos import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES, LossInput
from rlpost.algos.core import entropy_from_logprobs, masked_mean
from rlpost.algos.forking_tokens import high_entropy_mask
from rlpost.algos.mismatch import ISCorrection, importance_weights, sampler_learner_kl
from rlpost import shared_prefix as sp
from rlpost.batch import Batch

log = logging.getLogger(__name__)
TOKEN_WEIGHTED_AGGREGATIONS = {"token-mean"}


@dataclass
class LearnerSettings:
    loss_name: str
    loss_params: object
    loss_agg: str
    max_completion_length: int
    temperature: float = 1.0
    beta: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    num_iterations: int = 1
    steps_per_generation: int = 1
    micro_batch_size: int = 16
    max_grad_norm: float = 1.0
    need_entropy: bool = False      # compute current and old per-token entropies (HAPO)
    need_sum_p_sq: bool = False     # compute sum_v pi_v^2 per token in the old-policy pass (OBLR-PO)
    need_old_ref: bool = False      # old and reference log-probs in prepare() even with beta = 0 (algo.kl_reward)
    vllm_is: ISCorrection | None = None  # truncated IS correction of the sampler/learner mismatch (algos/mismatch.py)
    logprob_chunk_size: int = 0     # >0: LM head over this many completion tokens at a time (optim.logprob_chunk_size)
    padding_free: bool = False      # pack each micro-batch into one row without padding (optim.padding_free)
    shared_prefix: bool = True      # rows with one prompt share a pass over it (optim.shared_prefix)
    max_tokens_per_micro_batch: int = 0  # >0: token-budget micro-batches (optim.max_tokens_per_micro_batch)
    top_entropy_quantile: float = 1.0  # <1: policy loss on the batch's top-rho tokens by old entropy (algos/forking_tokens.py)
    max_consecutive_skipped_steps: int = 3  # non-finite gradient norms in a row before NonFiniteGradientError (0: never)


@dataclass
class FixedLogprobs:
    """Per-token values computed once per step, before the update, that stay fixed during it (``Learner.prepare``).
    Each is [B,T], aligned with ``Batch.completion_ids``, or None when nothing asked for it."""
    old_logprobs: torch.Tensor | None = None   # log pi_old; None: one optimizer pass (the loss uses the current ones)
    ref_logprobs: torch.Tensor | None = None   # log pi_ref (algo.beta > 0)
    old_entropies: torch.Tensor | None = None  # H(pi_old) per token (need_entropy, or forking tokens)
    sum_p_sq: torch.Tensor | None = None       # sum_v pi_old_v^2 per token (need_sum_p_sq, OBLR-PO)
    entropy_mask: torch.Tensor | None = None   # 1 on the batch's top-rho tokens by old entropy (forking tokens)

    def rows(self, idx: torch.Tensor) -> "FixedLogprobs":
        """The same values for the rows ``idx`` (a micro-batch)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return FixedLogprobs(**{name: None if v is None else v[idx] for name, v in values.items()})


class NonFiniteGradientError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite gradient norm (optim.max_consecutive_skipped_steps)."""


def token_logprobs(model, batch: Batch, temperature: float, need_entropy: bool, need_sum_p_sq: bool = False,
                   chunk_size: int = 0, packed: bool = False, shared_prefix: bool = False):
    """log pi(o_t | .) of the completion tokens [B,T] (and entropies [B,T] or None) from one forward.
    With ``need_sum_p_sq`` a third value, sum_v pi_v^2 per token [B,T], is returned too.

    Logits are divided by the sampling temperature, matching the distribution the engine sampled from.
    Only the completion positions are gathered before the log-softmax, so memory is O(B*T*V), not O(B*W*V).
    ``chunk_size`` > 0 or ``packed``: the memory-lean path of rlpost/logprobs.py (same values).
    ``shared_prefix``: rows with the same prompt share one pass over it (rlpost/shared_prefix.py, same values).
    """
    if chunk_size > 0 or packed:
        from rlpost.logprobs import lean_token_logprobs
        return lean_token_logprobs(model, batch, temperature, need_entropy, need_sum_p_sq, chunk_size, packed)

    def plain_logits():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        B, T = batch.completion_index.shape
        idx = batch.completion_index.clamp(max=logits.shape[1] - 1)
        return logits.gather(1, idx[:, :, None].expand(B, T, logits.shape[-1]))  # [B,T,V]

    owners_first = sp.sharing(batch) if shared_prefix and sp.usable(model) else None
    if owners_first is not None and sp.verify_once(model, batch, plain_logits, owners_first):
        picked = sp.completion_logits(model, batch, owners_first).float()
    else:
        picked = plain_logits().float()
    if temperature > 0:
        picked = picked / temperature
    logp_all = torch.log_softmax(picked, dim=-1)
    logp = logp_all.gather(-1, batch.completion_ids[:, :, None]).squeeze(-1)  # [B,T]
    entropy = entropy_from_logprobs(logp_all) if need_entropy else None
    if need_sum_p_sq:
        return logp, entropy, (2 * logp_all).exp().sum(-1)
    return logp, entropy


@torch.no_grad()
def batched_logprobs(model, batch: Batch, settings: LearnerSettings, need_entropy: bool, need_sum_p_sq: bool = False,
                     hooks=(), shared_prefix: bool = True):
    """No-grad log-probs, entropies (or None) and sum_p_sq (or None) for the whole batch in micro-batches.
    Each of ``hooks`` is called as ``hook(model, micro_batch)`` and must return a context manager, entered
    around that micro-batch's forward (e.g. a forward hook that reads hidden states)."""
    was_training = model.training
    model.eval()
    out_lp, out_h, out_sq = [], [], []
    order = torch.arange(len(batch))
    if settings.max_tokens_per_micro_batch > 0 and not hooks:  # length-sorted rows pack the budget tightly (hooks
        # such as GAIN-RL's collect per-row values in batch order, so they keep it)
        order = torch.argsort(batch.attention_mask.sum(-1), stable=True)
    for idx in micro_batches(batch, order, settings):
        mb = batch.select(idx)
        with contextlib.ExitStack() as stack:
            for hook in hooks:
                stack.enter_context(hook(model, mb))
            lp, h, *sq = token_logprobs(model, mb, settings.temperature, need_entropy, need_sum_p_sq,
                                        settings.logprob_chunk_size, settings.padding_free,
                                        shared_prefix and settings.shared_prefix and not hooks)
        out_lp.append(lp)
        out_h.append(h)
        out_sq += sq
    model.train(was_training)
    inverse = torch.argsort(order)  # back to the batch's row order
    return (torch.cat(out_lp)[inverse], torch.cat(out_h)[inverse] if need_entropy else None,
            torch.cat(out_sq)[inverse] if need_sum_p_sq else None)


def mini_batches(num_rows: int, settings: LearnerSettings) -> list[torch.Tensor]:
    """The optimizer-step partition of a batch of ``num_rows`` rows: the row indices of each optimizer step, in the
    order the learner takes them. ``num_iterations`` passes over ``steps_per_generation`` consecutive slices of
    ``num_rows // steps_per_generation`` rows (left-over rows train in no step)."""
    size = num_rows // settings.steps_per_generation
    one_pass = [torch.arange(m * size, (m + 1) * size) for m in range(settings.steps_per_generation)]
    return [rows for _ in range(settings.num_iterations) for rows in one_pass]


def micro_batches(batch: Batch, rows: torch.Tensor, settings: LearnerSettings) -> list[torch.Tensor]:
    """Split ``rows`` (in order) into micro-batches: ``micro_batch_size`` rows each, or, with
    ``max_tokens_per_micro_batch`` > 0, as many consecutive rows as keep rows x longest row within the budget
    (a row longer than the budget gets a micro-batch of its own). Rows should be length-sorted for the budget
    to pack well; the learner's order does that."""
    budget = settings.max_tokens_per_micro_batch
    if budget <= 0:
        return [rows[i:i + settings.micro_batch_size] for i in range(0, len(rows), settings.micro_batch_size)]
    widths = batch.attention_mask[rows].sum(-1).tolist()
    parts, start, longest = [], 0, 0
    for i, width in enumerate(widths):
        longest_if_added = max(longest, width)
        if i > start and (i - start + 1) * longest_if_added > budget:
            parts.append(rows[start:i])
            start, longest_if_added = i, width
        longest = longest_if_added
    if len(rows):
        parts.append(rows[start:])
    return parts


class Learner:
    def __init__(self, model, optimizer, scheduler, settings: LearnerSettings, ref_model=None, lr_controller=None,
                 old_forward_hooks=()):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.settings = settings
        self.ref_model = ref_model
        self.lr_controller = lr_controller
        self.loss_fn = POLICY_LOSSES.get(settings.loss_name)
        self.aggregate = AGGREGATIONS.get(settings.loss_agg)
        self.kl_fn = KL_ESTIMATORS.get(settings.kl_estimator)
        # hook(model, micro_batch) -> context manager around each micro-batch forward of the old-policy pass
        # (GAIN-RL reads hidden states there); a non-empty list makes prepare() run that pass
        self.old_forward_hooks = list(old_forward_hooks)
        # multi-process learner (rlpost/distributed/learner_ops.py): None in a single process
        self.dist = None
        self.consecutive_skips = 0  # optimizer steps in a row skipped for a non-finite gradient norm

    def mini_batches(self, num_rows: int) -> list[torch.Tensor]:
        """Row indices of each optimizer step of :meth:`update` on ``num_rows`` rows (:func:`mini_batches`)."""
        return mini_batches(num_rows, self.settings)

    def prepare(self, batch: Batch) -> FixedLogprobs:
        """Old-policy and reference log-probs that stay fixed during the update."""
        s = self.settings
        reuse = s.num_iterations > 1 or s.steps_per_generation > 1
        old_lp = old_h = sum_p_sq = None
        forking = s.top_entropy_quantile < 1.0
        need_h = s.need_entropy or forking
        if reuse or need_h or s.need_sum_p_sq or self.old_forward_hooks or s.need_old_ref:
            old_lp, old_h, sum_p_sq = batched_logprobs(self.model, batch, s, need_h, s.need_sum_p_sq,
                                                       self.old_forward_hooks, shared_prefix=self.dist is None)
        ref_lp = (batched_logprobs(self.ref_model, batch, s, False, shared_prefix=self.dist is None)[0]
                  if s.beta > 0 or s.need_old_ref else None)
        entropy_mask = high_entropy_mask(old_h, batch.response_mask, s.top_entropy_quantile) if forking else None
        return FixedLogprobs(old_logprobs=old_lp, ref_logprobs=ref_lp, old_entropies=old_h, sum_p_sq=sum_p_sq,
                             entropy_mask=entropy_mask)

    def update(self, batch: Batch, advantages: torch.Tensor, fixed: FixedLogprobs, row_extra: dict | None = None,
               step_extra: dict | None = None) -> dict[str, float]:
        """num_iterations passes over steps_per_generation mini-batches; one optimizer step per mini-batch."""
        metrics: dict[str, list[float]] = {}
        for rows in self.mini_batches(len(batch)):
            step_metrics = self._optimizer_step(batch, advantages, fixed, rows, row_extra or {}, step_extra or {})
            for k, v in step_metrics.items():
                metrics.setdefault(k, []).append(v)
        return {k: sum(v) / len(v) for k, v in metrics.items()}

    def _optimizer_step(self, batch, advantages, fixed, rows, row_extra, step_extra) -> dict[str, float]:
        s, dist = self.settings, self.dist
        mini_tokens = float(batch.response_mask[rows].sum().clamp(min=1))
        mini_rows = len(rows)
        metrics: dict[str, float] = {}
        total_loss = 0.0
        recorder = self._grad_norm_recorder()
        micro_stats = []  # (||g_j||^2, c_j) of this rank's micro-batches, for LR controllers (algos/lr_controllers.py)
        rows = self._micro_batch_order(batch, rows)
        parts = micro_batches(batch, rows, s)
        num_micro = len(parts)
        if dist is not None:  # shares of the mini-batch summed over all ranks; as many backward passes on each rank
            mini_tokens, mini_rows, num_backward = dist.step_counts(batch.response_mask[rows].sum(), len(rows), num_micro)
        for micro_index, idx in enumerate(parts):
            mb = batch.select(idx)
            share = (float(mb.response_mask.sum()) / mini_tokens if s.loss_agg in TOKEN_WEIGHTED_AGGREGATIONS
                     else len(idx) / mini_rows)
            extra = {**step_extra, **{k: v[idx] for k, v in row_extra.items()}}
            loss, mb_metrics = self._micro_loss(mb, advantages[idx], fixed.rows(idx), extra)
            with recorder.backward() if recorder is not None else contextlib.nullcontext():
                (loss * share).backward() if dist is None else dist.backward(loss * share, micro_index)
            if recorder is not None and share > 0:  # the hooks saw d(loss * share * loss_scale): g_j times that
                micro_stats.append((recorder.sq_norm() / (share * (dist.loss_scale if dist else 1.0)) ** 2, share))
            total_loss += loss.item() * share
            for k, v in mb_metrics.items():
                metrics[k] = metrics.get(k, 0.0) + v * share
        if dist is not None:  # ranks with fewer micro-batches run zero-weighted ones; metrics are summed shares
            for k in range(num_micro, num_backward):
                dist.backward(self._micro_loss(mb, advantages[idx], fixed.rows(idx), extra)[0] * 0.0, k)
            total_loss, metrics = dist.reduce_metrics(total_loss, metrics)
            if recorder is not None:
                micro_stats = dist.gather_micro_stats(micro_stats)
        groups = self.optimizer.param_groups
        scheduled = [g["lr"] for g in groups]
        applied = {"scale": 1.0}

        def scale_lr(pre_clip_norm) -> None:
            """The LR controller's multiplier from this step's statistics, applied to the scheduled LR."""
            applied["scale"] = scale = self._lr_scale(float(pre_clip_norm), micro_stats, metrics)
            for g, lr in zip(groups, scheduled):
                g["lr"] = lr * scale

        if dist is not None and dist.fused_step:  # DeepSpeed: clipping + optimizer step inside engine.step(), which
            grad_norm = dist.step(before_update=scale_lr)  # calls scale_lr with its pre-clip norm before updating
        else:
            grad_norm = _full((torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.max_grad_norm)
                               if s.max_grad_norm > 0 else _grad_norm(self.model)))
            scale_lr(grad_norm)
            if torch.isfinite(grad_norm):
                self.optimizer.step()
        for g, lr in zip(groups, scheduled):
            g["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        metrics.update({"loss": total_loss, "grad_norm": float(grad_norm), "lr": scheduled[0] * applied["scale"],
                        "train/skipped_steps": self._count_skip(grad_norm)})
        return metrics

    def _grad_norm_recorder(self):
        """Per-micro-batch gradient norms (hooks on the parameters, added once) when the LR controller reads them."""
        if self.lr_controller is None or not self.lr_controller.needs_grad_stats:
            return None
        if getattr(self, "_recorder", None) is None:
            from rlpost.algos.lr_controllers import MicroBatchGradNorms
            self._recorder = MicroBatchGradNorms(self.model)
        return self._recorder

    def _lr_scale(self, pre_clip_norm: float, micro_stats: list, metrics: dict) -> float:
        """Feed the LR controller this step's statistics (its metrics go into ``metrics``) and return its multiplier.
        A step with a non-finite gradient norm is skipped, so it is not observed."""
        ctrl = self.lr_controller
        if ctrl is None:
            return 1.0
        if not ctrl.needs_grad_stats:
            metrics.update(ctrl.observe({}))
        elif math.isfinite(pre_clip_norm):
            metrics.update(ctrl.observe({"micro_grad_sq_norms": [n for n, _ in micro_stats],
                                         "micro_shares": [c for _, c in micro_stats],
                                         "mean_grad_sq_norm": pre_clip_norm ** 2}))
        return ctrl.lr_scale(self.scheduler.last_epoch)

    def _count_skip(self, grad_norm: torch.Tensor) -> float:
        """1.0 when this optimizer step was skipped for a non-finite gradient norm (the weights did not move; the
        LR schedule still advances, as with a skipped mixed-precision step), else 0.0. Warns on every skip and
        raises NonFiniteGradientError after ``max_consecutive_skipped_steps`` in a row."""
        if bool(torch.isfinite(grad_norm)):
            self.consecutive_skips = 0
            return 0.0
        self.consecutive_skips += 1
        limit = self.settings.max_consecutive_skipped_steps
        log.warning("optimizer step skipped: gradient norm is %s (%d in a row; the run stops at %s)",
                    float(grad_norm), self.consecutive_skips, limit or "never")
        if limit and self.consecutive_skips >= limit:
            raise NonFiniteGradientError(
                f"{self.consecutive_skips} optimizer steps in a row had a non-finite gradient norm ({float(grad_norm)}): "
                "the loss or the rewards/advantages hold NaN or inf (lower optim.learning_rate, check the reward "
                "functions); optim.max_consecutive_skipped_steps sets this limit (0: never stop)")
        return 1.0

    def _micro_batch_order(self, batch: Batch, rows: torch.Tensor) -> torch.Tensor:
        """Rows in micro-batch order. Micro-batches of similar lengths pad less (each is trimmed to its own
        longest row); under a shared-prefix pass the rows of one prompt also stay together (by prompt length,
        then prompt, then total length), so that each prompt runs once."""
        total = batch.attention_mask[rows].sum(-1)
        if not (self.settings.shared_prefix and self.dist is None and batch.prompt_lengths is not None):
            return rows[torch.argsort(total, stable=True)]
        owners = sp.prompt_owners(batch)[0][rows].tolist()
        prompt_len = batch.prompt_lengths[rows].tolist()
        order = sorted(range(len(rows)), key=lambda i: (prompt_len[i], owners[i], int(total[i])))
        return rows[torch.tensor(order, dtype=torch.long)]

    def _micro_loss(self, mb: Batch, adv: torch.Tensor, fixed: FixedLogprobs, extra: dict):
        s = self.settings
        need_h = s.need_entropy or s.entropy_coef > 0
        logp, entropy = token_logprobs(self.dist.train_model if self.dist is not None else self.model, mb, s.temperature,
                                       need_h, chunk_size=s.logprob_chunk_size, packed=s.padding_free,
                                       shared_prefix=s.shared_prefix and self.dist is None)
        old_lp = fixed.old_logprobs if fixed.old_logprobs is not None else logp.detach()
        mask = mb.response_mask
        inp = LossInput(logprobs=logp, old_logprobs=old_lp, advantages=adv, response_mask=mask,
                        entropies=entropy.detach() if entropy is not None else None,
                        old_entropies=fixed.old_entropies, **extra)
        loss_mat, metrics = self.loss_fn(inp, s.loss_params)
        loss_mat = loss_mat * mb.sample_weights[:, None]  # the policy term only (APR: KL is not divided by S)
        if fixed.entropy_mask is not None:  # forking tokens: policy term on high-entropy tokens only
            loss_mat = loss_mat * fixed.entropy_mask
            metrics["policy/entropy_mask_frac"] = masked_mean(fixed.entropy_mask, mask).item()
        if s.vllm_is is not None:  # tokens came from the sampler, not pi_old: truncated importance weights on the
            # policy-gradient term only (as TRL and verl); the KL and entropy terms below are not reweighted
            is_weights, is_metrics = importance_weights(old_lp, mb.sampler_logprobs, mask, s.vllm_is)
            loss_mat, metrics = loss_mat * is_weights, {**metrics, **is_metrics}
        if s.beta > 0:
            kl = self.kl_fn(logp, fixed.ref_logprobs)
            loss_mat = loss_mat + s.beta * kl
            metrics["kl"] = masked_mean(kl.detach(), mask).item()
        if entropy is not None:
            metrics["policy/entropy"] = masked_mean(entropy.detach(), mask).item()
            if s.entropy_coef > 0:
                loss_mat = loss_mat - s.entropy_coef * entropy
        with torch.no_grad():
            metrics["rollout/logprob_diff"] = masked_mean((logp.detach() - mb.sampler_logprobs).abs(), mask).item()
            metrics["rollout/kl_sampler_learner"] = sampler_learner_kl(old_lp, mb.sampler_logprobs, mask).item()
        return self.aggregate(loss_mat, mask, s.max_completion_length), metrics


def _grad_norm(model) -> torch.Tensor:
    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    return _full(torch.nn.utils.get_total_norm(grads)) if grads else torch.tensor(0.0)


def _full(t: torch.Tensor) -> torch.Tensor:
    """A norm of FSDP2's sharded gradients is a DTensor with a pending reduction: its value (collective)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def build_optimizer(model, optim_cfg):
    """AdamW by default; adam, sgd, lion (lion-pytorch) or any pytorch_optimizer name."""
    params = [p for p in model.parameters() if p.requires_grad]
    name = optim_cfg.optimizer.lower()
    common = dict(lr=optim_cfg.learning_rate, weight_decay=optim_cfg.weight_decay)
    betas = (optim_cfg.adam_beta1, optim_cfg.adam_beta2)
    if name == "adamw":
        return torch.optim.AdamW(params, betas=betas, eps=optim_cfg.adam_epsilon, **common)
    if name == "adam":
        return torch.optim.Adam(params, betas=betas, eps=optim_cfg.adam_epsilon, **common)
    if name == "sgd":
        return torch.optim.SGD(params, **common)
    if name == "lion":
        from lion_pytorch import Lion
        return Lion(params, betas=betas, **common)
    try:
        from pytorch_optimizer import load_optimizer
        return load_optimizer(name)(params, **common)
    except Exception as err:
        raise ValueError(f"optim.optimizer: unknown optimizer {optim_cfg.optimizer!r} "
                         "(adamw, adam, sgd, lion, or a pytorch_optimizer name)") from err


def build_scheduler(optimizer, optim_cfg, total_steps: int):
    """Linear warm-up, then constant / linear decay to 0 / cosine decay to 0 (in optimizer steps)."""
    warmup = optim_cfg.warmup_steps or int(math.ceil(optim_cfg.warmup_ratio * total_steps))
    kind = optim_cfg.lr_scheduler_type

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
