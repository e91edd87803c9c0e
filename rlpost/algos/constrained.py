"""Constrained RLHF with Lagrange multipliers (Moskovitz et al., ICLR 2024, arXiv 2310.04373).

A composite reward of N component reward models (RMs) over-optimises each component past its
**proxy point** θ_i. The paper recasts RLHF as a constrained MDP, one threshold per component:

    max_π v_0^π   s.t.   v_i^π ≥ θ_i  (μ, "mu"),   v_i^π = θ_i  (ξ, "xi"),   v_i^π ≤ θ_i  ("all")

and mixes per-component advantages with bounded multipliers (Eq. 4.4):

    A_mix = (N − Σ_i g(μ_i)) · A_task + s · Σ_i g(μ_i) · A_i        s = +1 (mu, xi), −1 (all)
    g = sigmoid (mu, all: weights in (0,1)),  tanh (xi: weights in (−1,1))

The multipliers minimise  L_μ = Σ_i g(μ_i) · sg(Ĵ_i − θ_i)  (all: sg(θ_i − Ĵ_i)) with SGD
(lr 0.1, momentum 0.1) after every policy mini-batch, Ĵ_i being the mini-batch mean of RM i
(App. A Alg. 1; ``constrained_ppo.py`` in tedmoskovitz/ConstrainedRL4LMs). The task reward of μ/ξ is
the negative KL to the initial policy, R_kl = −α_KL Σ_t (log π_old − log π_ref)_t with α_KL = 0.2.

GRPO mapping (our default reading): the per-RM critics become per-component **group**
normalisation, A_i = norm_g(R_i) = (R_i − mean_g R_i) / (std_g R_i + eps), applied to each
component separately *before* mixing.

Also here: the SAT baseline r_SAT = −Σ α_i (r_i − θ_i)², the fixed weighted sum (PPO baseline), the
Ziegler adaptive KL coefficient those baselines use, and NM-PPO: a Nelder–Mead search over θ that
runs inside a single training run (:class:`NelderMead`, :class:`ProxyPointSearch`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from rlpost.algos.advantages import broadcast
from rlpost.algos.core import ADVANTAGES, AdvantageInput, build_params, group_stats

MODES = ("mu", "xi", "all", "sat", "sum")
MULTIPLIER_MODES = ("mu", "xi", "all")
SQUASH = {"mu": torch.sigmoid, "all": torch.sigmoid, "xi": torch.tanh}
TASKS = ("kl", "reward", "weighted_sum")


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------

@dataclass
class ProxySearchParams:
    """NM-PPO (App. A.4, Alg. 3): Nelder–Mead over the thresholds within one run."""
    init_values: dict = field(default_factory=dict)  # RM means of the initial policy (v_init), per component
    max_values: dict = field(default_factory=dict)   # highest RM means seen (v_max)
    # initial simplex: θ_j = v_init + U(0,1)·(v_max − v_init), N+1 vertices
    eval_every: int = 5          # training iterations between evaluations of the current proposal
    cap_iters: int = 25          # max iterations per proposal (paper: 1/8 of the budget; code: n_iters // 10)
    reach_tol: float = 0.05      # a proposal is reached when every |Ĵ_i − θ_i| <= reach_tol·|θ_i|
    cache_tol: float = 5e-3      # reuse a score when every |θ_i − θ'_i| <= cache_tol (code: absolute 5e-3)
    tol: float = 0.01            # stop when std(F(simplex)) < tol
    max_evals: int | None = None  # stop after this many function evaluations (None: trainer's step budget only)
    alpha: float = 1.0           # reflection
    gamma: float = 2.0           # expansion
    rho: float = 0.5             # contraction
    sigma: float = 0.5           # shrink
    seed: int = 0                # draws the initial simplex


@dataclass
class ConstrainedAdvParams:
    """``algo.advantage: {name: constrained, ...}``. Component order = order of ``thresholds``."""
    mode: str = "xi"                      # mu | xi | all | sat | sum (see module docstring)
    thresholds: dict = field(default_factory=dict)  # θ_i per component name (the proxy points)
    weights: dict = field(default_factory=dict)     # fixed α_i for sat / sum / the all-task (default 1.0)
    task: str | None = None               # kl | reward | weighted_sum; None: kl for mu/xi, weighted_sum for all
    kl_coef: float = 0.2                  # α_KL in R_kl = −α_KL Σ_t (old_logp − ref_logp)
    scale_rewards: str = "group"          # std that divides each centred component: group | batch | none
    eps: float = 1e-4                     # added to that std
    multiplier_lr: float = 0.1            # SGD lr of the multiplier logits
    multiplier_momentum: float = 0.1      # SGD momentum (low momentum matters, paper §4)
    multiplier_init_std: float = 0.01     # μ_raw = one N(0, std²) draw copied to every component
    multiplier_max_grad_norm: float | None = None  # the code reuses the policy's max_grad_norm
    multiplier_update: str = "minibatch"  # minibatch (code) | rollout: when the trainer calls update()
    seed: int = 0                         # multiplier initialisation
    proxy_search: Any = None              # dict of ProxySearchParams fields to run NM-PPO, or None

    def __post_init__(self):
        where = "algo.advantage"
        if self.mode not in MODES:
            raise ValueError(f"{where}.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        self.thresholds = _float_dict(self.thresholds, f"{where}.thresholds")
        self.weights = _float_dict(self.weights, f"{where}.weights")
        if self.mode != "sum" and not self.thresholds:
            raise ValueError(f"{where}.thresholds is required for mode {self.mode!r}: "
                             "a mapping component name -> proxy point θ_i")
        if self.mode == "sum" and not self.weights:
            raise ValueError(f"{where}.weights is required for mode 'sum'")
        unknown = set(self.weights) - set(self.components)
        if unknown:
            raise ValueError(f"{where}.weights names {sorted(unknown)} not in thresholds {self.components}")
        if self.task is None and self.mode in MULTIPLIER_MODES:
            self.task = "weighted_sum" if self.mode == "all" else "kl"
        if self.mode in MULTIPLIER_MODES and self.task not in TASKS:
            raise ValueError(f"{where}.task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.mode not in MULTIPLIER_MODES and self.task is not None:
            raise ValueError(f"{where}.task applies to mu/xi/all only (mode {self.mode!r})")
        if self.scale_rewards is False or self.scale_rewards is None:   # TRL booleans, as GRPOAdvParams
            self.scale_rewards = "none"
        if self.scale_rewards is True:
            self.scale_rewards = "group"
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"{where}.scale_rewards must be group, batch or none, got {self.scale_rewards!r}")
        if self.multiplier_update not in ("minibatch", "rollout"):
            raise ValueError(f"{where}.multiplier_update must be minibatch or rollout, got {self.multiplier_update!r}")
        if isinstance(self.proxy_search, Mapping):
            self.proxy_search = build_params(ProxySearchParams, overrides=dict(self.proxy_search),
                                             where=f"{where}.proxy_search")
        if self.proxy_search is not None:
            for key in ("init_values", "max_values"):
                values = _float_dict(getattr(self.proxy_search, key), f"{where}.proxy_search.{key}")
                if set(values) != set(self.components):
                    raise ValueError(f"{where}.proxy_search.{key} must name exactly {self.components}, "
                                     f"got {sorted(values)}")
                setattr(self.proxy_search, key, {n: values[n] for n in self.components})

    @property
    def components(self) -> list[str]:
        return list(self.thresholds or self.weights)

    @property
    def uses_multipliers(self) -> bool:
        return self.mode in MULTIPLIER_MODES


def _float_dict(values, where: str) -> dict[str, float]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ValueError(f"{where} must be a mapping component name -> number, got {values!r}")
    return {str(k): float(v) for k, v in values.items()}


def _scalar(value) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def _vector(values, names: Sequence[str], what: str) -> torch.Tensor:
    """Mapping name -> number, or a sequence/tensor in ``names`` order, as a float64 [N] CPU tensor."""
    if isinstance(values, Mapping):
        missing = [n for n in names if n not in values]
        if missing:
            raise KeyError(f"{what} lacks {missing}; has {sorted(values)}")
        return torch.tensor([_scalar(values[n]) for n in names], dtype=torch.float64)
    vec = torch.as_tensor(values, dtype=torch.float64).detach().cpu().reshape(-1)
    if vec.numel() != len(names):
        raise ValueError(f"{what} has {vec.numel()} entries, expected {len(names)} ({names})")
    return vec


# --------------------------------------------------------------------------------------------
# Rewards
# --------------------------------------------------------------------------------------------

def component_matrix(comps: Mapping[str, Any] | None, names: Sequence[str]) -> torch.Tensor:
    """``comps`` (``inp.reward_components``, name -> [B]) stacked in ``names`` order: [B, N] float64."""
    if comps is None:
        raise KeyError("advantage 'constrained' needs inp.reward_components: name -> [B] tensor")
    missing = [n for n in names if n not in comps]
    if missing:
        raise KeyError(f"inp.reward_components lacks {missing}; has {sorted(comps)}")
    return torch.stack([torch.as_tensor(comps[n]).to(torch.float64) for n in names], dim=-1)


def composite_reward(R: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Eq. 3.1:  r̃ = Σ_i α_i r_i.   R: [B, N], alpha: [N] -> [B]."""
    return (R * alpha).sum(-1)


def satisfaction_reward(R: torch.Tensor, theta: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """PPO-SAT:  r_SAT = −Σ_i α_i (r_i − θ_i)².   R: [B, N] -> [B]."""
    return -(alpha * (R - theta) ** 2).sum(-1)


def kl_task_reward(old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                   kl_coef: float) -> torch.Tensor:
    """Task of μ/ξ:  R_kl = −α_KL Σ_t m_t (log π_old − log π_ref)_t,  [B,T] -> [B] (sequence level)."""
    return -kl_coef * ((old_logprobs - ref_logprobs).to(torch.float64) * mask).sum(-1)


def normalize(values: torch.Tensor, group_ids: torch.Tensor, scale: str, eps: float) -> torch.Tensor:
    """norm_g(v) = (v − mean_g v) / (std + eps); std of the group, of the batch, or 1 (eps 0) for none."""
    mean, std, _ = group_stats(values, group_ids)
    centred = values.to(torch.float64) - mean
    if scale == "group":
        return centred / (std + eps)
    if scale == "batch":
        return centred / (values.to(torch.float64).std() + eps)
    return centred


def adaptive_kl_coef(coef: float, kl: float, target: float, rate: float = 0.1, clip: float = 0.2) -> float:
    """Ziegler et al. adaptive KL (App. B), used by the PPO/SAT/All baselines (target 0.5):

        e = clip((KL − target) / target, −clip, clip),   α_KL ← α_KL (1 + rate · e)

    ``rate`` η_KL is not given in the notes; 0.1 is RL4LMs' constant.
    """
    e = min(max((kl - target) / target, -clip), clip)
    return coef * (1.0 + rate * e)


# --------------------------------------------------------------------------------------------
# Lagrange multipliers
# --------------------------------------------------------------------------------------------

class LagrangeMultipliers:
    """Bounded multipliers g(μ_i) for mu (sigmoid), xi (tanh) and all (sigmoid, upper bounds).

    The unconstrained logits μ_raw [N] are a torch parameter with their own SGD optimizer. After each
    policy mini-batch, :meth:`update` takes one step on  L_μ = Σ_i g(μ_i) · sg(Ĵ_i − θ_i)
    (``all``: sg(θ_i − Ĵ_i)), so μ_i rises while RM i is below (mu), off (xi) or above (all) θ_i.
    Kept in float64 so the weights stay strictly inside their bounds.
    """

    def __init__(self, thresholds: Mapping[str, float], mode: str = "xi", lr: float = 0.1,
                 momentum: float = 0.1, init_std: float = 0.01, max_grad_norm: float | None = None,
                 seed: int = 0):
        if mode not in SQUASH:
            raise ValueError(f"multipliers exist for modes {', '.join(SQUASH)}, got {mode!r}")
        self.names = list(thresholds)
        self.mode = mode
        self.squash = SQUASH[mode]
        self.max_grad_norm = max_grad_norm
        self.thresholds = _vector(thresholds, self.names, "thresholds")  # [N]
        gen = torch.Generator().manual_seed(seed)
        # the reference code draws one N(0, std²) value and copies it to all N multipliers
        draw = torch.randn((), generator=gen, dtype=torch.float64) * init_std
        self.mu_raw = torch.nn.Parameter(draw.repeat(len(self.names)))  # [N]
        self.optimizer = torch.optim.SGD([self.mu_raw], lr=lr, momentum=momentum)

    @classmethod
    def from_params(cls, params: ConstrainedAdvParams) -> "LagrangeMultipliers":
        return cls(params.thresholds, mode=params.mode, lr=params.multiplier_lr,
                   momentum=params.multiplier_momentum, init_std=params.multiplier_init_std,
                   max_grad_norm=params.multiplier_max_grad_norm, seed=params.seed)

    def weights(self) -> torch.Tensor:
        """g(μ_raw), detached: [N] in (0,1) (sigmoid) or (−1,1) (tanh)."""
        with torch.no_grad():
            return self.squash(self.mu_raw).clone()

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.names, self.weights().tolist()))

    def set_thresholds(self, thresholds) -> None:
        """New θ (NM-PPO proposals); the multiplier logits and momentum are kept."""
        self.thresholds = _vector(thresholds, self.names, "thresholds")

    def extra(self) -> dict[str, Any]:
        """What the advantage reads: ``dataclasses.replace(inp, **multipliers.extra())``."""
        return {"multiplier_weights": self.weights(),
                "thresholds": dict(zip(self.names, self.thresholds.tolist()))}

    def update(self, component_returns) -> dict[str, float]:
        """One SGD step. ``component_returns``: Ĵ_i, the mini-batch mean of each RM (name -> value, or [N])."""
        J = _vector(component_returns, self.names, "component_returns")  # [N]
        gap = self.thresholds - J if self.mode == "all" else J - self.thresholds
        loss = (self.squash(self.mu_raw) * gap).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([self.mu_raw], self.max_grad_norm)
        self.optimizer.step()
        metrics = {"constrained/multiplier_loss": loss.item()}
        metrics.update({f"constrained/multiplier/{n}": w for n, w in self.as_dict().items()})
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "mode": self.mode, "mu_raw": self.mu_raw.detach().clone(),
                "thresholds": self.thresholds.clone(),
                # deep copy: the SGD momentum buffer is updated in place and would be shared otherwise
                "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["names"]) != self.names or state["mode"] != self.mode:
            raise ValueError(f"multiplier state is for {state['mode']} {list(state['names'])}, "
                             f"not {self.mode} {self.names}")
        with torch.no_grad():
            self.mu_raw.copy_(state["mu_raw"])
        self.thresholds = state["thresholds"].clone().to(torch.float64)
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))


# --------------------------------------------------------------------------------------------
# Advantage
# --------------------------------------------------------------------------------------------

@ADVANTAGES.register("constrained", params=ConstrainedAdvParams)
def constrained(inp: AdvantageInput, params: ConstrainedAdvParams):
    """Per-component normalised advantages mixed by bounded multipliers (Eq. 4.4).

    inp (typed fields):
      reward_components:  name -> [B] tensor, one score per completion per RM
      multiplier_weights: [N] tensor (component order) or name -> float, g(μ_i) (mu/xi/all)
      thresholds:         name -> θ_i, overrides ``params.thresholds`` (NM-PPO moves them)
      old_logprobs, ref_logprobs: [B,T], for ``task: kl``

    mu/xi:  A = (N − Σw) norm(R_task) + Σ_i w_i norm(R_i)
    all:    A = (N − Σw) norm(R_task) − Σ_i w_i norm(R_i)
    sat:    A = norm(−Σ_i α_i (R_i − θ_i)²)          sum:  A = norm(Σ_i α_i R_i)
    With ``algo.kl_reward`` (``inp.kl_penalty`` = β Σ_t KL_t) every R_task above is R_task − β Σ_t KL_t.
    Returns per-token advantages [B,T] (the sequence value on every completion token).
    """
    names = params.components
    N = len(names)
    R = component_matrix(inp.reward_components, names)                                          # [B, N]
    theta = None                                                                    # [N] or None (sum)
    if params.thresholds:
        given = inp.thresholds if inp.thresholds is not None else params.thresholds
        theta = _vector(given, names, "thresholds").to(R.device)
    alpha = torch.tensor([params.weights.get(n, 1.0) for n in names], dtype=torch.float64, device=R.device)

    def norm(v):
        return normalize(v, inp.group_ids, params.scale_rewards, params.eps)

    metrics: dict[str, float] = {}
    if params.mode == "sat":
        R_task = _minus_kl(satisfaction_reward(R, theta, alpha), inp)               # [B]
        seq_adv = norm(R_task)
    elif params.mode == "sum":
        R_task = _minus_kl(composite_reward(R, alpha), inp)
        seq_adv = norm(R_task)
    else:
        if inp.multiplier_weights is None:
            raise KeyError(f"mode {params.mode!r} needs inp.multiplier_weights "
                           "(use dataclasses.replace(inp, **LagrangeMultipliers.extra()))")
        w = _vector(inp.multiplier_weights, names, "multiplier_weights").to(R.device)  # [N]
        R_task = _minus_kl(_task_reward(inp, params, R, alpha), inp)              # [B]
        A_i = torch.stack([norm(R[:, i]) for i in range(N)], dim=-1)              # [B, N]
        sign = -1.0 if params.mode == "all" else 1.0
        task_weight = N - w.sum()
        seq_adv = task_weight * norm(R_task) + sign * (A_i * w).sum(-1)            # [B]
        metrics["constrained/task_weight"] = task_weight.item()
        metrics.update({f"constrained/multiplier/{n}": w[i].item() for i, n in enumerate(names)})
    metrics["constrained/task_reward"] = R_task.mean().item()
    J = R.mean(0)                                                                   # [N]
    for i, n in enumerate(names):
        metrics[f"constrained/reward/{n}"] = J[i].item()
        if theta is not None:
            metrics[f"constrained/gap/{n}"] = (J[i] - theta[i]).item()
            metrics[f"constrained/violation/{n}"] = _violation(J[i] - theta[i], params.mode)
    metrics["advantage/mean"] = seq_adv.mean().item()
    metrics["advantage/abs_mean"] = seq_adv.abs().mean().item()
    return broadcast(seq_adv.float(), inp.response_mask), metrics


def _minus_kl(task: torch.Tensor, inp: AdvantageInput) -> torch.Tensor:
    """R_task − β Σ_t KL_t with ``algo.kl_reward`` on (``inp.kl_penalty``), else R_task: the KL in the reward
    penalises the task term (the paper's PPO / SAT / All baselines), not the constrained components."""
    return task if inp.kl_penalty is None else task - inp.kl_penalty.to(task)


def _task_reward(inp: AdvantageInput, params: ConstrainedAdvParams, R, alpha) -> torch.Tensor:
    if params.task == "kl":
        for key in ("old_logprobs", "ref_logprobs"):
            if getattr(inp, key) is None:
                raise KeyError(f"task 'kl' needs inp.{key} ([B,T] log-probs of the sampled tokens)")
        return kl_task_reward(inp.old_logprobs, inp.ref_logprobs,
                              inp.response_mask, params.kl_coef)
    if params.task == "weighted_sum":
        return composite_reward(R, alpha)
    return inp.rewards.to(torch.float64)


def _violation(gap: torch.Tensor, mode: str) -> float:
    """How far the batch mean is from satisfying its constraint (>= 0)."""
    if mode == "mu":
        return max(-gap.item(), 0.0)
    if mode == "all":
        return max(gap.item(), 0.0)
    return abs(gap.item())


def component_means(reward_components: Mapping[str, torch.Tensor], index=None) -> dict[str, float]:
    """Ĵ_i for :meth:`LagrangeMultipliers.update`: the mean of each component over ``index`` (a mini-batch)."""
    out = {}
    for name, values in reward_components.items():
        values = torch.as_tensor(values)
        out[name] = (values if index is None else values[index]).to(torch.float64).mean().item()
    return out


# --------------------------------------------------------------------------------------------
# Nelder–Mead (NM-PPO)
# --------------------------------------------------------------------------------------------

class NelderMead:
    """Textbook Nelder–Mead minimiser driven one evaluation at a time (Lagarias et al. 1998 steps).

        x = nm.ask(); nm.tell(F(x))   until nm.done

    Per iteration on the sorted simplex f_1 <= ... <= f_{n+1}, centroid c of the n best:
      reflect   x_r = c + α(c − x_{n+1});  accept if f_1 <= f_r < f_n
      expand    if f_r < f_1: x_e = c + γ(x_r − c); keep x_e if f_e < f_r, else x_r
      outside   if f_n <= f_r < f_{n+1}: x_c = c + ρ(x_r − c); accept if f_c <= f_r, else shrink
      inside    if f_r >= f_{n+1}: x_c = c + ρ(x_{n+1} − c); accept if f_c < f_{n+1}, else shrink
      shrink    x_i = x_1 + σ(x_i − x_1), i = 2..n+1, each re-evaluated
    Stops when std(F(simplex)) < tol (population std) or after ``max_evals`` evaluations.
    """

    def __init__(self, simplex, alpha: float = 1.0, gamma: float = 2.0, rho: float = 0.5,
                 sigma: float = 0.5, tol: float = 0.01, max_evals: int | None = None):
        self.simplex = np.array(simplex, dtype=np.float64)  # [n+1, n]
        if self.simplex.ndim != 2 or self.simplex.shape[0] != self.simplex.shape[1] + 1:
            raise ValueError(f"a simplex in n dimensions has n+1 vertices, got shape {self.simplex.shape}")
        self.alpha, self.gamma, self.rho, self.sigma = alpha, gamma, rho, sigma
        self.tol, self.max_evals = tol, max_evals
        self.values = np.full(len(self.simplex), np.nan)   # [n+1]
        self.phase = "init"        # init | reflect | expand | contract_outside | contract_inside | shrink
        self.num_evals = 0
        self.done = False
        self.history: list[tuple[list[float], float, str]] = []
        self._vertex = 0           # next vertex to evaluate in init / shrink
        self._x_r, self._f_r = None, None
        self._pending = self.simplex[0].copy()

    def ask(self) -> np.ndarray:
        """The next point to evaluate (the same one until :meth:`tell`)."""
        if self.done:
            raise RuntimeError("Nelder–Mead has finished; read best()")
        return self._pending.copy()

    def tell(self, value: float) -> None:
        if self.done:
            raise RuntimeError("Nelder–Mead has finished; read best()")
        f, x = float(value), self._pending
        self.num_evals += 1
        self.history.append((x.tolist(), f, self.phase))
        if self.phase in ("init", "shrink"):
            self.values[self._vertex] = f
            self._vertex += 1
            if self._vertex < len(self.simplex):
                self._pending = self.simplex[self._vertex].copy()
            else:
                self._new_iteration()
        elif self.phase == "reflect":
            self._after_reflect(x, f)
        elif self.phase == "expand":
            if f < self._f_r:
                self._replace_worst(x, f)
            else:
                self._replace_worst(self._x_r, self._f_r)
        elif self.phase == "contract_outside":
            if f <= self._f_r:
                self._replace_worst(x, f)
            else:
                self._shrink()
        elif f < self.values[-1]:  # contract_inside
            self._replace_worst(x, f)
        else:
            self._shrink()
        if self.max_evals is not None and self.num_evals >= self.max_evals:
            self.done = True

    def best(self) -> tuple[np.ndarray, float]:
        """The best point evaluated so far and its value."""
        if not self.history:
            raise RuntimeError("nothing evaluated yet")
        x, f, _ = min(self.history, key=lambda h: h[1])
        return np.array(x), f

    def _centroid(self) -> np.ndarray:
        return self.simplex[:-1].mean(0)

    def _after_reflect(self, x_r, f_r) -> None:
        c, worst = self._centroid(), self.simplex[-1]
        if self.values[0] <= f_r < self.values[-2]:
            return self._replace_worst(x_r, f_r)
        self._x_r, self._f_r = x_r, f_r
        if f_r < self.values[0]:
            self.phase, self._pending = "expand", c + self.gamma * (x_r - c)
        elif f_r < self.values[-1]:
            self.phase, self._pending = "contract_outside", c + self.rho * (x_r - c)
        else:
            self.phase, self._pending = "contract_inside", c + self.rho * (worst - c)

    def _replace_worst(self, x, f) -> None:
        self.simplex[-1], self.values[-1] = x, f
        self._new_iteration()

    def _shrink(self) -> None:
        self.simplex[1:] = self.simplex[0] + self.sigma * (self.simplex[1:] - self.simplex[0])
        self.values[1:] = np.nan
        self.phase, self._vertex = "shrink", 1
        self._pending = self.simplex[1].copy()

    def _new_iteration(self) -> None:
        order = np.argsort(self.values, kind="stable")
        self.simplex, self.values = self.simplex[order], self.values[order]
        if np.std(self.values) < self.tol:
            self.done = True
            return
        c = self._centroid()
        self.phase, self._pending = "reflect", c + self.alpha * (c - self.simplex[-1])

    _ARRAYS = ("simplex", "values", "_pending", "_x_r")

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values only, so ``torch.load(weights_only=True)`` accepts the checkpoint."""
        state = copy.deepcopy(vars(self))
        for key in self._ARRAYS:
            if state[key] is not None:
                state[key] = state[key].tolist()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, value in copy.deepcopy(dict(state)).items():
            if key in self._ARRAYS and value is not None:
                value = np.array(value, dtype=np.float64)
            setattr(self, key, value)


def initial_simplex(init_values: Sequence[float], max_values: Sequence[float], seed: int = 0) -> np.ndarray:
    """NM-PPO initialisation: N+1 vertices with θ_j = v_init,j + U(0,1)·(v_max,j − v_init,j).  -> [N+1, N]"""
    v0, v1 = np.asarray(init_values, np.float64), np.asarray(max_values, np.float64)
    u = np.random.default_rng(seed).uniform(size=(len(v0) + 1, len(v0)))
    return v0 + u * (v1 - v0)


class ProxyPointSearch:
    """NM-PPO: find proxy points inside one ξ-PPO run (the policy is never reset).

    F(θ) = −eval(policy after training toward θ). The trainer, each iteration:

        multipliers.set_thresholds(search.thresholds)       # when a new proposal appears
        train one ξ-PPO iteration
        if search.tick():                                     # eval due (every eval_every, or the cap)
            new = search.report(eval_score, component_means)  # dict θ or None
            if new is not None: multipliers.set_thresholds(new)

    A proposal ends when every RM mean is within ±reach_tol of its θ, or after ``cap_iters``
    iterations (then the score where the policy is counts). A proposal within ``cache_tol`` of one
    already evaluated reuses its score without training. When :attr:`done`, ``thresholds`` holds the
    best point found and training simply continues with it.
    """

    def __init__(self, names: Sequence[str], params: ProxySearchParams, simplex=None):
        self.names = list(names)
        self.params = params
        if simplex is None:
            simplex = initial_simplex([params.init_values[n] for n in self.names],
                                      [params.max_values[n] for n in self.names], params.seed)
        self.nm = NelderMead(simplex, params.alpha, params.gamma, params.rho, params.sigma,
                             params.tol, params.max_evals)
        self.cache: list[tuple[np.ndarray, float]] = []
        self.iters = 0
        self._theta = self._next_proposal()

    @property
    def done(self) -> bool:
        return self.nm.done

    @property
    def thresholds(self) -> dict[str, float]:
        theta = self.nm.best()[0] if self._theta is None else self._theta
        return dict(zip(self.names, theta.tolist()))

    def tick(self) -> bool:
        """Count one training iteration on the current proposal; True when an evaluation is due."""
        if self.done:
            return False
        self.iters += 1
        return self.iters % self.params.eval_every == 0 or self.iters >= self.params.cap_iters

    def reached(self, component_means) -> bool:
        J = _vector(component_means, self.names, "component_means").numpy()
        return bool(np.all(np.abs(J - self._theta) <= self.params.reach_tol * np.abs(self._theta)))

    def report(self, eval_score: float, component_means) -> dict[str, float] | None:
        """Feed an evaluation. Returns the next thresholds when the proposal is finished, else None."""
        if self.done:
            return None
        if not (self.reached(component_means) or self.iters >= self.params.cap_iters):
            return None
        value = -float(eval_score)
        self.cache.append((self._theta.copy(), value))
        self.nm.tell(value)
        self.iters = 0
        self._theta = self._next_proposal()
        return self.thresholds

    def _next_proposal(self) -> np.ndarray | None:
        while not self.nm.done:
            theta = self.nm.ask()
            hit = next((v for t, v in self.cache if np.all(np.abs(t - theta) <= self.params.cache_tol)), None)
            if hit is None:
                return theta
            self.nm.tell(hit)   # reuse: the policy is not dragged back to an old θ
        return None

    def metrics(self) -> dict[str, float]:
        out = {"proxy_search/num_evals": float(self.nm.num_evals), "proxy_search/done": float(self.done)}
        out.update({f"proxy_search/threshold/{n}": v for n, v in self.thresholds.items()})
        if self.nm.history:
            out["proxy_search/best_score"] = -self.nm.best()[1]
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"nm": self.nm.state_dict(), "cache": [(t.tolist(), v) for t, v in self.cache],
                "iters": self.iters, "theta": None if self._theta is None else self._theta.tolist()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.nm.load_state_dict(state["nm"])
        self.cache = [(np.array(t), v) for t, v in state["cache"]]
        self.iters = state["iters"]
        self._theta = None if state["theta"] is None else np.array(state["theta"])
