"""The learner on several processes: plain DDP or DeepSpeed ZeRO-2/3 (``distributed:`` config section).

Launch one process per device with any torch launcher (they all set RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT)::

    torchrun --nproc_per_node 2 -m rlpost.cli train cfg.yaml distributed.backend=deepspeed distributed.zero_stage=3
    accelerate launch --num_processes 2 -m rlpost.cli train cfg.yaml distributed.backend=ddp
    deepspeed --num_gpus 2 --module rlpost.cli train cfg.yaml distributed.backend=deepspeed

rlpost drives DeepSpeed / DDP itself (the ``distributed:`` section is the only configuration; accelerate's
own DeepSpeed plugin is not used). What each rank does in one RL step:

1. Rollout. ``distributed.rollout: split`` (default): every rank draws the same global list of
   ``rollout.prompts_per_step`` prompts (the sampler runs in lockstep on every rank) and generates its own
   contiguous slice, so a prompt's whole group lives on one rank; ``prompts_per_step`` must divide by the world
   size. Sampling seeds differ per rank. ``replicate``: every rank generates the whole batch with the
   single-process seeds (the same samples as a one-process run, world_size times the generation work) and keeps
   its slice of groups; used to check the distributed learner against a single process.
2. Rewards, group advantages, old/reference log-probs: local (groups are whole). Rollout metrics are computed
   over all ranks' trajectories (gathered), so the logged numbers mean what they mean in one process.
3. Update. The loss stays exactly the single-process loss: micro-batch shares are divided by the token / row
   counts summed over ranks, gradients are summed over ranks (DDP and ZeRO average, so each rank's loss is
   scaled by the world size), and every rank runs the same number of backward passes (a rank with fewer
   micro-batches runs zero-weighted ones, since DDP / ZeRO reduce inside backward). Metrics are summed shares.
4. Weight sync to an engine holding its own weights: under ZeRO-3 parameters are gathered module by module
   (``deepspeed.zero.GatheredParameters``, collective on all ranks); LoRA weights are merged on the fly
   (rlpost/models/lora.py). ``rlpost serve`` workers (rollout.engine=vllm_server) are shared by all ranks, so
   only rank 0 sends; a colocated engine (hf, vllm) is per rank. The hf engine shares the model object; under
   ZeRO-3 generation runs with the full parameters gathered and DeepSpeed's fetch hooks removed.
5. Only rank 0 writes metrics, checkpoints (``model/`` from gathered weights, ``state.pt``) and the final
   model; every rank adds ``rank-<r>.pt`` (its RNG state) and, with DeepSpeed, its ZeRO shard under
   ``deepspeed/`` (DeepSpeed's own checkpoint: optimizer state and fp32 master weights), which needs an output
   directory that all nodes see.

Everything here is a no-op in a single process (``distributed.backend: none``): :class:`Runtime` methods
return their input unchanged, so the single-process path is the unchanged code path.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

from rlpost.config import ConfigError

log = logging.getLogger("rlpost")


# ---------------------------------------------------------------------------------------------- process info


def _dist():
    import torch.distributed as dist
    return dist


def is_initialized() -> bool:
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return _dist().get_rank() if is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return _dist().get_world_size() if is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def comm_device() -> torch.device:
    """Where collective tensors live: the current GPU for NCCL, the CPU for gloo."""
    if is_initialized() and _dist().get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, device=comm_device())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _seed_for_rank(seed: int | None, r: int) -> int | None:
    if seed is None or r == 0:
        return seed
    return int.from_bytes(hashlib.sha256(repr((seed, "rank", r)).encode()).digest()[:8], "little") >> 2


class NullTracker:
    """Ranks other than 0 log nothing."""

    def log(self, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------- runtime


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
        self.ops = None          # learner ops (DDP / DeepSpeed), set by wrap_learner
        self.ds_engine = None    # DeepSpeedEngine

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def zero3(self) -> bool:
        return self.zero_stage == 3

    # ------------------------------------------------------------------ collectives
    def all_reduce_sum(self, x):
        if not self.enabled:
            return x
        t = torch.as_tensor(x, dtype=torch.float64).to(comm_device()).clone()
        _dist().all_reduce(t)
        return type(x)(t.item()) if isinstance(x, (int, float)) else t

    def all_reduce_max(self, x):
        if not self.enabled:
            return x
        t = torch.as_tensor(x, dtype=torch.float64).to(comm_device()).clone()
        _dist().all_reduce(t, op=_dist().ReduceOp.MAX)
        return type(x)(t.item()) if isinstance(x, (int, float)) else t

    def barrier(self) -> None:
        if self.enabled:
            _dist().barrier()

    def broadcast_object(self, obj, src: int = 0):
        if not self.enabled:
            return obj
        box = [obj]
        _dist().broadcast_object_list(box, src=src)
        return box[0]

    def all_gather_object(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        _dist().all_gather_object(out, obj)
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
        groups = list(dict.fromkeys(t.group_id for t in trajectories))
        lo, hi = (len(groups) * r // self.world_size for r in (self.rank, self.rank + 1))
        mine = set(groups[lo:hi])
        return [t for t in trajectories if t.group_id in mine]

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

    # ------------------------------------------------------------------ engine
    def wrap_engine(self, engine):
        if not self.enabled:
            return engine
        return RankEngine(engine, self)

    def gather_context(self, params):
        if not self.zero3:
            return contextlib.nullcontext()
        import deepspeed
        return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)

    @contextlib.contextmanager
    def full_parameters(self):
        """ZeRO-3: all parameters gathered and DeepSpeed's fetch hooks removed (generation with the model)."""
        if not self.zero3 or self.ds_engine is None:
            yield
            return
        import deepspeed
        offload = getattr(self.ds_engine.optimizer, "parameter_offload", None) or self.ds_engine.optimizer
        with deepspeed.zero.GatheredParameters(list(self.ds_engine.module.parameters()), modifier_rank=None):
            for p in self.ds_engine.module.parameters():
                if hasattr(p, "ds_active_sub_modules"):
                    p.ds_active_sub_modules.clear()
            for hook in offload.forward_hooks + offload.backward_hooks:
                hook.remove()
            offload.forward_hooks, offload.backward_hooks = [], []
            try:
                yield
            finally:
                coordinator = getattr(offload, "param_coordinator", None)
                if coordinator is not None and not coordinator.is_invalid_trace():
                    coordinator._invalidate_trace()
                offload._register_deepspeed_module(offload.module)

    def named_parameters_for_sync(self, model):
        """(HF name, tensor) for an engine: merged LoRA weights for peft models, gathered under ZeRO-3."""
        from rlpost.models.lora import is_peft_model, merged_named_parameters
        if is_peft_model(model):
            yield from merged_named_parameters(model, gather=self.gather_context if self.zero3 else None)
        elif self.zero3:
            for name, p in model.named_parameters():
                with self.gather_context([p]):
                    t = p.data.detach().clone()
                yield name, t
        else:
            yield from model.named_parameters()

    def sync_engine(self, engine, model) -> None:
        """Push the learner weights to an engine with its own copy. rlpost serve workers are shared by all
        ranks: rank 0 sends, the others take part in the ZeRO-3 gathers and wait."""
        tensors = self.named_parameters_for_sync(model)
        if not self.enabled:
            engine.load_weights(tensors)
            return
        shared = getattr(engine, "shared_across_ranks", None)
        if shared is None:
            shared = self.cfg.rollout.engine == "vllm_server"
        if not shared:
            engine.load_weights(tensors)
            return
        failure = None
        if self.is_main:
            try:
                engine.load_weights(tensors)
            except Exception as err:  # tell the other ranks, so that every rank stops now instead of timing out
                failure = err
        else:
            for _ in tensors:
                pass
        message = self.broadcast_object(None if failure is None else f"{type(failure).__name__}: {failure}")
        if failure is not None:
            raise failure
        if message is not None:
            from rlpost.engines.base import EngineError
            raise EngineError(f"rank 0 could not send the weights to the rollout workers: {message}")

    # ------------------------------------------------------------------ learner
    def wrap_learner(self, learner) -> None:
        """Wrap the learner's model for DDP / DeepSpeed (no-op in a single process)."""
        if not self.enabled:
            return
        if learner.lr_controller is not None and getattr(learner.lr_controller, "needs_grad_stats", False):
            raise ConfigError("algo.lr_controller: controllers that read per-micro-batch gradient norms are not "
                              "supported with distributed.backend (gradients are reduced across ranks)")
        if self.backend == "ddp":
            self.ops = DDPOps(self, learner.model)
        else:
            self.ops = DeepSpeedOps(self, learner)
            self.ds_engine = self.ops.engine
        learner.dist = self.ops

    # ------------------------------------------------------------------ saving
    def gathered_state_dict(self, model) -> dict | None:
        """Full state dict (CPU) on rank 0 (None elsewhere); collective under ZeRO-3."""
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

    def save_model(self, model, tokenizer, path: Path, final: bool = False) -> None:
        """save_pretrained on rank 0 (gathered under ZeRO-3); LoRA: the adapter (+ merged/ when final)."""
        from rlpost.models.lora import is_peft_model, merged_state_dict, save_final
        peft = is_peft_model(model)
        save_merged = final and peft and self.cfg.model.lora.save_merged if self.cfg is not None else final and peft
        if not self.zero3:
            if self.is_main:
                if peft:
                    save_final(model, tokenizer, path, save_merged=save_merged)
                else:
                    model.save_pretrained(path)
                    tokenizer.save_pretrained(path)
            self.barrier()
            return
        state = self.gathered_state_dict(model)
        merged = merged_state_dict(model, self.gather_context) if save_merged else None
        if self.is_main:
            if peft:
                save_final(model, tokenizer, path, save_merged=save_merged, state_dict=state, merged=merged)
            else:
                model.save_pretrained(path, state_dict=state)
                tokenizer.save_pretrained(path)
        self.barrier()

    def save_final(self, model, tokenizer, path: Path) -> None:
        if not self.enabled:
            from rlpost.models.lora import is_peft_model, save_final
            if is_peft_model(model):
                save_final(model, tokenizer, path, save_merged=self.cfg.model.lora.save_merged if self.cfg else True)
            else:
                model.save_pretrained(path)
                tokenizer.save_pretrained(path)
            return
        self.save_model(model, tokenizer, path, final=True)

    def save_checkpoint(self, trainer) -> Path:
        """Distributed checkpoint in the single-process layout plus rank-<r>.pt files and, with DeepSpeed,
        DeepSpeed's own sharded checkpoint (optimizer state, fp32 master weights) under deepspeed/."""
        from rlpost import checkpoint as ckpt
        root = ckpt.checkpoint_dir(trainer.out)
        if self.is_main:
            root.mkdir(parents=True, exist_ok=True)
        tmp = Path(self.broadcast_object(tempfile.mkdtemp(dir=root, prefix=f".step-{trainer.step}.")
                                         if self.is_main else None))
        if self.ds_engine is not None:
            self.ds_engine.save_checkpoint(str(tmp / "deepspeed"), tag="ds", client_state={}, save_latest=False)
        self.save_model(trainer.model, trainer.tokenizer, tmp / "model")
        torch.save({"rng": ckpt.rng_state()}, tmp / f"rank-{self.rank}.pt")
        state = trainer.state()
        if self.ds_engine is not None:
            state["optimizer"] = None  # in deepspeed/ (sharded)
        if self.is_main:
            torch.save({**state, "step": trainer.step, "rng": ckpt.rng_state(), "world_size": self.world_size,
                        "distributed": self.backend}, tmp / "state.pt")
        self.barrier()
        final = root / f"step-{trainer.step}"
        if self.is_main:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            keep = trainer.cfg.trainer.save_total_limit
            for old in ckpt.list_checkpoints(trainer.out)[:-keep] if keep > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
        self.barrier()
        return final

    def load_model_and_optimizer(self, trainer, path: Path, state: dict) -> None:
        """Resume the weights and optimizer (every rank)."""
        from rlpost.models.loading import load_state_into
        if self.ds_engine is not None:
            if not (path / "deepspeed").exists():
                raise ConfigError(f"{path} was not written with distributed.backend=deepspeed (no deepspeed/ folder)")
            if state.get("world_size") not in (None, self.world_size):
                raise ConfigError(f"{path} was written by {state['world_size']} ranks, this run has "
                                  f"{self.world_size}: DeepSpeed ZeRO shards need the same world size")
            self.ds_engine.load_checkpoint(str(path / "deepspeed"), tag="ds", load_optimizer_states=True,
                                           load_lr_scheduler_states=False)
            return
        load_state_into(trainer.model, path / "model")
        if state.get("optimizer") is not None:
            trainer.learner.optimizer.load_state_dict(state["optimizer"])

    def rng_state(self, path: Path, state: dict) -> dict:
        own = path / f"rank-{self.rank}.pt"
        if self.enabled and own.exists():
            return torch.load(own, weights_only=False)["rng"]
        return state["rng"]

    def close(self) -> None:
        if self.ds_engine is not None:  # ZeRO-3: release its hooks and optimizer state before the process group
            try:
                self.ds_engine.destroy()
            except Exception:  # pragma: no cover - best effort at exit
                pass
            self.ds_engine = None
        if self.enabled and is_initialized():
            try:
                _dist().destroy_process_group()
            except Exception:  # pragma: no cover - best effort at exit
                pass


# ---------------------------------------------------------------------------------------------- engine wrapper


class RankEngine:
    """The rollout engine of one rank: per-rank sampling seeds in split mode (an engine that takes a
    ``seed_offset``, like the vllm engine, gets this rank's row offset instead), and under ZeRO-3 generation
    with the model's parameters gathered (the hf engine runs on the partitioned learner model)."""

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
                params = dataclasses.replace(params, seed=_seed_for_rank(params.seed, rt.rank))
        gather = rt.full_parameters() if getattr(self.engine, "model", None) is not None else contextlib.nullcontext()
        with gather:
            return self.engine.generate(requests, params, **kwargs)

    def load_weights(self, named_tensors) -> None:
        self.engine.load_weights(named_tensors)

    def close(self) -> None:
        self.engine.close()

    def __getattr__(self, name: str):
        if name == "engine":
            raise AttributeError(name)
        return getattr(self.engine, name)


# ---------------------------------------------------------------------------------------------- learner ops


class _Ops:
    """What the learner calls in a multi-process run (rlpost/learner.py ``self.dist``)."""
    fused_step = False

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.world = runtime.world_size
        self.num_backward = 1

    def step_counts(self, tokens, rows: int, num_micro: int) -> tuple[float, int, int]:
        dist = _dist()
        counts = _tensor([float(tokens), float(rows)])
        dist.all_reduce(counts)
        most = _tensor([float(num_micro)])
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        self.num_backward = int(most.item())
        if num_micro == 0 and self.num_backward > 0:
            raise RuntimeError(f"rank {self.runtime.rank} has no rows for an optimizer step while other ranks do; "
                               "make rollout.prompts_per_step * num_generations / world_size >= steps_per_generation")
        self._before_forward(0)
        return max(float(counts[0]), 1.0), int(counts[1]), self.num_backward

    def _before_forward(self, index: int) -> None:
        pass

    def reduce_metrics(self, total_loss: float, metrics: dict) -> tuple[float, dict]:
        keys = sorted({k for part in self.runtime.all_gather_object(sorted(metrics)) for k in part})
        t = _tensor([total_loss] + [float(metrics.get(k, 0.0)) for k in keys])
        _dist().all_reduce(t)
        return float(t[0]), {k: float(v) for k, v in zip(keys, t[1:])}


class DDPOps(_Ops):
    """torch DistributedDataParallel. Gradients are all-reduced once per optimizer step (the last backward);
    the micro-batches before it run without sync."""

    def __init__(self, runtime: Runtime, model):
        super().__init__(runtime)
        from torch.nn.parallel import DistributedDataParallel
        device = next(model.parameters()).device
        self.train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=runtime.cfg.distributed.find_unused_parameters)

    def _before_forward(self, index: int) -> None:
        # DDP decides in forward whether the following backward reduces (as no_sync() does)
        self.train_model.require_backward_grad_sync = index >= self.num_backward - 1

    def backward(self, loss: torch.Tensor, index: int) -> None:
        (loss * self.world).backward()  # DDP averages over ranks; shares are already global
        self._before_forward(index + 1)


class DeepSpeedOps(_Ops):
    """DeepSpeed ZeRO-2/3 with caller-managed gradient accumulation: backward() accumulates (ZeRO reduces and
    partitions inside it), step() clips, updates and zeroes. rlpost's own optimizer and LR schedule are used."""
    fused_step = True

    def __init__(self, runtime: Runtime, learner):
        super().__init__(runtime)
        import deepspeed
        config = deepspeed_config(runtime.cfg, runtime.world_size)
        self.engine, _, _, _ = deepspeed.initialize(model=learner.model, optimizer=learner.optimizer, config=config,
                                                    dist_init_required=False)
        self.train_model = self.engine

    def backward(self, loss: torch.Tensor, index: int) -> None:
        self.engine.backward(loss * self.world, scale_wrt_gas=False)  # ZeRO averages over ranks

    def step(self) -> torch.Tensor:
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return torch.tensor(float(norm) if norm is not None else float("nan"))


def deepspeed_config(cfg, world: int) -> dict:
    """rlpost's DeepSpeed config (overridable by ``distributed.deepspeed_config``)."""
    d, o, m = cfg.distributed, cfg.optim, cfg.model
    zero = {"stage": d.zero_stage, "overlap_comm": False, "contiguous_gradients": True,
            "reduce_bucket_size": 5e7, "allgather_bucket_size": 5e7}
    if d.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if d.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if d.zero_stage == 3:
        zero.update({"stage3_param_persistence_threshold": 0, "stage3_prefetch_bucket_size": 5e7,
                     "stage3_gather_16bit_weights_on_model_save": False})
    config = {
        "train_micro_batch_size_per_gpu": o.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": o.micro_batch_size * world,
        "managed_gradient_accumulation": False,     # rlpost calls backward per micro-batch and step() per mini-batch
        "gradient_clipping": o.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": m.dtype == "bfloat16"},
        "fp16": {"enabled": m.dtype == "float16"},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,       # rlpost's torch optimizer also with offload_optimizer
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    extra = d.deepspeed_config
    if isinstance(extra, str):
        extra = json.loads(Path(extra).read_text())
    return _merge(config, extra or {})


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---------------------------------------------------------------------------------------------- start-up


def setup(cfg) -> Runtime:
    """Join the process group that the launcher describes (RANK, WORLD_SIZE, ... in the environment) and
    check the rules that depend on the world size. ``backend: none`` returns a disabled runtime."""
    d = cfg.distributed
    warnings.filterwarnings("ignore", message=r".*is deprecated\. Please use `torch\.distributed\.", category=FutureWarning)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if d.backend == "none":
        if launched > 1:
            raise ConfigError(f"launched with WORLD_SIZE={launched} but distributed.backend is none: set "
                              "distributed.backend=ddp or deepspeed (or start a single process)")
        return Runtime(cfg, enabled=False)
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
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
            _dist().init_process_group(backend=backend, timeout=timeout)
    runtime = Runtime(cfg, enabled=True)
    _check(cfg, runtime)
    if runtime.is_main:
        log.info("distributed learner: %s%s on %d ranks (%s), rollouts %s", d.backend,
                 f" ZeRO-{d.zero_stage}" if d.backend == "deepspeed" else "", runtime.world_size, backend, d.rollout)
    return runtime


def _check(cfg, runtime: Runtime) -> None:
    check_world_rules(cfg, runtime.world_size)
    if cfg.trainer.eval_benchmarks and not runtime.is_main:
        log.debug("benchmark evaluation runs on every rank; rank 0 logs it")


def check_world_rules(cfg, world_size: int) -> None:
    """The config rules that depend on the number of learner ranks (also run by ``rlpost validate``)."""
    r, a, d, w = cfg.rollout, cfg.algo, cfg.distributed, world_size
    if r.prompts_per_step % w:
        raise ConfigError(f"rollout.prompts_per_step ({r.prompts_per_step}) must divide by the number of learner "
                          f"ranks ({w}): each rank trains on whole groups")
    local_rows = r.prompts_per_step // w * r.num_generations
    if local_rows % cfg.optim.steps_per_generation:
        raise ConfigError(f"optim.steps_per_generation ({cfg.optim.steps_per_generation}) must divide each rank's "
                          f"share of the generation batch ({local_rows} = prompts_per_step / {w} ranks * "
                          "num_generations)")
    zero3 = d.backend == "deepspeed" and d.zero_stage == 3
    if a.dynamic_sampling and (zero3 or d.rollout != "split"):
        raise ConfigError("algo.dynamic_sampling with several learner ranks needs distributed.rollout=split and "
                          "not ZeRO-3 (ranks refill different numbers of groups; ZeRO-3 generation is collective)")
