"""OBLR-PO: optimal baseline and learning rate (Huang, Sheng, Zheng, arXiv 2511.23310). No code released;
every formula here is the reconstruction of the research notes (ASSUMPTION) from standard theory.

- Advantage ``oblr``: the variance-optimal, gradient-weighted baseline
      b* = E[R ||s||^2] / E[||s||^2],   s = grad log pi(y|x)
  estimated per group with weights w_i ~ ||s_i||^2 (leave-one-out by default, unbiased).
- LR controller ``oblr_snr``: lr = scheduler_lr * max(SNR / (1 + SNR), floor),
  SNR = EMA(||g||^2) / EMA(tr Sigma / B), estimated from each micro-batch's own gradient norm (taken before any
  all-reduce, on whichever rank ran it), its share of the optimizer step, and the step's reduced gradient norm
  (:func:`signal_noise_from_micro_batches`). The estimate depends only on the set of micro-batches, so one
  process and a DDP / DeepSpeed learner over the same micro-batches log the same SNR.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from rlpost.algos.core import ADVANTAGES, AdvantageInput, group_stats
from rlpost.algos.lr_controllers import LR_CONTROLLERS

WEIGHTS = ("logit_score_norm", "length", "uniform", "exact")


# ---------------------------------------------------------------- gradient-weighted baseline

def sum_p_squared(logits: torch.Tensor) -> torch.Tensor:
    """sum_v pi(v)^2 per position: logits [..., V] -> [...]. Compute it next to the entropy in the
    old-policy forward (same temperature as the log-probs)."""
    return torch.softmax(logits.float(), dim=-1).pow(2).sum(-1)


def score_norm_proxy(old_logprobs: torch.Tensor, sum_p_sq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """w_i = sum_t m_it (1 - 2 pi_it(o_it) + sum_v pi_it(v)^2)  [B]; inputs [B,T].

    Per token this is ||softmax(z) - onehot(o)||^2 = ||d log pi(o) / d z||^2, the squared score norm in
    logit space, a proxy for the full-parameter ||s_i||^2.
    """
    per_token = 1.0 - 2.0 * old_logprobs.double().exp() + sum_p_sq.double()
    return (per_token.clamp(min=0.0) * mask.double()).sum(-1)


@dataclass
class OBLRAdvParams:
    weight: str = "logit_score_norm"   # w_i: "logit_score_norm" | "length" (L_i) | "uniform" | "exact"
    leave_one_out: bool = True         # b_{-i} from the other completions (unbiased); False: plug-in b over all
    normalize_std: bool = False        # divide A by the unbiased group reward std (+1e-6); off: pure baseline
    eps: float = 1e-8                  # sum of the other weights below this -> unweighted baseline

    def __post_init__(self):
        if self.weight not in WEIGHTS:
            raise ValueError(f"algo.advantage.weight must be one of {WEIGHTS}, got {self.weight!r}")


def baseline_weights(inp: AdvantageInput, params: OBLRAdvParams) -> torch.Tensor:
    """w [B] float64 from ``params.weight``; see :func:`oblr_advantage` for the inputs each needs."""
    mask = inp.response_mask
    if params.weight == "logit_score_norm":
        missing = [k for k in ("old_logprobs", "sum_p_sq") if getattr(inp, k) is None]
        if missing:
            raise KeyError(f"algo.advantage oblr (weight=logit_score_norm) needs inp.{' and inp.'.join(missing)}: "
                           "old-policy log-probs [B,T] and sum_v pi^2 [B,T] (oblr_po.sum_p_squared)")
        return score_norm_proxy(inp.old_logprobs, inp.sum_p_sq, mask)
    if params.weight == "exact":
        if inp.score_sq_norm is None:
            raise KeyError("algo.advantage oblr (weight=exact) needs inp.score_sq_norm [B]")
        return torch.as_tensor(inp.score_sq_norm, dtype=torch.float64)
    if params.weight == "length":
        return mask.sum(-1).double()
    return torch.ones(mask.shape[0], dtype=torch.float64)


def weighted_baseline(rewards: torch.Tensor, weights: torch.Tensor, group_ids: torch.Tensor,
                      leave_one_out: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Per-completion baseline [B]. rewards, weights, group_ids: [B].

        leave-one-out:  b_i = (sum_{j in g} w_j R_j - w_i R_i) / (sum_{j in g} w_j - w_i)
        plug-in:        b_i = sum_{j in g} w_j R_j / sum_{j in g} w_j
    Where the weights in the denominator sum to <= eps, the unweighted mean of the same set is used;
    a group of one (leave-one-out) gets b_i = R_i, i.e. advantage 0.
    """
    R, w = rewards.double(), weights.double()
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    zeros = torch.zeros(counts.numel(), dtype=torch.float64)
    s_wr, s_w = zeros.clone().index_add_(0, inv, w * R)[inv], zeros.clone().index_add_(0, inv, w)[inv]
    s_r, n = zeros.clone().index_add_(0, inv, R)[inv], counts[inv].double()
    if leave_one_out:
        num, den, plain = s_wr - w * R, s_w - w, (s_r - R) / (n - 1).clamp(min=1)
        plain = torch.where(n > 1, plain, R)
    else:
        num, den, plain = s_wr, s_w, s_r / n
    return torch.where(den > eps, num / den.clamp(min=eps), plain)


@ADVANTAGES.register("oblr", params=OBLRAdvParams)
def oblr_advantage(inp: AdvantageInput, params: OBLRAdvParams):
    """A_it = m_it (R_i - b_i) with the gradient-weighted baseline of :func:`weighted_baseline` [B,T].

    Extra inputs: weight="logit_score_norm" needs ``inp.old_logprobs`` [B,T] and
    ``inp.sum_p_sq`` [B,T] (both from the old-policy forward); "exact" needs
    ``inp.score_sq_norm`` [B] (per-sequence ||grad log pi||^2); "length"/"uniform" need nothing
    ("uniform" + leave_one_out is RLOO, "uniform" without it is Dr.GRPO).
    """
    R = inp.rewards.double()
    w = baseline_weights(inp, params)
    b = weighted_baseline(R, w, inp.group_ids, params.leave_one_out, params.eps)
    adv = R - b
    if params.normalize_std:
        _, std, _ = group_stats(R, inp.group_ids)
        adv = adv / (std + 1e-6)
    mean, _, _ = group_stats(R, inp.group_ids)
    w_mean, w_std, _ = group_stats(w, inp.group_ids)
    metrics = {
        "advantage/mean": adv.mean().item(), "advantage/abs_mean": adv.abs().mean().item(),
        "oblr/weight_mean": w.mean().item(),
        "oblr/weight_group_cv": (w_std / w_mean.clamp(min=1e-12)).mean().item(),
        "oblr/baseline_mean": b.mean().item(),
        "oblr/baseline_minus_mean_abs": (b - mean).abs().mean().item(),
    }
    return adv.to(inp.response_mask.dtype)[:, None] * inp.response_mask, metrics


oblr_advantage.needs = ("old_logprobs", "sum_p_sq")


# ---------------------------------------------------------------- SNR learning-rate controller

def signal_noise_from_groups(sq_norms: Sequence[float], mean_sq_norm: float) -> tuple[float, float]:
    """K >= 2 independent, equal-size gradient estimates g_k with mean g_bar = (1/K) sum_k g_k:

        noise  = sum_k ||g_k - g_bar||^2 / (K (K-1)) = (sum_k ||g_k||^2 - K ||g_bar||^2) / (K (K-1))  ~ tr Sigma / B
        signal = max(||g_bar||^2 - noise, 0)                                                       ~ ||g||^2
    sq_norms: [||g_k||^2]_k; mean_sq_norm: ||g_bar||^2.
    """
    K = len(sq_norms)
    if K < 2:
        raise ValueError("oblr_snr needs >= 2 gradient estimates per step (micro-batches or ranks), got "
                         f"{K}")
    noise = max((float(sum(sq_norms)) - K * mean_sq_norm) / (K * (K - 1)), 0.0)
    return max(mean_sq_norm - noise, 0.0), noise


def signal_noise_from_micro_batches(sq_norms: Sequence[float], shares: Sequence[float],
                                    full_sq_norm: float) -> tuple[float, float]:
    """K >= 2 micro-batches of one optimizer step, on one rank or several. Micro-batch j holds a share c_j of the
    step's tokens (token-mean) or rows (sum_j c_j = 1), g_j is its own mean gradient (sq_norms[j] = ||g_j||^2) and
    G = sum_j c_j g_j the step's gradient (full_sq_norm = ||G||^2, after the all-reduce). If each unit adds
    independent noise of variance s2 (N units), g_j = g + e_j with Var e_j = s2 / (N c_j), and

        E[ sum_j c_j ||g_j - G||^2 ] = sum_j c_j (s2/N) (1/c_j - 1) = (K - 1) s2 / N
        sum_j c_j ||g_j - G||^2 = sum_j c_j ||g_j||^2 - ||G||^2            (sum_j c_j = 1)

    so  noise = (sum_j c_j ||g_j||^2 - ||G||^2) / (K - 1)  ~ tr Sigma / B of the full step,
        signal = max(||G||^2 - noise, 0)                    ~ ||g||^2.
    Equal shares c_j = 1/K give :func:`signal_noise_from_groups`. The shares are renormalised to sum 1 (a step
    whose rows carry no tokens in some micro-batch still counts it with share 0).
    """
    K = len(sq_norms)
    if K < 2 or len(shares) != K:
        raise ValueError(f"oblr_snr needs >= 2 micro-batches per optimizer step with one share each, got {K} norms "
                         f"and {len(shares)} shares")
    total = float(sum(shares))
    if total <= 0:
        raise ValueError(f"oblr_snr: micro-batch shares must sum to a positive value, got {list(shares)}")
    weighted = sum(float(c) / total * float(n) for c, n in zip(shares, sq_norms))
    noise = max((weighted - float(full_sq_norm)) / (K - 1), 0.0)
    return max(float(full_sq_norm) - noise, 0.0), noise


def signal_noise_from_prefix(prefix_sq_norms: Sequence[float],
                             cum_shares: Sequence[float] | None = None) -> tuple[float, float]:
    """Running means after k = 1..K micro-batches of one optimizer step (single-device gradient accumulation).

    Micro-batch j holds a share c_j of the step's tokens (token-mean) or rows (sum c_j = 1) and contributes
    c_j g_j to the accumulated gradient, g_j = its own mean gradient. With S_k = sum_{j<=k} c_j the running
    mean is g_bar_k = (accumulated grad after k) / S_k. If each unit (token or row) adds independent noise of
    variance s2, g_j = g + e_j with Var e_j = s2 / (N c_j), so

        E ||g_bar_k||^2 = ||g||^2 + s2 / (N S_k)

    Least squares of y_k = ||g_bar_k||^2 on x_k = 1/S_k: intercept ||g||^2, slope s2 / N = the noise of the
    full step (S_K = 1). Equal shares (cum_shares None: S_k = k/K) is the special case x_k = K/k.
    Returns (max(intercept, 0), max(slope, 0) / S_K).
    """
    K = len(prefix_sq_norms)
    if K < 2:
        raise ValueError(f"oblr_snr needs >= 2 micro-batches per optimizer step, got {K}")
    S = torch.as_tensor([k / K for k in range(1, K + 1)] if cum_shares is None else list(cum_shares),
                        dtype=torch.float64)
    if S.numel() != K or not bool((S > 0).all()):
        raise ValueError(f"oblr_snr: cum_shares must be {K} positive running sums of micro-batch shares, got {S.tolist()}")
    x = 1.0 / S
    y = torch.as_tensor(list(prefix_sq_norms), dtype=torch.float64)
    if float(((x - x.mean()) ** 2).sum()) <= 0:   # cannot happen with positive shares; guard the division
        return max(y.mean().item(), 0.0), 0.0
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    intercept = y.mean() - slope * x.mean()
    return max(intercept.item(), 0.0), max(slope.item(), 0.0) / S[-1].item()


@dataclass
class SNRParams:
    beta: float = 0.9        # EMA factor for signal and noise
    floor: float = 0.05      # lower bound on the LR multiplier
    min_noise: float = 1e-12

    def __post_init__(self):
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"algo.lr_controller.beta must be in [0, 1), got {self.beta}")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"algo.lr_controller.floor must be in [0, 1], got {self.floor}")


@LR_CONTROLLERS.register("oblr_snr", params=SNRParams)
class SNRLRController:
    """lr_t = scheduler_lr_t * max(SNR_t / (1 + SNR_t), floor),  SNR_t = EMA_beta(signal) / EMA_beta(noise).

    ``observe(grad_stats)`` takes this step's raw (pre-clip, pre-Adam) gradient statistics, one of:

    - ``{"micro_grad_sq_norms": [||g_j||^2], "micro_shares": [c_j], "mean_grad_sq_norm": ||G||^2}``: each
      micro-batch's own gradient and share, G the step's (reduced) gradient -> :func:`signal_noise_from_micro_batches`;
      what rlpost's learner passes, in one process and with DDP / DeepSpeed alike;

    - ``{"grad_sq_norms": [||g_k||^2 for k in 1..K], "mean_grad_sq_norm": ||g_bar||^2}``: K >= 2 independent
      equal-size estimates (data-parallel ranks' local gradients before all-reduce, or micro-batch
      gradients), g_bar their mean (after all-reduce) -> :func:`signal_noise_from_groups`;
    - ``{"prefix_grad_sq_norms": [||g_bar_k||^2 for k in 1..K], "prefix_cum_shares": [S_k for k in 1..K]}``:
      the running mean gradient after each of K >= 2 micro-batches (the accumulated grad divided by S_k, the
      share of the step's tokens/rows seen so far; without ``prefix_cum_shares`` equal shares k/K are assumed)
      -> :func:`signal_noise_from_prefix`.

    The EMAs start at the first observation (no zero-init bias). ``lr_scale`` is 1 before any observation.
    Call ``observe`` before ``optimizer.step()`` so the step's own SNR scales its update.
    """

    needs_grad_stats = True

    def __init__(self, params: SNRParams | None = None):
        self.params = params or SNRParams()
        self.signal: float | None = None
        self.noise: float | None = None

    def observe(self, grad_stats: dict) -> dict[str, float]:
        if "micro_grad_sq_norms" in grad_stats:
            sig, noise = signal_noise_from_micro_batches(list(map(float, grad_stats["micro_grad_sq_norms"])),
                                                         list(map(float, grad_stats["micro_shares"])),
                                                         float(grad_stats["mean_grad_sq_norm"]))
        elif "grad_sq_norms" in grad_stats:
            sig, noise = signal_noise_from_groups(list(map(float, grad_stats["grad_sq_norms"])),
                                                  float(grad_stats["mean_grad_sq_norm"]))
        elif "prefix_grad_sq_norms" in grad_stats:
            sig, noise = signal_noise_from_prefix(list(map(float, grad_stats["prefix_grad_sq_norms"])),
                                                  grad_stats.get("prefix_cum_shares"))
        else:
            raise KeyError("oblr_snr.observe needs 'micro_grad_sq_norms' + 'micro_shares' + 'mean_grad_sq_norm', "
                           f"'grad_sq_norms' + 'mean_grad_sq_norm' or 'prefix_grad_sq_norms', got {sorted(grad_stats)}")
        b = self.params.beta
        self.signal = sig if self.signal is None else b * self.signal + (1 - b) * sig
        self.noise = noise if self.noise is None else b * self.noise + (1 - b) * noise
        return {"oblr/signal": self.signal, "oblr/noise": self.noise, "oblr/snr": self.snr(),
                "oblr/snr_step": sig / max(noise, self.params.min_noise), "oblr/lr_scale": self.lr_scale(0)}

    def snr(self) -> float:
        return self.signal / max(self.noise, self.params.min_noise)

    def lr_scale(self, step: int) -> float:
        if self.signal is None:
            return 1.0
        snr = self.snr()
        return max(snr / (1.0 + snr), self.params.floor)

    def state_dict(self) -> dict:
        return {"signal": self.signal, "noise": self.noise}

    def load_state_dict(self, state: dict) -> None:
        self.signal, self.noise = state["signal"], state["noise"]
