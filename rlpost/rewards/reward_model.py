"""Learned reward models as reward functions: local (``reward_model``) and over HTTP (``remote_reward_model``).

    rewards:
      - name: reward_model
        kwargs: {path: reward_models/out/rm_correct, batch_size: 32, device: cpu, name: rm_correct}
      - name: reward_model
        kwargs: {path: reward_models/out/rm_length, device: cuda:1, name: rm_length}
        weight: 0.5
      - name: remote_reward_model
        kwargs: {url: "http://127.0.0.1:8008/score", timeout_s: 30, name: rm_remote}

Both are classes: :class:`rlpost.rewards.RewardManager` builds each once with its ``kwargs`` (the model
is loaded at construction) and calls the instance with TRL's convention
``fn(prompts, completions, **columns) -> list[float]``. Each instance is its own reward component; its
``name`` kwarg (default: the registry name) is the component's key in logs and in
``Trajectory.reward_components``, so several reward models need distinct names.

The model is any ``AutoModelForSequenceClassification`` checkpoint with ``num_labels == 1`` (e.g. one
written by ``reward_models/train_rm.py``); it scores ``prompt + completion (+ eos)`` in batches of
``batch_size`` on its own ``device``, independently of the policy's device.
"""
from __future__ import annotations

import logging
import math

import torch

from rlpost.rewards import REWARDS

log = logging.getLogger(__name__)


@torch.no_grad()
def score_texts(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 32,
                append_eos: bool = True, max_length: int | None = None, device=None) -> list[float]:
    """Scalar score of ``prompt + completion (+ eos)`` for each pair, in batches; [N] floats.

    The EOS is appended as TRL's RewardTrainer does for standard-format data, so RL-time inputs match
    training inputs. Padding side does not matter: sequence-classification heads read the last non-pad token.
    """
    device = device or next(model.parameters()).device
    eos = tokenizer.eos_token or ""
    texts = [p + c + (eos if append_eos and not c.endswith(eos) else "") for p, c in zip(prompts, completions)]
    out: list[float] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False,
                        truncation=max_length is not None, max_length=max_length)
        logits = model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                       use_cache=False).logits
        out += logits[:, 0].float().cpu().tolist()
    return out


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@REWARDS.register("reward_model")
class RewardModelReward:
    """A local learned reward model (sequence-classification head, one label).

    kwargs:
      path         folder or hub id of the RM (``save_pretrained`` output)
      name         component name in logs / advantages (default ``reward_model``); distinct per RM
      batch_size   completions per forward (default 32)
      device       cpu | cuda | cuda:1 | auto (default cpu): where this RM runs, independent of the policy
      dtype        float32 | bfloat16 | float16 (default float32)
      append_eos   append the tokenizer's EOS to each completion, as RewardTrainer does (default true)
      max_length   truncate inputs to this many tokens (default: no truncation)
      scale, shift reported score = scale * (raw + shift) (defaults 1, 0)
    """

    def __init__(self, path: str, name: str = "reward_model", batch_size: int = 32, device: str = "cpu",
                 dtype: str = "float32", append_eos: bool = True, max_length: int | None = None,
                 scale: float = 1.0, shift: float = 0.0, trust_remote_code: bool = False):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"reward_model {name!r}: batch_size must be >= 1, got {batch_size}")
        self.name = name
        self.path = str(path)
        self.batch_size = int(batch_size)
        self.device = _pick_device(device)
        self.append_eos, self.max_length = append_eos, max_length
        self.scale, self.shift = float(scale), float(shift)
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                self.path, dtype=dtypes[dtype], trust_remote_code=trust_remote_code)
        except OSError as err:
            raise ValueError(f"reward_model {name!r}: cannot load a reward model from {self.path!r}: {err}") from err
        if getattr(self.model.config, "num_labels", 1) != 1:
            raise ValueError(f"reward_model {name!r}: {self.path} has num_labels={self.model.config.num_labels}; "
                             "a reward model has one output (num_labels=1)")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval().requires_grad_(False)

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        raw = score_texts(self.model, self.tokenizer, list(prompts), list(completions), self.batch_size,
                          self.append_eos, self.max_length, self.device)
        return [self.scale * (r + self.shift) for r in raw]

    def __repr__(self) -> str:
        return f"RewardModelReward(name={self.name!r}, path={self.path!r}, device={self.device})"


@REWARDS.register("remote_reward_model")
class RemoteRewardModel:
    """A reward model behind HTTP (e.g. ``python -m rlpost.serving.rm_server --model PATH``).

    Each call POSTs ``{"prompts": [...], "completions": [...]}`` in batches of ``batch_size`` to ``url``
    (one request per batch, never one per completion), ``max_concurrency`` batches in flight at once, and
    expects ``{"scores": [float, ...]}`` back (same length); scores keep the completions' order. A failed request
    is retried ``retries`` times, then raises (the RewardManager names the reward and the sample; no score is
    invented).

    kwargs: url, name (default ``remote_reward_model``), timeout_s (30, per request), batch_size (64),
    max_concurrency (4), retries (1), token (sent as ``Authorization: Bearer <token>``), scale, shift.
    """

    def __init__(self, url: str, name: str = "remote_reward_model", timeout_s: float = 30.0, batch_size: int = 64,
                 retries: int = 1, token: str | None = None, scale: float = 1.0, shift: float = 0.0,
                 max_concurrency: int = 4):
        import threading

        if batch_size < 1 or max_concurrency < 1:
            raise ValueError(f"remote_reward_model {name!r}: batch_size and max_concurrency must be >= 1")
        self.name, self.url = name, url
        self.timeout_s, self.batch_size, self.retries = float(timeout_s), int(batch_size), int(retries)
        self.max_concurrency = int(max_concurrency)
        self.scale, self.shift = float(scale), float(shift)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._local = threading.local()   # one requests.Session per thread (a Session is not thread-safe)

    @property
    def session(self):
        import requests

        if getattr(self._local, "session", None) is None:
            self._local.session = requests.Session()
            self._local.session.headers.update(self.headers)
        return self._local.session

    def _post(self, prompts: list[str], completions: list[str]) -> list[float]:
        import requests

        last_err: Exception | None = None
        for _ in range(self.retries + 1):
            try:
                resp = self.session.post(self.url, json={"prompts": prompts, "completions": completions},
                                         timeout=self.timeout_s)
                resp.raise_for_status()
                scores = resp.json()["scores"]
                if len(scores) != len(completions):
                    raise ValueError(f"{self.url} returned {len(scores)} scores for {len(completions)} completions")
                return [float(s) for s in scores]
            except (requests.RequestException, KeyError, ValueError) as err:
                last_err = err
        raise RuntimeError(f"remote reward model {self.name!r} at {self.url}: {last_err}")

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        from concurrent.futures import ThreadPoolExecutor

        prompts, completions = list(prompts), list(completions)
        starts = range(0, len(completions), self.batch_size)
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, max(1, len(starts)))) as pool:
            batches = pool.map(lambda s: self._post(prompts[s:s + self.batch_size], completions[s:s + self.batch_size]),
                               starts)
            out = [score for batch in batches for score in batch]
        if any(math.isnan(s) for s in out):
            raise ValueError(f"remote reward model {self.name!r} returned NaN")
        return [self.scale * (s + self.shift) for s in out]

    def __repr__(self) -> str:
        return f"RemoteRewardModel(name={self.name!r}, url={self.url!r})"
