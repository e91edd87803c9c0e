"""What the learner calls in a multi-process run (rlpost/learner.py ``self.dist``): the model wrapped for torch DDP
or DeepSpeed ZeRO-2/3, global token / row counts for the loss shares, backward and the optimizer step."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from rlpost.distributed.process import comm_tensor, torch_dist


class _Ops:
    """What the learner calls in a multi-process run (rlpost/learner.py ``self.dist``)."""
    fused_step = False

    def __init__(self, runtime):
        self.runtime = runtime
        self.world = runtime.world_size
        self.loss_scale = float(self.world)  # backward() runs on loss * world: DDP and ZeRO average over ranks
        self.num_backward = 1

    def step_counts(self, tokens, rows: int, num_micro: int) -> tuple[float, int, int]:
        dist = torch_dist()
        counts = comm_tensor([float(tokens), float(rows)])
        dist.all_reduce(counts)
        most = comm_tensor([float(num_micro)])
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
        t = comm_tensor([total_loss] + [float(metrics.get(k, 0.0)) for k in keys])
        torch_dist().all_reduce(t)
        return float(t[0]), {k: float(v) for k, v in zip(keys, t[1:])}

    def gather_micro_stats(self, local: list) -> list:
        """Every rank's per-micro-batch gradient statistics (read before the all-reduce), concatenated in rank order."""
        return [item for part in self.runtime.all_gather_object(list(local)) for item in part]


class DDPOps(_Ops):
    """torch DistributedDataParallel. Gradients are all-reduced once per optimizer step (the last backward);
    the micro-batches before it run without sync."""

    def __init__(self, runtime, model):
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

    def __init__(self, runtime, learner):
        super().__init__(runtime)
        import deepspeed
        config = deepspeed_config(runtime.cfg, runtime.world_size)
        self.engine, _, _, _ = deepspeed.initialize(model=learner.model, optimizer=learner.optimizer, config=config,
                                                    dist_init_required=False)
        self.train_model = self.engine
        self._before_update = None
        # ZeRO calls the torch optimizer's step() (once per parameter group) after it has reduced, measured and
        # clipped the gradient: the first call of each engine.step() hands the pre-clip norm to before_update
        learner.optimizer.register_step_pre_hook(self._pre_update)

    def backward(self, loss: torch.Tensor, index: int) -> None:
        self.engine.backward(loss * self.world, scale_wrt_gas=False)  # ZeRO averages over ranks

    def step(self, before_update=None) -> torch.Tensor:
        """engine.step(): clip, update, zero. ``before_update(pre_clip_norm)`` runs right before the parameters
        change (the LR controller sets the learning rate there); a step that ZeRO skips (fp16 overflow) never
        calls it."""
        self._before_update = before_update
        try:
            self.engine.step()
        finally:
            self._before_update = None
        norm = self.engine.get_global_grad_norm()
        return torch.tensor(float(norm) if norm is not None else float("nan"))

    def _pre_update(self, optimizer, args, kwargs) -> None:
        callback, self._before_update = self._before_update, None
        if callback is not None:
            from rlpost.distributed.deepspeed_internals import pre_clip_grad_norm
            callback(pre_clip_grad_norm(self.engine))


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
