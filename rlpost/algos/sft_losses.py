"""SFT objectives seen as implicit-reward learning (Wang et al., NeurIPS 2025, arXiv 2507.00018).

Every policy π implies a reward  r_π(x,y) = β log π(y|x)/π_ref(y|x) + β log Z(x). Starting from the
distribution-matching objective  min_π D_f(π_E ‖ π) + β KL(π ‖ π_ref), SFT is the total-variation
case, and there the KL term becomes constant in π: nothing keeps the policy near π_ref except the
optimisation budget. The paper's two remedies are (1) a lower SFT learning rate
(:func:`sft_learning_rate`, :data:`LR_SCALES`) and (2) SFT objectives from other f-divergences that
keep a policy-dependent reference term (the ``f_*`` losses below).

Registry ``SFT_LOSSES`` (``sft.loss``):

    fn(logits_or_logprobs, labels, mask, params, ref_logprobs=None) -> (loss scalar, metrics)

- ``logits_or_logprobs``: [B,T,V] logits, or [B,T] log-probs of the label tokens. Position t
  predicts ``labels[:, t]`` (already shifted; masked positions may hold -100).
- ``labels``: [B,T] long (ignored when [B,T] log-probs are given), ``mask``: [B,T] 1 = trained on.
- ``ref_logprobs``: [B,T] log π_ref of the labels, detached; required by the f-divergence losses.

The paper's full text was not available: the f-divergence losses are RECONSTRUCTIONS (the IQ-Learn
conjugate links φ(u) = −f*(−u)); see docs/algos/implicit_sft.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from rlpost.algos.core import AGGREGATIONS, KL_ESTIMATORS, masked_mean
from rlpost.registry import Registry

SFT_LOSSES = Registry("SFT loss")


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------

def token_logprobs(logits_or_logprobs: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """[B,T,V] logits -> log softmax gathered at ``labels`` [B,T]; [B,T] log-probs pass through."""
    if logits_or_logprobs.dim() == 2:
        return logits_or_logprobs
    if labels is None:
        raise ValueError("labels are required when logits [B,T,V] are given")
    logp_all = F.log_softmax(logits_or_logprobs.float(), dim=-1)                  # [B,T,V]
    return logp_all.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)     # [B,T]


def _masked_logp(logits_or_logprobs, labels, mask) -> torch.Tensor:
    """Label log-probs with masked positions set to 0 (padding may hold -inf or garbage)."""
    return torch.where(mask > 0, token_logprobs(logits_or_logprobs, labels), 0.0)


def implicit_reward(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                    beta: float = 1.0, level: str = "sequence") -> torch.Tensor:
    """r = β (log π − log π_ref): per token [B,T] (``token``, zero outside the mask) or summed over
    the completion [B] (``sequence``; equal to r_π(x,y) up to the per-prompt β log Z(x))."""
    r_tok = beta * (logprobs - ref_logprobs) * mask                                # [B,T]
    if level == "token":
        return r_tok
    if level == "sequence":
        return r_tok.sum(-1)
    raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")


def kl_to_initial(policy: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor,
                  estimator: str = "k3") -> tuple[torch.Tensor, torch.Tensor]:
    """Drift of the SFT model from the initial model, as (token-mean KL scalar, per-token KL [B,T]).

    Given logits [B,T,V] for both: the exact per-token KL(π‖π_ref) = Σ_v π(v) (log π(v) − log π_ref(v)).
    Given [B,T] label log-probs: ``KL_ESTIMATORS[estimator]`` (k1/k2/k3). On demonstration tokens,
    which π did not sample, that is a drift diagnostic, not an unbiased KL estimate.
    """
    with torch.no_grad():
        if policy.dim() == 3:
            logp = F.log_softmax(policy.float(), dim=-1)
            ref_logp = F.log_softmax(ref.float(), dim=-1)
            kl_tok = (logp.exp() * (logp - ref_logp)).sum(-1)                      # [B,T]
        else:
            kl_tok = KL_ESTIMATORS.get(estimator)(policy.float(), ref.float())      # [B,T]
        kl_tok = kl_tok * mask
        return masked_mean(kl_tok, mask), kl_tok


def _base_metrics(logp: torch.Tensor, mask: torch.Tensor, ref_logprobs: torch.Tensor | None,
                  beta: float) -> dict[str, float]:
    with torch.no_grad():
        metrics = {"sft/nll": masked_mean(-logp, mask).item(), "sft/tokens": mask.sum().item()}
        if ref_logprobs is not None:
            metrics["sft/implicit_reward"] = implicit_reward(logp, ref_logprobs, mask, beta).mean().item()
            metrics["sft/log_ratio"] = masked_mean(logp - ref_logprobs, mask).item()
    return metrics


# --------------------------------------------------------------------------------------------
# Plain SFT
# --------------------------------------------------------------------------------------------

@dataclass
class NLLParams:
    reduction: str = "token-mean"   # any AGGREGATIONS name: token-mean, seq-mean-token-mean, ...
    beta: float = 1.0               # scale of the logged implicit reward when ref_logprobs is given

    def __post_init__(self):
        if self.reduction not in AGGREGATIONS:
            raise ValueError(f"sft.reduction: {AGGREGATIONS.unknown_message(self.reduction)}")


@SFT_LOSSES.register("nll", params=NLLParams)
def nll(logits_or_logprobs: torch.Tensor, labels: torch.Tensor | None, mask: torch.Tensor,
        params: NLLParams, ref_logprobs: torch.Tensor | None = None):
    """Standard SFT:  L = −Σ_{b,t} m_bt log π(y_bt | x_b, y_b,<t) / Σ m  (with ``token-mean``).

    In the implicit-reward view this is the total-variation case, where the KL(π‖π_ref) regulariser
    is constant in π; ``ref_logprobs`` only feeds the logged implicit reward.
    """
    logp = _masked_logp(logits_or_logprobs, labels, mask)                          # [B,T]
    loss = AGGREGATIONS.get(params.reduction)(-logp, mask, mask.shape[-1])
    return loss, _base_metrics(logp, mask, ref_logprobs, params.beta)


# --------------------------------------------------------------------------------------------
# f-divergence SFT (RECONSTRUCTION)
# --------------------------------------------------------------------------------------------

@dataclass
class FDivParams:
    beta: float = 0.1            # ASSUMPTION: not found in the notes; sweep {0.1, 0.5, 1.0}
    level: str = "sequence"      # sequence: u = β Σ_t log-ratio (default); token: u_t = β log-ratio_t
    length_norm: bool = False    # sequence level: divide the summed log-ratio by the completion length
    domain_eps: float = 1e-3     # margin kept from the edge of φ's domain when clamping u

    def __post_init__(self):
        if self.level not in ("sequence", "token"):
            raise ValueError(f"sft.level must be 'sequence' or 'token', got {self.level!r}")
        if self.beta <= 0:
            raise ValueError(f"sft.beta must be > 0, got {self.beta}")


def _clamp_u(name: str, u: torch.Tensor, eps: float) -> torch.Tensor:
    """Keep u where φ is defined and increasing; outside, the clamp zeroes the gradient."""
    if name == "f_pearson":
        return u.clamp(max=2.0)               # φ'(u) = 1 − u/2 turns negative past u = 2
    if name == "f_hellinger":
        return u.clamp(min=-1.0 + eps)        # φ = u/(1+u) needs u > −1
    if name == "f_js":
        return u.clamp(min=-math.log(2.0) + eps)   # φ = log(2 − e^{−u}) needs u > −log 2
    if name == "f_tv":
        return u.clamp(-0.5, 0.5)             # TV conjugate lives on |v| <= 1/2
    return u


PHI: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    # φ(u) = −f*(−u) for the usual f-divergences (IQ-Learn's conjugate table)
    "f_pearson": lambda u: u - u ** 2 / 4,              # Pearson χ²: f = (t−1)², f*(v) = v + v²/4
    "f_hellinger": lambda u: u / (1 + u),               # squared Hellinger: f = (√t − 1)², f*(v) = v/(1−v)
    "f_js": lambda u: torch.log(2 - torch.exp(-u)),     # Jensen–Shannon: f*(v) = −log(2 − e^v)
    "f_kl": lambda u: -torch.exp(-u - 1),               # forward KL: f = t log t, f*(v) = e^{v−1}
    "f_tv": lambda u: u,                                # total variation: f*(v) = v on |v| <= 1/2
}


def f_divergence_loss(name: str, logits_or_logprobs: torch.Tensor, labels: torch.Tensor | None,
                      mask: torch.Tensor, params: FDivParams, ref_logprobs: torch.Tensor | None = None):
    """L_φ = −E_D[ φ(u_θ) ],  u_θ = β (log π_θ(y|x) − log π_ref(y|x))   (RECONSTRUCTION, see module doc).

    ∇L_φ = −E_D[ φ'(u_θ) β ∇ log π_θ(y|x) ]: a reweighted SFT gradient whose weight φ'(u) depends on
    how far π_θ has moved from π_ref. Sequence level (default): u_b = β Σ_t m_bt (logp − ref_logp)_bt
    (÷ Σ_t m_bt with ``length_norm``), loss = −mean_b φ(u_b) over rows with tokens. Token level:
    u_bt = β (logp − ref_logp)_bt, loss = −Σ m φ(u) / Σ m.
    """
    if ref_logprobs is None:
        raise ValueError(f"SFT loss {name!r} needs ref_logprobs: [B,T] log-probs of the labels under the "
                         "frozen pre-SFT model")
    logp = _masked_logp(logits_or_logprobs, labels, mask)                          # [B,T]
    ratio = torch.where(mask > 0, logp - ref_logprobs.detach(), 0.0)               # [B,T]
    if params.level == "sequence":
        lengths = mask.sum(-1)                                                      # [B]
        u = params.beta * ratio.sum(-1)                                             # [B]
        if params.length_norm:
            u = u / lengths.clamp(min=1)
        weight = (lengths > 0).to(u.dtype)                                          # [B]
    else:
        u, weight = params.beta * ratio, mask                                       # [B,T]
    u_c = _clamp_u(name, u, params.domain_eps)
    phi = PHI[name](u_c)
    loss = -(phi * weight).sum() / weight.sum().clamp(min=1)
    # φ'(u), the per-example weight on the SFT gradient (0 where the clamp is active)
    u_d = u.detach().requires_grad_(True)
    (dphi,) = torch.autograd.grad(PHI[name](_clamp_u(name, u_d, params.domain_eps)).sum(), u_d)
    metrics = _base_metrics(logp, mask, ref_logprobs, params.beta)
    with torch.no_grad():
        denom = weight.sum().clamp(min=1)
        metrics["sft/u_mean"] = ((u * weight).sum() / denom).item()
        metrics["sft/phi_weight_mean"] = ((dphi * weight).sum() / denom).item()
        metrics["sft/frac_clamped"] = (((u_c != u).to(u.dtype) * weight).sum() / denom).item()
    return loss, metrics


def _register_fdiv(name: str, divergence: str) -> None:
    def loss_fn(logits_or_logprobs, labels, mask, params: FDivParams, ref_logprobs=None):
        return f_divergence_loss(name, logits_or_logprobs, labels, mask, params, ref_logprobs)
    loss_fn.__name__ = name
    loss_fn.__doc__ = (f"{divergence} SFT objective, φ(u) from :data:`PHI` (RECONSTRUCTION/ASSUMPTION: the "
                       "paper's exact form is unknown). See :func:`f_divergence_loss`.")
    SFT_LOSSES.add(name, loss_fn, FDivParams)


_register_fdiv("f_pearson", "Pearson χ² (the one derived objective the notes confirm)")
_register_fdiv("f_hellinger", "Squared Hellinger (candidate, unconfirmed)")
_register_fdiv("f_js", "Jensen–Shannon (candidate, unconfirmed)")
_register_fdiv("f_kl", "Forward KL (candidate, unconfirmed)")
_register_fdiv("f_tv", "Total variation: φ(u) = u on |u| <= 1/2 (the paper's plain-SFT case), so there its gradient is "
               "β times the NLL gradient; NOT plain NLL overall: where |u| > 1/2 the clamp zeroes the gradient, so "
               "a sequence whose log-ratio to π_ref leaves ±1/(2β) stops training (use nll for plain SFT)")


# --------------------------------------------------------------------------------------------
# Remedy 1: a lower SFT learning rate
# --------------------------------------------------------------------------------------------

DEFAULT_SFT_LR = 2e-5                  # ASSUMPTION: the common UltraChat/Zephyr/SimPO SFT learning rate
LR_SCALES = (1.0, 0.5, 0.25, 0.1)     # ASSUMPTION: the reproduction sweep; the paper's values were not found


@dataclass
class LRReductionParams:
    base_lr: float = DEFAULT_SFT_LR   # η_0, the standard SFT learning rate
    lr_scale: float = 1.0             # the reduction: η = η_0 · lr_scale, chosen per model family by sweep
    warmup_ratio: float = 0.1         # linear warmup over ceil(warmup_ratio · total_steps) steps
    schedule: str = "cosine"          # cosine | linear | constant (after warmup), unchanged by the reduction

    def __post_init__(self):
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"sft.schedule must be cosine, linear or constant, got {self.schedule!r}")
        if not 0 < self.lr_scale <= 1:
            raise ValueError(f"sft.lr_scale must be in (0, 1], got {self.lr_scale}")


def lr_sweep(base_lr: float = DEFAULT_SFT_LR, scales=LR_SCALES) -> list[float]:
    """The learning rates to try: η_0 × {1, 1/2, 1/4, 1/10}; keep the best post-DPO win rate per model."""
    return [base_lr * s for s in scales]


def sft_learning_rate(step: int, total_steps: int, params: LRReductionParams) -> float:
    """η(step) for the reduced-LR SFT run: peak η_0·lr_scale, same warmup and decay as the baseline.

    Warmup: η·step/W for step < W = ceil(warmup_ratio·total_steps); then with p = (step − W)/(total − W):
    cosine η·½(1 + cos πp), linear η·(1 − p), constant η (as transformers' schedulers).
    """
    peak = params.base_lr * params.lr_scale
    warmup = math.ceil(params.warmup_ratio * total_steps)
    if step < warmup:
        return peak * step / warmup
    if params.schedule == "constant":
        return peak
    progress = min(max((step - warmup) / max(total_steps - warmup, 1), 0.0), 1.0)
    if params.schedule == "linear":
        return peak * (1.0 - progress)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
