"""GAIN-RL: angle-informed curriculum ("Angles Don't Lie", Wang et al., arXiv 2506.02281; code wangqinsi1/GAINRL).

1. Offline: prefill every prompt once, score its angle concentration at the last decoder layer's MLP input

       C_intra = 1/(m-n)^2 sum_{i,j in Q} cos_ij     C_inter = 1/((m-n) n) sum_{i in Q, j in P} cos_ij
       score   = w_intra C_intra + w_inter C_inter   (P = shared prefix of n tokens, Q = question tokens)

   and rank rows by descending score (:func:`compute_angle_scores`, :func:`cached_angle_scores`).
2. Online: each step draws prompts without replacement from p(k) ~ exp(-(k - mu)^2 / (2 sigma^2)) over ranks k.
3. After each step: mu += clip(n tanh(alpha (Acc - beta)) + n tanh(gamma C), adj_min, adj_max).

No L x L cosine matrix is built: with unit vectors x^, sum_{i in A, j in B} cos_ij = <sum_A x^, sum_B x^>.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from rlpost.algos.data_samplers import DATA_SAMPLERS


# ---------------------------------------------------------------- angle concentration (pure tensor math)

def angle_terms(hidden: torch.Tensor, mask: torch.Tensor, n_prefix=0, n_suffix=0):
    """(C_intra [B], C_inter [B]) from hidden states [B,L,D] and attention mask [B,L] (left or right padded).

    Valid tokens of a row are ranked 0..m_tot-1; the first ``n_prefix`` form P, the last ``n_suffix``
    (chat-template tail) are dropped, the rest form Q (m - n = |Q|). n_prefix / n_suffix: int or [B].
        C_intra = ||sum_Q x^||^2 / |Q|^2         C_inter = <sum_Q x^, sum_P x^> / (|Q| |P|)
    An empty Q gives 0 for both; an empty P gives C_inter = 0. Both include i = j pairs, like the paper's sums.
    """
    x = F.normalize(hidden.float(), dim=-1)                                             # [B,L,D]
    valid = mask.bool()
    rank = valid.long().cumsum(-1) - 1                                                  # [B,L]
    total = valid.sum(-1, keepdim=True)                                                 # [B,1]
    n_p = torch.as_tensor(n_prefix, device=x.device).reshape(-1, 1)
    n_s = torch.as_tensor(n_suffix, device=x.device).reshape(-1, 1)
    prefix = valid & (rank < n_p)
    question = valid & (rank >= n_p) & (rank < total - n_s)
    sum_q = (x * question[..., None]).sum(1)                                            # [B,D]
    sum_p = (x * prefix[..., None]).sum(1)                                              # [B,D]
    len_q, len_p = question.sum(-1).float(), prefix.sum(-1).float()                     # [B]
    c_intra = torch.where(len_q > 0, (sum_q * sum_q).sum(-1) / len_q.clamp(min=1) ** 2, torch.zeros_like(len_q))
    c_inter = torch.where((len_q > 0) & (len_p > 0),
                          (sum_q * sum_p).sum(-1) / (len_q * len_p).clamp(min=1), torch.zeros_like(len_q))
    return c_intra, c_inter


def angle_concentration(hidden, mask, n_prefix=0, n_suffix=0, w_intra: float = 1.0, w_inter: float = 1.0):
    """score [B] = w_intra C_intra + w_inter C_inter (:func:`angle_terms`). w_inter=8 mimics the code's weighting."""
    c_intra, c_inter = angle_terms(hidden, mask, n_prefix, n_suffix)
    return w_intra * c_intra + w_inter * c_inter


def sequence_angle(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Training-time signal per sequence [B]: the mean pairwise cosine over the masked tokens,
    ||sum_i x^_i||^2 / m^2 (diagonal included). mask selects the span: prompt only or prompt+response."""
    return angle_terms(hidden, mask)[0]


# ---------------------------------------------------------------- capturing the MLP input

class _StopForward(Exception):
    pass


def decoder_layers(model: torch.nn.Module):
    """The decoder's layer list of an HF causal LM or base model (Qwen2/LLaMA: .model.layers)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for owner in (decoder, getattr(model, "model", None), model, getattr(model, "transformer", None)):
        for name in ("layers", "h"):
            layers = getattr(owner, name, None) if owner is not None else None
            if isinstance(layers, torch.nn.ModuleList):
                return layers
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


class MLPInputHook:
    """Context manager: captures the input of ``decoder_layers(model)[layer].mlp`` (= post-attention
    norm output, what ``mlp.up_proj`` sees) as ``self.hidden`` [B,L,D], detached.

    ``stop_forward=True`` aborts the forward right after the capture (for scoring only: no later layers,
    no LM head); call the model through :meth:`run`, which swallows the abort.
    """

    def __init__(self, model: torch.nn.Module, layer: int = -1, stop_forward: bool = False):
        self.module = decoder_layers(model)[layer].mlp
        self.stop_forward = stop_forward
        self.hidden: torch.Tensor | None = None
        self._handle = None

    def _hook(self, module, args, kwargs):
        self.hidden = (args[0] if args else next(iter(kwargs.values()))).detach()
        if self.stop_forward:
            raise _StopForward

    def __enter__(self) -> "MLPInputHook":
        self._handle = self.module.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def run(self, model, **inputs) -> torch.Tensor:
        try:
            model(**inputs)
        except _StopForward:
            pass
        return self.hidden


# ---------------------------------------------------------------- offline scores

def _encode(tokenizer: Any, item) -> list[int]:
    if isinstance(item, (list, tuple)):
        return [int(t) for t in item]
    if isinstance(item, torch.Tensor):
        return item.tolist()
    return list(tokenizer.encode(item))


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all sequences (0 for fewer than two)."""
    if len(seqs) < 2:
        return 0
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for k in range(n):
        if any(s[k] != first[k] for s in seqs):
            return k
    return n


def compute_angle_scores(model, tokenizer, texts: Sequence, layer: int = -1, batch_size: int = 8,
                         n_prefix: int | str = "auto", n_suffix: int | str = "auto",
                         w_intra: float = 1.0, w_inter: float = 1.0, max_length: int = 1024) -> list[float]:
    """One angle-concentration score per text (prefill only, no grad), in input order.

    texts: strings (encoded with ``tokenizer.encode``) or pre-tokenized id lists; each is cut to its
    first ``max_length`` tokens. n_prefix / n_suffix "auto": the longest token prefix / suffix shared by
    all texts (system prompt + few-shot + template head; template tail), which replaces the code's
    hard-coded 110 / 6 for Qwen. Texts are batched by length with right padding (pad id
    ``tokenizer.pad_token_id`` or 0); hidden states of real tokens do not depend on right padding.
    """
    ids = [_encode(tokenizer, t)[:max_length] for t in texts]
    if n_prefix == "auto":
        n_prefix = common_prefix_len(ids)
    if n_suffix == "auto":
        n_suffix = common_prefix_len([s[::-1] for s in ids])
        n_suffix = min(n_suffix, max(min((len(s) for s in ids), default=0) - n_prefix, 0))
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    device = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    scores = [0.0] * len(ids)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), MLPInputHook(model, layer, stop_forward=True) as hook:
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                width = max(len(ids[i]) for i in chunk)
                input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                attn = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):
                    input_ids[row, :len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
                    attn[row, :len(ids[i])] = 1
                hidden = hook.run(model, input_ids=input_ids.to(device), attention_mask=attn.to(device),
                                  use_cache=False)                                      # [b,L,D]
                s = angle_concentration(hidden, attn.to(device), n_prefix, n_suffix, w_intra, w_inter)
                for row, i in enumerate(chunk):
                    scores[i] = float(s[row])
    finally:
        model.train(was_training)
    return scores


def angle_cache_key(*parts: Any) -> str:
    """A short stable key from e.g. (model path, dataset fingerprint, layer, n_prefix, w_inter, ...)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


def cached_angle_scores(cache_dir: str | os.PathLike, key: str, fn: Callable[[], Sequence[float]]) -> torch.Tensor:
    """Load ``<cache_dir>/angle_scores_<key>.pt`` or compute ``fn()`` and save it atomically
    (temporary file in the same folder, then os.replace). Returns float64 [N]."""
    path = Path(cache_dir) / f"angle_scores_{key}.pt"
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            return saved["scores"]
    scores = torch.as_tensor(list(fn()), dtype=torch.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"key": key, "scores": scores}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return scores


# ---------------------------------------------------------------- the Gaussian curriculum sampler

@dataclass
class GainRLParams:
    sigma: float = 1000.0        # Gaussian std over ranks (code: fixed 1000)
    mu0: float = 0.0             # initial mean rank (0 = highest concentration)
    step_size: float = 500.0     # n in the mu update, rank units
    alpha: float = 2.0           # accuracy sensitivity
    beta: float = 0.5            # target accuracy
    angle_gain: float = 2.0      # gamma: angle sensitivity; 2.0 = released code (same alpha as accuracy), 0.5 = the
                                 # paper's second-hand reading (with adj_min 0, mu then freezes while accuracy < ~0.38)
    acc_scale: float = 1.0       # Acc = accuracy / acc_scale (code 2.0 for its 0/2 reward)
    adj_min: float = 0.0         # clip of the mu update (0: never moves back)
    adj_max: float = 1000.0
    # offline scoring (used by the trainer for compute_angle_scores) and the training-time angle span
    layer: int = -1
    n_prefix: int | str = "auto"
    n_suffix: int | str = "auto"
    w_intra: float = 1.0
    w_inter: float = 1.0         # 8.0 mimics the released code's weighting
    max_length: int = 1024
    score_batch_size: int = 8
    angle_span: str = "full"     # training-time angle over "full" prompt+response (code) or "prompt"
    angle_order: str | None = None   # file of precomputed row ids by descending concentration (the authors release
                                     # sorted indices per model and data set): used instead of the scoring pass

    def __post_init__(self):
        if self.sigma <= 0:
            raise ValueError(f"data.gain_rl.sigma must be > 0, got {self.sigma}")
        if self.adj_min > self.adj_max:
            raise ValueError("data.gain_rl.adj_min must be <= adj_max")
        if self.angle_span not in ("full", "prompt"):
            raise ValueError(f"data.gain_rl.angle_span must be 'full' or 'prompt', got {self.angle_span!r}")
        for key in ("n_prefix", "n_suffix"):
            value = getattr(self, key)
            if not (value == "auto" or (isinstance(value, int) and value >= 0)):
                raise ValueError(f"data.gain_rl.{key} must be 'auto' or an int >= 0, got {value!r}")


def mu_update(mu: float, accuracy: float, angle: float, p: GainRLParams) -> tuple[float, float]:
    """mu' = mu + clip(n tanh(alpha (accuracy/acc_scale - beta)) + n tanh(gamma angle), adj_min, adj_max).
    Returns (mu', raw delta before the clip)."""
    delta = p.step_size * math.tanh(p.alpha * (accuracy / p.acc_scale - p.beta)) \
        + p.step_size * math.tanh(p.angle_gain * angle)
    return mu + min(max(delta, p.adj_min), p.adj_max), delta


def load_angle_order(path: str | os.PathLike, num_rows: int) -> torch.Tensor:
    """Row ids ordered by descending angle concentration (rank 0 first), from ``path``: a torch file (``.pt``: a 1-D
    tensor or list, or a dict with "indices"), a JSON list (``.json``) or one id per line. It must be a permutation
    of 0..num_rows-1 (the training rows in file order); errors name ``data.sampler.angle_order`` and the file."""
    path = Path(path)
    where = f"data.sampler.angle_order {str(path)!r}"
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such file")
    if path.suffix == ".pt":
        obj = torch.load(path, map_location="cpu", weights_only=True)
        obj = obj["indices"] if isinstance(obj, dict) and "indices" in obj else obj
    elif path.suffix == ".json":
        obj = json.loads(path.read_text())
    else:
        obj = [int(line) for line in path.read_text().split()]
    order = torch.as_tensor(obj).flatten()
    if order.is_floating_point() or order.numel() != num_rows:
        raise ValueError(f"{where}: needs {num_rows} integer row ids (one per training row), got "
                         f"{order.numel()} of dtype {order.dtype}")
    order = order.long()
    if not torch.equal(torch.sort(order).values, torch.arange(num_rows)):
        raise ValueError(f"{where}: not a permutation of the {num_rows} training rows 0..{num_rows - 1} "
                         "(repeated or out-of-range ids)")
    return order


def rank_order(scores: Sequence[float]) -> torch.Tensor:
    """Row ids sorted by descending score (stable); NaN scores go last, not first as torch.sort puts them."""
    s = torch.as_tensor(list(scores) if not isinstance(scores, torch.Tensor) else scores, dtype=torch.float64)
    s = torch.where(torch.isnan(s), torch.full_like(s, float("-inf")), s)
    return torch.sort(s, descending=True, stable=True).indices


@DATA_SAMPLERS.register("gain_rl", params=GainRLParams)
class GainRLSampler:
    """Gaussian sampler over angle ranks with the dynamic mean update.

    ``scores``: one angle score per row (from :func:`compute_angle_scores`), required unless ``params.angle_order``
    names a precomputed order (:func:`load_angle_order`), which then sets the ranks (scores unknown: NaN).
    ``next_indices(S)``: S distinct row ids, ranks drawn without replacement with p(k) ~ exp(-(k - mu)^2 /
    (2 sigma^2)) (Gumbel top-k on log p, exact and underflow-free), returned by ascending rank.
    ``update({"accuracy": mean correctness in [0, acc_scale], "angle": mean training-time angle})`` once per
    step; "angle" may be omitted only when angle_gain == 0.
    """

    needs_scores = True

    def __init__(self, num_rows: int, params: GainRLParams | None = None, seed: int = 0,
                 scores: Sequence[float] | None = None):
        self.params = params or GainRLParams()
        if self.params.angle_order and scores is None:
            scores = [float("nan")] * num_rows
        if scores is None or len(scores) != num_rows:
            raise ValueError(f"data.sampler gain_rl needs one angle score per row ({num_rows}), got "
                             f"{None if scores is None else len(scores)}")
        self.num_rows = num_rows
        self.scores = torch.as_tensor(scores, dtype=torch.float64)
        self.order = (load_angle_order(self.params.angle_order, num_rows) if self.params.angle_order
                      else rank_order(self.scores))
        self.mu = float(self.params.mu0)
        self.gen = torch.Generator().manual_seed(seed)
        self._metrics: dict[str, float] = {}

    def probs(self) -> torch.Tensor:
        """p(k) over ranks [N] for the current mu."""
        return torch.softmax(self._log_p(), dim=0)

    def _log_p(self) -> torch.Tensor:
        k = torch.arange(self.num_rows, dtype=torch.float64)
        return -0.5 * ((k - self.mu) / self.params.sigma) ** 2

    def next_indices(self, batch_size: int) -> list[int]:
        if batch_size > self.num_rows:
            raise ValueError(f"gain_rl cannot draw {batch_size} distinct prompts from {self.num_rows} rows")
        u = torch.rand(self.num_rows, generator=self.gen, dtype=torch.float64).clamp(min=1e-300)
        gumbel = -torch.log(-torch.log(u))
        ranks = torch.topk(self._log_p() + gumbel, batch_size).indices.sort().values
        rows = self.order[ranks]
        s = self.scores[rows]
        self._metrics.update({"gain_rl/mu": self.mu, "gain_rl/sampled_rank_mean": ranks.double().mean().item()})
        if not bool(torch.isnan(self.scores).all()):   # with a precomputed order the scores are unknown
            self._metrics["gain_rl/sampled_score_mean"] = torch.nan_to_num(s).mean().item()
        return rows.tolist()

    def update(self, metrics: dict) -> dict[str, float]:
        if "accuracy" not in metrics:
            raise KeyError("gain_rl.update needs metrics['accuracy'] (mean correctness of the step)")
        if "angle" not in metrics and self.params.angle_gain != 0:
            raise KeyError("gain_rl.update needs metrics['angle'] (mean training-time angle concentration); "
                           "set data.gain_rl.angle_gain=0 to run on accuracy alone")
        acc, angle = float(metrics["accuracy"]), float(metrics.get("angle", 0.0))
        self.mu, delta = mu_update(self.mu, acc, angle, self.params)
        out = {"gain_rl/mu": self.mu, "gain_rl/delta_mu": delta, "gain_rl/accuracy": acc, "gain_rl/angle": angle}
        self._metrics.update(out)
        return out

    def metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    def state_dict(self) -> dict:
        return {"mu": self.mu, "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.mu = float(state["mu"])
        self.gen.set_state(state["generator"])
