"""HAPO: Heterogeneous Adaptive Policy Optimization (Liu et al., arXiv 2509.16591; code starriver030515/HAPO).

Every component is driven by one normalised entropy score h~ in [-1, 1] (paper Eq. 5-6):

    lam = log max(H, 1e-8);  q = Quantile_rho(lam), "nearest";  sigma = sqrt(mean (lam - q)^2)
    h   = (lam - q) / sigma;  h+ = max(max h>0, 1e-8);  h- = min(min h<0, -1e-8)
    h~  = h / h+  (h > 0)      h~ = h / h-    (h <= 0)        ("released_code", default: non-negative, as the
                                                              released code and the transcribed Eq. 6)
                               h~ = h / |h-|  (h <= 0)        ("signed": the prose's [-1, 1], an interpretation)

Defaults are the released code's settings behind the paper's Table 1 (starriver030515/HAPO @ 7671dde, all six
recipes): h_sign_mode "released_code" in the loss and the temperature processor, tau 0.05, eps_R 0.2, loss
statistics over the micro-batch, the |A| >= 5 group fallback on. The prose reading (signed, tau 0.1, eps_R 0.28,
step statistics, no fallback) stays available through those keys.

Components and where they live:

- A. adaptive temperature:  logits processor ``hapo_temperature`` (:class:`HAPOTemperature`)
- B. token-level group average:  advantage ``hapo`` (:func:`hapo_advantage`)
- C. differential advantage redistribution + D. asymmetric adaptive clipping:  policy loss ``hapo``
  (:func:`hapo_loss`), aggregate with ``token-mean``.

Statistics carried between steps: after the old-policy forward of step t the trainer computes
``stats = entropy_stats(old_entropies, response_mask, rho)`` over the whole batch; it feeds the loss of
step t (``inp.entropy_stats``, when ``loss_stats="step"``) and the rollout of step t+1
(``HAPOTemperature.next_state``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from rlpost.algos.core import (ADVANTAGES, POLICY_LOSSES, AdvantageInput, LossInput, entropy_from_logprobs, group_stats,
                               masked_mean)
from rlpost.algos.logits_processors import LOGITS_PROCESSORS

H_SIGN_MODES = ("signed", "released_code")


def _check_mode(mode: str, where: str) -> None:
    if mode not in H_SIGN_MODES:
        raise ValueError(f"{where}.h_sign_mode must be one of {H_SIGN_MODES}, got {mode!r}")


# ---------------------------------------------------------------- shared: the entropy score h~

@dataclass
class EntropyStats:
    """Statistics of one window of log-entropies: pivot q, RMS sigma about q, extremes h+ > 0 and h- < 0."""
    q: float
    sigma: float
    h_pos_max: float
    h_neg_min: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_any(cls, value) -> "EntropyStats | None":
        """Accept an EntropyStats, its dict form (from a checkpoint) or None."""
        if value is None or isinstance(value, cls):
            return value
        return cls(**value)


def nearest_quantile(values: torch.Tensor, rho: float) -> torch.Tensor:
    """torch.quantile(values, rho, interpolation="nearest") without its input-size limit:
    the element of rank round_half_even(rho * (n - 1)) (0-based) in sorted order. values: [n], n >= 1."""
    k = round(rho * (values.numel() - 1))   # Python's round is half-to-even, like torch.round
    return torch.kthvalue(values, k + 1).values


def entropy_stats(entropies: torch.Tensor, mask: torch.Tensor, rho: float = 0.8) -> EntropyStats | None:
    """Window statistics (code ``compute_entropy_h``). entropies, mask: [B,T]. None for an empty mask.

        lam = log max(H, 1e-8);  q = Quantile_rho(lam[mask]);  sigma = sqrt(max(mean (lam - q)^2, 1e-8))
        h+  = max(max_{h>0} h, 1e-8);  h- = min(min_{h<0} h, -1e-8),  h = (lam - q) / sigma
    """
    lam = entropies.detach().float().clamp(min=1e-8).log()[mask.bool()]   # [n]
    if lam.numel() == 0:
        return None
    q = nearest_quantile(lam, rho)
    sigma = (lam - q).pow(2).mean().clamp(min=1e-8).sqrt()
    h = (lam - q) / sigma
    h_pos = h.max().clamp(min=1e-8)           # if no h > 0, max <= 0 and the clamp gives 1e-8
    h_neg = h.min().clamp(max=-1e-8)
    return EntropyStats(q.item(), sigma.item(), h_pos.item(), h_neg.item())


def h_tilde(entropies: torch.Tensor, stats: EntropyStats | None, mode: str = "signed") -> torch.Tensor:
    """h~ per token, same shape as ``entropies``; 0 everywhere when ``stats`` is None (no statistics yet).

    Clamped to [-1, 1]: a no-op inside the window the stats came from, and the paper's clip(h~, -1, 1)
    when the stats come from another window (previous step's rollout, step-level stats in the loss).
    """
    if stats is None:
        return torch.zeros_like(entropies, dtype=torch.float32)
    h = (entropies.detach().float().clamp(min=1e-8).log() - stats.q) / stats.sigma
    neg_scale = 1.0 / abs(stats.h_neg_min) if mode == "signed" else 1.0 / stats.h_neg_min
    return torch.where(h > 0, h / stats.h_pos_max, h * neg_scale).clamp(-1.0, 1.0)


# ---------------------------------------------------------------- B. token-level group average advantage

@dataclass
class HAPOAdvParams:
    scale_rewards: str = "group"       # "group": divide by the token-weighted group std; "none": R - mu_g only
    eps: float = 1e-6                  # added to the std
    group_adv_fallback: bool = True    # released code (not in the paper): a group with any |A| >= threshold uses GRPO's A
    fallback_threshold: float = 5.0

    def __post_init__(self):
        if self.scale_rewards is False or self.scale_rewards is None:
            self.scale_rewards = "none"
        if self.scale_rewards is True:
            self.scale_rewards = "group"
        if self.scale_rewards not in ("group", "none"):
            raise ValueError("algo.advantage hapo supports scale_rewards 'group' or 'none' (the token-weighted "
                             f"group std), got {self.scale_rewards!r}")


@ADVANTAGES.register("hapo", params=HAPOAdvParams)
def hapo_advantage(inp: AdvantageInput, params: HAPOAdvParams):
    """Token-Level Group Average (paper Eq. 9). rewards [B], group_ids [B], response_mask [B,T] -> A [B,T].

        L_i = sum_t m_it;  mu_g = sum_i L_i R_i / sum_i L_i;  sd_g = sqrt(sum_i L_i (R_i - mu_g)^2 / sum_i L_i)
        A_it = (R_i - mu_g) / (sd_g + eps)          so that  sum_{i in g, t} m_it A_it = 0

    A group with no tokens gets 0. ``group_adv_fallback`` (released code, not in the paper; on by default)
    replaces a group whose valid tokens have any |A| >= ``fallback_threshold`` by GRPO's
    (R_i - mean R) / (std_unbiased R + eps), which breaks the zero-sum property for that group.
    """
    R = inp.rewards.to(torch.float64)
    mask = inp.response_mask
    L = mask.sum(-1).to(torch.float64)                                          # [B]
    _, inv, counts = torch.unique(inp.group_ids, return_inverse=True, return_counts=True)
    n_groups = counts.numel()
    zeros = torch.zeros(n_groups, dtype=torch.float64)
    sum_l = zeros.clone().index_add_(0, inv, L)                                  # [G]
    mu = zeros.clone().index_add_(0, inv, L * R) / sum_l.clamp(min=1e-12)
    var = zeros.clone().index_add_(0, inv, L * (R - mu[inv]) ** 2) / sum_l.clamp(min=1e-12)
    adv = R - mu[inv]
    if params.scale_rewards == "group":
        adv = adv / (var.sqrt()[inv] + params.eps)
    adv = torch.where(sum_l[inv] > 0, adv, torch.zeros_like(adv))
    fell_back = torch.zeros(n_groups, dtype=torch.bool)
    if params.group_adv_fallback:
        big = ((adv.abs() >= params.fallback_threshold) & (L > 0)).to(torch.float64)
        fell_back = zeros.clone().index_add_(0, inv, big) > 0
        g_mean, g_std, _ = group_stats(R, inp.group_ids)
        adv = torch.where(fell_back[inv], (R - g_mean) / (g_std + params.eps), adv)
    token_adv = adv.to(mask.dtype)[:, None] * mask                              # [B,T]
    group_sum = zeros.clone().index_add_(0, inv, (token_adv.to(torch.float64)).sum(-1))
    r_mean, r_std, _ = group_stats(R, inp.group_ids)
    informative = (r_std > 1e-8) & (sum_l[inv] > 0)                                  # [B]
    shift = (mu[inv] - r_mean).abs()                                                 # B's effect on the group mean
    metrics = {
        "advantage/mean": adv.mean().item() if adv.numel() else 0.0,
        "advantage/abs_mean": adv.abs().mean().item() if adv.numel() else 0.0,
        "reward/frac_zero_std": (r_std < 1e-8).double().mean().item() if adv.numel() else 0.0,
        "hapo/fallback_group_frac": fell_back.double().mean().item() if n_groups else 0.0,
        "hapo/max_abs_group_token_adv_sum": group_sum.abs().max().item() if n_groups else 0.0,
        # |token-weighted - plain group mean reward|, mean over rows of informative groups (0: B acts as GRPO)
        "hapo/token_mean_shift": shift[informative].mean().item() if bool(informative.any()) else 0.0,
    }
    return token_adv, metrics


hapo_advantage.needs = ()


# ---------------------------------------------------------------- C + D. the loss

@dataclass
class HAPOLossParams:
    epsilon: float = 0.2                 # eps_L, base lower clip (code and paper 0.2)
    epsilon_high: float | None = 0.2     # eps_R, base upper clip (released code 0.2, paper 0.28); None = epsilon
    dual_clip_c: float | None = 10.0     # dual-clip bound for A < 0 (code recipes 10, YAML 3); None = off
    entropy_pivot: float = 0.8           # rho, the quantile of log-entropy that maps to h~ = 0
    clip_alpha: float = 1.0              # alpha (D): bounds widen up to (1 + alpha) x base
    adv_beta: float = 1.0                # beta (C): advantage factor 1 + beta h~
    h_sign_mode: str = "released_code"   # "released_code" (code, Eq. 6: h~ >= 0 for low entropy) | "signed" (prose)
    loss_stats: str = "microbatch"       # "microbatch": the code's (stats of the loss's own window); "step": the
                                         # step's old entropies (independent of micro-batch packing)
    adv_redistribution: bool = True      # component C on/off (ablation)
    adaptive_clip: bool = True           # component D on/off (ablation)

    def __post_init__(self):
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        _check_mode(self.h_sign_mode, "algo.loss")
        if self.loss_stats not in ("step", "microbatch"):
            raise ValueError(f"algo.loss.loss_stats must be 'step' or 'microbatch', got {self.loss_stats!r}")
        if self.dual_clip_c is not None and self.dual_clip_c <= 1.0:
            raise ValueError(f"algo.dual_clip_c must be > 1, got {self.dual_clip_c}")
        if not 0.0 <= self.entropy_pivot <= 1.0:
            raise ValueError(f"algo.loss.entropy_pivot must be in [0, 1], got {self.entropy_pivot}")


def adaptive_clip_bounds(ht: torch.Tensor, eps_low: float, eps_high: float, alpha: float):
    """D (Eq. 12-13), per token:  eps_L(h~) = eps_L (1 - alpha h~) if h~ <= 0 else eps_L
                                 eps_R(h~) = eps_R (1 + alpha h~) if h~ > 0  else eps_R.   ht: [B,T]"""
    low = torch.where(ht <= 0, eps_low * (1.0 - alpha * ht), torch.full_like(ht, eps_low))
    high = torch.where(ht > 0, eps_high * (1.0 + alpha * ht), torch.full_like(ht, eps_high))
    return low, high


def redistribute_advantages(adv, ht, ratio, eps_low, eps_high, beta: float):
    """C (Eq. 10-11), no grad. All [B,T]; eps_low/eps_high are the (adapted) per-token bounds.

        N = (1 - eps_L/2, 1 + eps_R/2)  (open);  boost = [h~ > 0 and r not in N] or [h~ <= 0 and r in N]
        A' = A (1 + beta h~) if boost else A
    Returns (A', boost [bool]).
    """
    in_zone = (ratio > 1.0 - eps_low / 2) & (ratio < 1.0 + eps_high / 2)
    boost = torch.where(ht > 0, ~in_zone, in_zone)
    return torch.where(boost, adv * (1.0 + beta * ht), adv), boost


def _loss_stats(inp: LossInput, params: HAPOLossParams) -> EntropyStats | None:
    if params.loss_stats == "microbatch":
        return entropy_stats(inp.entropies, inp.response_mask, params.entropy_pivot)
    if inp.entropy_stats is None:
        raise KeyError("algo.loss hapo with loss_stats='step' needs inp.entropy_stats = "
                       "rlpost.algos.hapo.entropy_stats(old_entropies, response_mask, entropy_pivot) computed "
                       "once over the step's batch; or set algo.loss.loss_stats=microbatch")
    return EntropyStats.from_any(inp.entropy_stats)


@POLICY_LOSSES.register("hapo", params=HAPOLossParams)
def hapo_loss(inp: LossInput, params: HAPOLossParams):
    """HAPO clipped surrogate with per-token bounds (D) and redistributed advantages (C). Returns [B,T].

        r = exp(l - l_old);  h~ from the *current* entropies ``inp.entropies`` [B,T]
        l_it = max(-A' r, -A' clip(r, 1 - eps_L(h~), 1 + eps_R(h~)));  A' < 0:  l_it = min(l_it, -A' c)

    Needs ``inp.entropies`` and, with ``loss_stats="step"``, ``inp.entropy_stats``
    (an :class:`EntropyStats` or its dict). Aggregate with ``token-mean``.
    """
    if inp.entropies is None:
        raise ValueError("algo.loss hapo needs the current policy's per-token entropies (inp.entropies)")
    mask = inp.response_mask
    ratio = torch.exp((inp.logprobs - inp.old_logprobs).clamp(-20.0, 20.0))       # [B,T]
    with torch.no_grad():
        ht = h_tilde(inp.entropies, _loss_stats(inp, params), params.h_sign_mode)   # [B,T]
        if params.adaptive_clip:
            eps_low, eps_high = adaptive_clip_bounds(ht, params.epsilon, params.epsilon_high, params.clip_alpha)
        else:
            eps_low, eps_high = torch.full_like(ht, params.epsilon), torch.full_like(ht, params.epsilon_high)
        adv = inp.advantages.detach()
        boost = torch.zeros_like(ht, dtype=torch.bool)
        if params.adv_redistribution:
            adv, boost = redistribute_advantages(adv, ht, ratio.detach(), eps_low, eps_high, params.adv_beta)
    clipped_ratio = torch.maximum(torch.minimum(ratio, 1.0 + eps_high), 1.0 - eps_low)
    loss_unclipped, loss_clipped = -adv * ratio, -adv * clipped_ratio
    loss = torch.maximum(loss_unclipped, loss_clipped)
    if params.dual_clip_c is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * params.dual_clip_c), loss)
    with torch.no_grad():
        m = mask.float()
        metrics = {
            "policy/clipfrac": masked_mean((loss_clipped > loss_unclipped).float(), m).item(),
            "policy/ratio_mean": masked_mean(ratio, m).item(),
            "policy/approx_kl": masked_mean(0.5 * (inp.logprobs - inp.old_logprobs) ** 2, m).item(),
            "hapo/h_tilde_mean": masked_mean(ht, m).item(),
            "hapo/boost_frac": masked_mean((boost & (ht > 0)).float(), m).item(),
            "hapo/damp_frac": masked_mean((boost & (ht < 0)).float(), m).item(),
            "hapo/eps_low_mean": masked_mean(eps_low, m).item(),
            "hapo/eps_high_mean": masked_mean(eps_high, m).item(),
        }
    return loss, metrics


hapo_loss.needs = ("entropies", "entropy_stats")
hapo_loss.default_aggregation = "token-mean"


# ---------------------------------------------------------------- A. adaptive temperature (rollout)

@dataclass
class HAPOTemperatureParams:
    temperature_tau: float = 0.05    # tau: T = T_base (1 + tau h~)  (released code 0.05, paper 0.1)
    entropy_pivot: float = 0.8       # rho of the statistics carried from the previous step
    h_sign_mode: str = "released_code"   # the code's sampler; "signed" = the prose reading
    temperature: float = 1.0         # T_base, applied by the engine; used here only for the logged temperatures

    def __post_init__(self):
        _check_mode(self.h_sign_mode, "rollout.logits_processor")
        if not 0.0 <= self.temperature_tau < 1.0:
            raise ValueError(f"temperature_tau must be in [0, 1) so that T > 0, got {self.temperature_tau}")


@LOGITS_PROCESSORS.register("hapo_temperature", params=HAPOTemperatureParams)
class HAPOTemperature:
    """Component A (paper Eq. 8, code ``vllm/v1/sample/sampler.py``): per-token temperature.

        H = entropy(softmax(raw logits));  h~ from the previous step's stats;  T = T_base (1 + tau clip(h~, -1, 1))

    Runs before the engine's temperature, so it returns logits / (1 + tau h~) and the engine's division by
    T_base completes T. With no statistics (first step) the logits pass through unchanged.
    Call: (step, input_ids [N,L] or None, logits [N,V]) -> logits [N,V]; it never reads input_ids, so it declares
    ``needs_input_ids = False`` and the vLLM engine skips rebuilding every row's token history each decode step.
    """

    needs_input_ids = False

    def __init__(self, params: HAPOTemperatureParams | None = None, state: dict | None = None):
        self.params = params or HAPOTemperatureParams()
        self.stats = EntropyStats.from_any(state)
        self._acc = None   # device tensors [sum, count, min, max, n_up, n_down]: no host sync per decode step

    @staticmethod
    def next_state(old_entropies: torch.Tensor, response_mask: torch.Tensor,
                   params: HAPOTemperatureParams | None = None) -> dict | None:
        """Statistics of all of this step's response tokens (old-policy entropies) for the next rollout."""
        rho = (params or HAPOTemperatureParams()).entropy_pivot
        stats = entropy_stats(old_entropies, response_mask, rho)
        return None if stats is None else stats.to_dict()

    def __call__(self, step: int, input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        x = logits.float()
        if self.stats is None:
            factor = torch.ones(x.shape[0], device=x.device)
        else:
            ent = entropy_from_logprobs(torch.log_softmax(x, dim=-1))                          # [N]
            factor = 1.0 + self.params.temperature_tau * h_tilde(ent, self.stats, self.params.h_sign_mode)
        self._record(factor)
        return (x / factor[:, None]).to(logits.dtype)

    def _record(self, factor: torch.Tensor) -> None:
        row = torch.stack([factor.sum(), torch.tensor(float(factor.numel()), device=factor.device),
                           factor.min(), factor.max(), (factor > 1).sum().float(), (factor < 1).sum().float()])
        if self._acc is None:
            self._acc = row
        else:
            a = self._acc
            self._acc = torch.stack([a[0] + row[0], a[1] + row[1], torch.minimum(a[2], row[2]),
                                     torch.maximum(a[3], row[3]), a[4] + row[4], a[5] + row[5]])

    def metrics(self) -> dict[str, float]:
        """Temperatures over every token sampled since construction (T_base x factor)."""
        if self._acc is None:
            return {}
        s, n, lo, hi, up, down = self._acc.tolist()
        t = self.params.temperature
        return {"hapo/temperature_mean": t * s / n, "hapo/temperature_min": t * lo, "hapo/temperature_max": t * hi,
                "hapo/temperature_up_frac": up / n, "hapo/temperature_down_frac": down / n,
                "hapo/has_stats": float(self.stats is not None)}
