"""The learner on several processes: plain DDP, DeepSpeed ZeRO-2/3 or torch FSDP2 (``distributed:`` config section).

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

Modules:

- ``sharding``: :class:`Runtime` (process group, collectives, each rank's share of the rollouts, the learner
  wrapped for DDP / ZeRO / FSDP2, ZeRO-3 / FSDP2 gathers for generation and saving, shard files) and :func:`setup`;
- ``fsdp2``: the FSDP2 learner (``fully_shard`` per decoder layer, mixed precision, CPU offload, DCP checkpoints);
- ``learner_ops``: what the learner calls (global counts, backward, step) and rlpost's DeepSpeed config;
- ``weight_sync``: the learner's full weights pushed to a rollout engine;
- ``deepspeed_internals``: the only code that relies on DeepSpeed's private attributes (version-checked);
- ``process``: rank / world size and the collective device.

Checkpoints are written by rlpost/checkpoint.py alone; the runtime hands it gathered state dicts and writes its
ZeRO / FSDP2 shards where it is told.
"""
from rlpost.distributed.sharding import NullTracker, Runtime, check_world_rules, setup  # noqa: F401
