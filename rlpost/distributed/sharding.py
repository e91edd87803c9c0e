"""Sharding: the process group, each rank's share of the rollouts, the learner wrapped for DDP / ZeRO / FSDP2, and
the ZeRO-3 / FSDP2 gathers that generation, weight sync and saving need. A disabled :class:`Runtime` (one process) returns
every input unchanged, so the single-process path is the unchanged code path."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import warnings
from types import SimpleNamespace

import torch

from rlpost.config import ConfigError
from rlpost.distributed.process import (comm_device, free_port, is_initialized, local_rank, rank, seed_for_rank,
                                       torch_dist, world_size)

log = logging.getLogger("rlpost")


class NullTracker:
    """Ranks other than 0 log nothing."""

    def log(self, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass


class Runtime:
    """Per-process view of the run. Disabled (``backend: none``): every method is the identity."""

    def __init__(self, cfg=None, enabled: bool = False):
        self.cfg = cfg
        self.enabled = enabled
        self.backend = cfg.distributed.backend if (cfg is not None and enabled) else "none"
        self.rank = rank() if enabled else 0
        self.world_size = world_size() if enabled else 1
        self.split = enabled and cfg.distributed.rollout == "split"
        self.zero_stage = cfg.distributed.zero_stage if self.backend == "deepspeed" else 0
        self.ops = None          # learner ops (DDP / DeepSpeed / FSDP2), set by wrap_learner
        self.deepspeed_engine = None    # DeepSpeedEngine

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def zero3(self) -> bool:
        return self.zero_stage == 3

    @property
    def fsdp2(self) -> bool:
        return self.backend == "fsdp2"

    @property
    def gathers_parameters(self) -> bool:
        """Parameters are sharded (ZeRO-3, FSDP2): reading full weights is collective on all ranks."""
        return self.zero3 or self.fsdp2

    # ------------------------------------------------------------------ collectives
    def all_reduce_sum(self, x):
        if not self.enabled:
            return x
        t = torch.as_tensor(x, dtype=torch.float64).to(comm_device()).clone()
        torch_dist().all_reduce(t)
        return type(x)(t.item()) if isinstance(x, (int, float)) else t

    def all_reduce_max(self, x):
        if not self.enabled:
            return x
        t = torch.as_tensor(x, dtype=torch.float64).to(comm_device()).clone()
        torch_dist().all_reduce(t, op=torch_dist().ReduceOp.MAX)
        return type(x)(t.item()) if isinstance(x, (int, float)) else t

    def barrier(self) -> None:
        if self.enabled:
            torch_dist().barrier()

    def broadcast_object(self, obj, src: int = 0):
        if not self.enabled:
            return obj
        box = [obj]
        torch_dist().broadcast_object_list(box, src=src)
        return box[0]

    def all_gather_object(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        torch_dist().all_gather_object(out, obj)
        return out

    # ------------------------------------------------------------------ data
    def draw(self, sampler, count: int) -> list[int]:
        """This rank's prompt indices. Split rollouts: every rank draws the same global list in lockstep (the
        largest per-rank need times the world size) and takes its own slice."""
        if not self.split:
            return sampler.next_indices(count)
        most = self.all_reduce_max(int(count))
        if most <= 0:
            return []
        indices = sampler.next_indices(most * self.world_size)
        return indices[self.rank * most: self.rank * most + max(count, 0)]

    def local_prompt_count(self, prompts_per_step: int) -> int:
        return prompts_per_step // self.world_size if self.split else prompts_per_step

    def done(self, groups_needed: int) -> bool:
        """Dynamic-sampling refills end for all ranks together (split rollouts draw in lockstep)."""
        return (self.all_reduce_max(int(groups_needed)) if self.split else groups_needed) <= 0

    def local_groups(self, trajectories: list) -> list:
        """Replicated rollouts: this rank's contiguous share of the groups (order of first appearance)."""
        if not self.enabled or self.split:
            return trajectories
        return group_share(trajectories, self.rank, self.world_size)

    def gather_for_metrics(self, trajs: list, components: dict) -> tuple[list, dict]:
        """Split rollouts: light copies of every rank's trajectories (reward, lengths, truncation) and reward
        components, so rollout metrics are computed over the whole step batch."""
        if not self.split:
            return trajs, components
        light = [SimpleNamespace(reward=t.reward, truncated=t.truncated, final_text=t.final_text,
                                 prompt=SimpleNamespace(text=t.prompt.text),
                                 samples=[SimpleNamespace(completion_ids=range(len(s.completion_ids)))
                                          for s in t.samples]) for t in trajs]
        gathered = self.all_gather_object((light, components))
        all_trajs = [t for part, _ in gathered for t in part]
        keys = list(dict.fromkeys(k for _, comp in gathered for k in comp))
        all_comp = {k: [v for part, comp in gathered for v in comp.get(k, [None] * len(part))] for k in keys}
        return all_trajs, all_comp

    def global_count(self, n: int) -> int:
        """A per-rank count summed over ranks (each rank holds a disjoint part of the step batch)."""
        return int(self.all_reduce_sum(float(n))) if self.enabled else n

    # ------------------------------------------------------------------ learner and engine
    def wrap_learner(self, learner) -> None:
        """Wrap the learner's model for DDP / DeepSpeed, or shard it with FSDP2 (which also re-points the learner's
        optimizer at the sharded parameters); a no-op in a single process."""
        if not self.enabled:
            return
        from rlpost.distributed.learner_ops import DDPOps, DeepSpeedOps
        if self.backend == "ddp":
            self.ops = DDPOps(self, learner.model)
        elif self.fsdp2:
            if learner.lr_controller is not None and learner.lr_controller.needs_grad_stats:
                raise ConfigError("algo.lr_controller: controllers that read per-micro-batch gradient norms are not "
                                  "supported with distributed.backend=fsdp2 (the unsharded gradients exist only "
                                  "inside FSDP2's backward); use distributed.backend=ddp or deepspeed")
            from rlpost.distributed.fsdp2 import FSDP2Ops
            self.ops = FSDP2Ops(self, learner)
        else:
            self.ops = DeepSpeedOps(self, learner)
            self.deepspeed_engine = self.ops.engine
        learner.dist = self.ops

    def wrap_engine(self, engine):
        """This rank's engine: per-rank sampling seeds (split rollouts). Generation on the learner's own model under
        ZeRO-3 needs :meth:`full_parameters` around it, which the rollout pipeline holds for a whole batch."""
        if not self.enabled:
            return engine
        return RankEngine(engine, self)

    # ------------------------------------------------------------------ ZeRO-3 / FSDP2 gathers
    def gather_context(self, params):
        """ZeRO-3: ``params`` gathered for the body; FSDP2: the units owning them unsharded (inside, read the
        modules' attributes, not ``params``). Collective on all ranks; otherwise a no-op."""
        if self.fsdp2 and self.ops is not None:
            return self.ops.gather_context(params)
        if not self.zero3:
            return contextlib.nullcontext()
        import deepspeed
        return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)

    @contextlib.contextmanager
    def full_parameters(self):
        """ZeRO-3: all parameters gathered and DeepSpeed's fetch hooks removed; FSDP2: every unit unsharded, no
        resharding after forward (generation with the model, any number of forwards per rank)."""
        if self.fsdp2 and self.ops is not None:
            with self.ops.full_parameters():
                yield
            return
        if not self.zero3 or self.deepspeed_engine is None:
            yield
            return
        from rlpost.distributed.deepspeed_internals import gathered_without_hooks
        with gathered_without_hooks(self.deepspeed_engine):
            yield

    def full_state_dict(self, model) -> dict | None:
        """Full state dict (CPU) on rank 0 (None elsewhere), gathered parameter by parameter under ZeRO-3 and
        FSDP2 (collective)."""
        if self.fsdp2 and self.ops is not None:
            return self.ops.full_state_dict(model, self.is_main)
        out = {}
        for name, p in model.named_parameters():
            with self.gather_context([p]):
                if self.is_main:
                    out[name] = p.data.detach().cpu().clone()
        if self.is_main:  # persistent buffers only (rotary caches and the like are rebuilt on load)
            for mod_name, mod in model.named_modules():
                for name, b in mod.named_buffers(recurse=False):
                    if name not in mod._non_persistent_buffers_set:
                        out[f"{mod_name}.{name}" if mod_name else name] = b.detach().cpu().clone()
        return out if self.is_main else None

    # ------------------------------------------------------------------ shards (written by rlpost/checkpoint.py)
    @property
    def shards_optimizer(self) -> bool:
        """DeepSpeed or FSDP2 holds the optimizer state (sharded): checkpoints keep it in the shard folder
        (:attr:`shard_folder`), not in state.pt."""
        return self.deepspeed_engine is not None or (self.fsdp2 and self.ops is not None)

    @property
    def shard_folder(self) -> str:
        """The checkpoint sub-folder of the shards: ``deepspeed`` (DeepSpeed's own format) or ``fsdp`` (DCP)."""
        return "fsdp" if self.fsdp2 else "deepspeed"

    def save_shards(self, path) -> None:
        """This rank's shards under ``path`` (every rank): DeepSpeed's checkpoint (optimizer state, fp32 master
        weights) or FSDP2's sharded model and optimizer state dicts (torch.distributed.checkpoint)."""
        if self.fsdp2:
            self.ops.save_shards(path)
            return
        self.deepspeed_engine.save_checkpoint(str(path), tag="ds", client_state={}, save_latest=False)

    def load_shards(self, path) -> None:
        if self.fsdp2:
            self.ops.load_shards(path)
            return
        self.deepspeed_engine.load_checkpoint(str(path), tag="ds", load_optimizer_states=True,
                                       load_lr_scheduler_states=False)

    def close(self) -> None:
        if self.deepspeed_engine is not None:  # release ZeRO-3's hooks and optimizer state before the process group
            try:
                self.deepspeed_engine.destroy()
            except Exception:  # pragma: no cover - best effort at exit
                pass
            self.deepspeed_engine = None
        if self.enabled and is_initialized():
            try:
                torch_dist().destroy_process_group()
            except Exception:  # pragma: no cover - best effort at exit
                pass


def group_share(trajectories: list, rank: int, world_size: int) -> list:
    """Rank ``rank``'s contiguous share of the groups of ``trajectories`` (groups in order of first appearance)."""
    groups = list(dict.fromkeys(t.group_id for t in trajectories))
    lo, hi = (len(groups) * r // world_size for r in (rank, rank + 1))
    mine = set(groups[lo:hi])
    return [t for t in trajectories if t.group_id in mine]


SINGLE_PROCESS = Runtime()  # the disabled runtime: what functions taking ``runtime=None`` use


class RankEngine:
    """The rollout engine of one rank: per-rank sampling seeds in split mode (an engine that takes a
    ``seed_offset``, like the vllm engine, gets this rank's row offset instead)."""

    def __init__(self, engine, runtime: Runtime):
        self.engine = engine
        self.runtime = runtime

    def generate(self, requests, params, **kwargs):
        rt = self.runtime
        if rt.split and params.seed is not None:
            import inspect
            takes_offset = "seed_offset" in inspect.signature(self.engine.generate).parameters
            if takes_offset and "seed_offset" not in kwargs:
                kwargs["seed_offset"] = rt.rank * len(requests)
            elif not takes_offset:
                params = dataclasses.replace(params, seed=seed_for_rank(params.seed, rt.rank))
        return self.engine.generate(requests, params, **kwargs)

    def load_weights(self, named_tensors) -> None:
        self.engine.load_weights(named_tensors)

    def close(self) -> None:
        self.engine.close()

    def __getattr__(self, name: str):
        if name == "engine":
            raise AttributeError(name)
        return getattr(self.engine, name)


def setup(cfg) -> Runtime:
    """Join the process group that the launcher describes (RANK, WORLD_SIZE, ... in the environment) and
    check the rules that depend on the world size. ``backend: none`` returns a disabled runtime."""
    d = cfg.distributed
    warnings.filterwarnings("ignore", message=r".*is deprecated\. Please use `torch\.distributed\.", category=FutureWarning)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if d.backend == "none":
        if launched > 1:
            raise ConfigError(f"launched with WORLD_SIZE={launched} but distributed.backend is none: set "
                              "distributed.backend=ddp, deepspeed or fsdp2 (or start a single process)")
        return Runtime(cfg, enabled=False)
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    backend = d.dist_backend
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available() and cfg.trainer.device in ("auto", "cuda"):
        torch.cuda.set_device(local_rank())
    if not is_initialized():
        timeout = datetime.timedelta(seconds=d.timeout_s)
        if d.backend == "deepspeed":
            import deepspeed
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=timeout,
                                       verbose=False)
        else:
            torch_dist().init_process_group(backend=backend, timeout=timeout)
    runtime = Runtime(cfg, enabled=True)
    _check(cfg, runtime)
    if runtime.is_main:
        log.info("distributed learner: %s%s on %d ranks (%s), rollouts %s", d.backend,
                 f" ZeRO-{d.zero_stage}" if d.backend == "deepspeed" else "", runtime.world_size, backend, d.rollout)
    return runtime


def _check(cfg, runtime: Runtime) -> None:
    check_world_rules(cfg, runtime.world_size, zero3=runtime.zero3, split=runtime.split)
    if cfg.trainer.eval_benchmarks and not runtime.is_main:
        log.debug("benchmark evaluation runs on every rank; rank 0 logs it")


def check_world_rules(cfg, world_size: int, zero3: bool | None = None, split: bool | None = None) -> None:
    """The config rules that depend on the number of learner ranks (also run by ``rlpost validate``). ``zero3`` and
    ``split``: the runtime's, when it exists; otherwise read from the config."""
    r, a, d, w = cfg.rollout, cfg.algo, cfg.distributed, world_size
    if r.prompts_per_step % w:
        raise ConfigError(f"rollout.prompts_per_step ({r.prompts_per_step}) must divide by the number of learner "
                          f"ranks ({w}): each rank trains on whole groups")
    local_rows = r.prompts_per_step // w * r.num_generations
    if local_rows % cfg.optim.steps_per_generation:
        raise ConfigError(f"optim.steps_per_generation ({cfg.optim.steps_per_generation}) must divide each rank's "
                          f"share of the generation batch ({local_rows} = prompts_per_step / {w} ranks * "
                          "num_generations)")
    zero3 = d.backend == "deepspeed" and d.zero_stage == 3 if zero3 is None else zero3
    split = d.rollout == "split" if split is None else split
    if a.dynamic_sampling and not split:
        raise ConfigError("algo.dynamic_sampling with several learner ranks needs distributed.rollout=split (each "
                          "rank refills its own share of the groups)")
