"""ADORA: dynamic advantage estimation by online rollout adaptation (Ren et al., arXiv 2602.10019;
blog/code ShadeCloak/ADORA). Advantage ``adora``.

Each prompt group is classed as temporarily advantageous (TAS) or disadvantageous (TDS) from its own
rollouts, and the base estimator's advantages of the whole group are multiplied by one weight:

    P_g = {i : R_i > c}   N_g = {i : R_i <= c, not truncated}   p_g = |P_g| / G
    LA_g = [max_{i in P_g} L_i > L_fail],  L_fail = mean_{j in N_g} L_j          (Eq. 5, Length Advantage)
    DA_g = [p_lo <= p_g <= tau]                                                   (Eq. 6, Difficulty Advantage)
    TAS_g = DA_g ("difficulty", default) | LA_g ("length") | LA_g and DA_g | LA_g or DA_g   (last two: ASSUMPTION)
    w_g = kappa_tas if TAS_g else kappa_tds;       A_it = w_g * A^base_it

Presets: LLM / strong model (default) mode=difficulty, kappa_tas=2, kappa_tds=1, tau=0.5;
VLM / weak model (and the released code) mode=length, kappa_tas=1, kappa_tds=0.1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlpost.algos.core import ADVANTAGES, AdvantageInput, build_params, group_stats

MODES = ("difficulty", "length", "length_and_difficulty", "either")
VARIANTS = ("llm_code", "vlm_code")


@dataclass
class ADORAParams:
    mode: str = "difficulty"          # which criterion decides TAS (see module docstring)
    kappa_tas: float = 2.0            # weight of advantageous groups
    kappa_tds: float = 1.0            # weight of the others (0.1 = the blog/code's lambda)
    tau: float = 0.5                  # Difficulty: success rate <= tau
    p_lo: float | None = None         # optional lower bound on the success rate (ours, off)
    variant: str = "llm_code"         # Length edge cases: "llm_code" (no failure -> L_fail=-inf) | "vlm_code"
    correct_threshold: float = 0.5    # R > c counts as correct (K&K code: 1.01)
    max_length: int | None = None     # failures with L >= max_length count as truncated (else inp.truncated)
    base: str = "grpo"                # base estimator whose advantages are weighted (any other ADVANTAGES name)
    scale_rewards: str = "group"      # passed to the base estimator when it declares it
    eps: float = 1e-6                 # passed to the base estimator when it declares it

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"algo.advantage.mode must be one of {MODES}, got {self.mode!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"algo.advantage.variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.base == "adora":
            raise ValueError("algo.advantage.base cannot be 'adora' itself")


def group_weights(rewards: torch.Tensor, lengths: torch.Tensor, group_ids: torch.Tensor,
                  truncated: torch.Tensor, params: ADORAParams) -> tuple[torch.Tensor, dict]:
    """Per-completion weight w_{g(i)} [B] and per-group criteria (dict of [G] tensors).

    rewards [B] float, lengths [B] (response tokens), group_ids [B], truncated [B] bool.
    Empty-set conventions: no correct answer -> max L = -inf (LA false, except "vlm_code" where an
    all-wrong group is TAS); no untruncated failure -> L_fail = -inf ("llm_code", so LA true when P_g is
    non-empty) or +inf ("vlm_code", LA false).
    """
    R, L = rewards.to(torch.float64), lengths.to(torch.float64)
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    n_groups = counts.numel()
    zeros = torch.zeros(n_groups, dtype=torch.float64)
    pos = R > params.correct_threshold
    neg = ~pos & ~truncated.bool()
    n_pos = zeros.clone().index_add_(0, inv, pos.double())
    n_neg = zeros.clone().index_add_(0, inv, neg.double())
    max_pos = torch.full((n_groups,), float("-inf"), dtype=torch.float64).scatter_reduce(
        0, inv[pos], L[pos], reduce="amax", include_self=True)                              # [G]
    no_neg = float("-inf") if params.variant == "llm_code" else float("inf")
    l_fail = torch.where(n_neg > 0, zeros.clone().index_add_(0, inv, L * neg) / n_neg.clamp(min=1),
                         torch.full_like(zeros, no_neg))
    la = max_pos > l_fail
    if params.variant == "vlm_code":
        la = la | (n_pos == 0)
    rate = n_pos / counts
    da = rate <= params.tau
    if params.p_lo is not None:
        da = da & (rate >= params.p_lo)
    tas = {"difficulty": da, "length": la, "length_and_difficulty": la & da, "either": la | da}[params.mode]
    w_group = torch.where(tas, torch.full_like(zeros, params.kappa_tas), torch.full_like(zeros, params.kappa_tds))
    return w_group[inv], {"tas": tas, "la": la, "da": da, "success_rate": rate, "weight": w_group}


def _truncated(inp: AdvantageInput, lengths: torch.Tensor, params: ADORAParams) -> torch.Tensor:
    if inp.truncated is not None:
        return torch.as_tensor(inp.truncated, dtype=torch.bool)
    if params.max_length is not None:
        return lengths >= params.max_length
    return torch.zeros_like(lengths, dtype=torch.bool)


@ADVANTAGES.register("adora", params=ADORAParams)
def adora_advantage(inp: AdvantageInput, params: ADORAParams):
    """A_it = w_{g(i)} * A^base_it, weight applied after the base estimator's std normalisation (as the code).

    rewards [B], group_ids [B], response_mask [B,T] -> [B,T]. Optional ``inp.truncated`` [B] bool
    (finish_reason == "length"); without it ``max_length`` (or nothing) decides truncation. Groups of
    one or with all-equal rewards keep advantage 0 whatever their weight.
    """
    entry = ADVANTAGES.entry(params.base)
    base_params = build_params(entry.params, shared={"scale_rewards": params.scale_rewards, "eps": params.eps},
                               where=f"algo.advantage.base={params.base}")
    base_adv, metrics = entry.fn(inp, base_params)                                        # [B,T]
    lengths = inp.response_mask.sum(-1)
    w, crit = group_weights(inp.rewards, lengths, inp.group_ids, _truncated(inp, lengths, params), params)
    adv = base_adv * w.to(base_adv.dtype)[:, None]
    seq = adv.sum(-1) / inp.response_mask.sum(-1).clamp(min=1)
    # the groups the weight can change: two or more completions with different rewards (the others have A = 0)
    _, r_std, _ = group_stats(inp.rewards.to(torch.float64), inp.group_ids)
    _, inv = torch.unique(inp.group_ids, return_inverse=True)
    informative = torch.zeros(crit["weight"].numel(), dtype=torch.bool).index_put_((inv,), r_std > 1e-8)
    w_inf = crit["weight"][informative]
    metrics = dict(metrics)
    metrics.update({
        "advantage/mean": seq.mean().item(), "advantage/abs_mean": seq.abs().mean().item(),
        "adora/tas_frac": crit["tas"].double().mean().item(),
        "adora/length_adv_frac": crit["la"].double().mean().item(),
        "adora/difficulty_adv_frac": crit["da"].double().mean().item(),
        "adora/success_rate_mean": crit["success_rate"].mean().item(),
        "adora/weight_mean": crit["weight"].mean().item(),
        "adora/informative_tas_frac": crit["tas"][informative].double().mean().item() if w_inf.numel() else 0.0,
        # max - min weight among the step's informative groups: 0 means a uniform rescaling (a no-op under Adam)
        "adora/weight_spread": (w_inf.max() - w_inf.min()).item() if w_inf.numel() else 0.0,
    })
    return adv, metrics


adora_advantage.needs = ()
