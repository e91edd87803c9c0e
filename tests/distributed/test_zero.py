"""Two-process learners (gloo on CPU) against the single-process run of the tiny GRPO config.

    torchrun --nproc_per_node 2 -m rlpost.cli train configs/tiny/arith_grpo.yaml distributed.backend=deepspeed \
        distributed.zero_stage=2 trainer.max_steps=3 ...

What is compared. The comparison runs use ``distributed.rollout=replicate``: each rank generates the whole step
batch with the single-process seeds and trains on its half of the groups, so both runs train on the same samples
and any difference comes from the distributed learner alone. ``algo.loss_agg=token-mean`` makes the loss value
non-trivial (GRPO's default sequence-mean of group-normalised advantages is ~0 on-policy) and exercises the
global token count; ``optim.micro_batch_size=24`` gives each rank 3 micro-batches (24, 24, 16 rows) against 6 in
one process, so the accumulation across micro-batches and ranks is exercised too.

Tolerance. Per step, |loss difference| <= 1e-5 (losses are 1e-3 .. 1e-2 here) and grad-norm relative difference
<= 1e-4; rewards and token counts must be equal. Why not bitwise: the gradient is the same sum taken in another
order (per-rank partial sums reduced by gloo / ZeRO's reduce-scatter, other micro-batch boundaries), so float32
rounding differs at ~1e-7 relative; after an AdamW step the weights differ at that level, and so do the next
step's log-probs. Measured on this machine: |loss diff| <= 7e-9, grad-norm rel. diff <= 7e-7 (DDP, ZeRO-2, ZeRO-3).
Samples stay identical as long as no sampled token flips, which needs a sampling draw within ~1e-6 of a CDF
boundary: unlikely over 3 steps (~1400 tokens), and checked (rewards / tokens equal).
"""
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.distributed.multirank import train_run

COMMON = ["trainer.max_steps=3", "trainer.eval_steps=0", "data.num_eval=16", "trainer.progress_bar=false",
          "trainer.report_to=[]", "algo.loss_agg=token-mean", "optim.micro_batch_size=24"]
LOSS_ATOL, GRAD_RTOL = 1e-5, 1e-4
BACKENDS = {"ddp": ["distributed.backend=ddp"],
            "zero2": ["distributed.backend=deepspeed", "distributed.zero_stage=2"],
            "zero3": ["distributed.backend=deepspeed", "distributed.zero_stage=3"],
            # token-budget micro-batches: ranks may cut different numbers of micro-batches (zero-weighted extra passes)
            "ddp_token_budget": ["distributed.backend=ddp", "optim.max_tokens_per_micro_batch=150"]}


def train(out: Path, *overrides, nproc: int = 1) -> list[dict]:
    return train_run("configs/tiny/arith_grpo.yaml", out, [*COMMON, *overrides], nproc=nproc)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_path):
    return train(tmp_path_factory.mktemp("single") / "run")


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_two_ranks_match_the_single_process_loss_curve(reference, backend, tmp_path):
    rows = train(tmp_path / backend, *BACKENDS[backend], "distributed.rollout=replicate", nproc=2)
    assert [r["step"] for r in rows] == [r["step"] for r in reference] == [0, 1, 2, 3]
    for ref, got in zip(reference[1:], rows[1:]):
        assert got["reward/mean"] == ref["reward/mean"] and got["tokens"] == ref["tokens"], (backend, ref["step"])
        assert abs(got["loss"] - ref["loss"]) <= LOSS_ATOL, (backend, ref["step"], got["loss"], ref["loss"])
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=GRAD_RTOL), (backend, ref["step"])
    # rank 0 alone wrote the metrics and the final model, which plain transformers loads
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(tmp_path / backend / "final_model").config.model_type == "qwen2"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["zero3"])
def test_split_rollouts_zero_checkpoint_resumes_exactly(tmp_path, backend):
    """Default split rollouts: each rank generates its own 8 of the 16 prompts. A checkpoint at step 2 holds
    rank 0's model/state.pt, one rank-<r>.pt per rank and DeepSpeed's shards; resuming from it reproduces step 3.
    (state.pt's optimizer is None, never asked of DeepSpeed's partitioned optimizer.) ZeRO-3 only, to keep the
    suite short: ZeRO-2 saves and loads through the same DeepSpeed engine calls (rlpost/distributed/sharding.py
    save/load) with its unpartitioned parameters; add "zero2" to the parameters to run it when that path changes."""
    out = tmp_path / "split"
    opts = [*BACKENDS[backend], "trainer.save_steps=2"]
    full = train(out, *opts, nproc=2)
    assert [r["step"] for r in full] == [0, 1, 2, 3]
    assert all(abs(r["loss"]) < 1 and r["grad_norm"] > 0 for r in full[1:])
    assert 300 < full[1]["tokens"] < 16 * 8 * 8  # all 128 completions of both ranks counted
    ckpt = out / "checkpoints" / "step-2"
    names = {p.name for p in ckpt.iterdir()}
    assert {"model", "state.pt", "rank-0.pt", "rank-1.pt", "deepspeed"} <= names, names
    import torch
    state = torch.load(ckpt / "state.pt", weights_only=False)
    assert state["optimizer"] is None and state["world_size"] == 2 and state["distributed"] == "deepspeed"
    resumed = train(out, *opts, "trainer.resume_from_checkpoint=latest", nproc=2)
    assert [r["step"] for r in resumed] == [0, 1, 2, 3]
    for key in ("reward/mean", "loss", "grad_norm", "tokens", "eval/accuracy"):
        assert resumed[3][key] == full[3][key], (key, resumed[3][key], full[3][key])


# ---------------------------------------------------------------------------------------------- fast checks


def test_world_size_rules():
    from rlpost.config import ConfigError, load_config
    from rlpost.distributed.sharding import _check
    cfg = load_config("configs/tiny/arith_grpo.yaml", ["rollout.prompts_per_step=3"])
    with pytest.raises(ConfigError, match="must divide by the number of learner ranks"):
        _check(cfg, SimpleNamespace(world_size=2, zero3=False, split=True, is_main=True))
    cfg = load_config("configs/tiny/arith_grpo.yaml", ["algo.dynamic_sampling=true"])
    with pytest.raises(ConfigError, match="dynamic_sampling with several learner ranks needs distributed.rollout=split"):
        _check(cfg, SimpleNamespace(world_size=2, zero3=False, split=False, is_main=True))
    _check(cfg, SimpleNamespace(world_size=2, zero3=True, split=True, is_main=True))   # ZeRO-3 refills per rank
    with pytest.raises(ConfigError, match="distributed.backend must be"):
        load_config(None, ["distributed.backend=fsdp"])
    with pytest.raises(ConfigError, match="offload_param needs"):
        load_config(None, ["distributed.backend=deepspeed", "distributed.offload_param=true"])


def test_single_process_runtime_is_the_identity(monkeypatch):
    from rlpost.config import ConfigError, load_config
    from rlpost.distributed import setup
    cfg = load_config("configs/tiny/arith_grpo.yaml")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rt = setup(cfg)
    assert not rt.enabled and rt.is_main and rt.world_size == 1
    assert rt.all_reduce_sum(3.5) == 3.5 and rt.global_count(7) == 7 and rt.done(0) and not rt.done(1)
    trajs = [SimpleNamespace(group_id=i // 2) for i in range(6)]
    assert rt.local_groups(trajs) is trajs
    engine = object()
    assert rt.wrap_engine(engine) is engine
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="distributed.backend is none"):
        setup(cfg)


def test_deepspeed_config_follows_the_run_config():
    from rlpost.config import load_config
    from rlpost.distributed.learner_ops import deepspeed_config
    cfg = load_config("configs/tiny/arith_grpo.yaml", [
        "distributed.backend=deepspeed", "distributed.zero_stage=3", "distributed.offload_optimizer=true",
        "distributed.offload_param=true", "model.dtype=bfloat16",
        "distributed.deepspeed_config={zero_optimization: {reduce_bucket_size: 1000}}"])
    ds = deepspeed_config(cfg, world=4)
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["reduce_bucket_size"] == 1000
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["bf16"]["enabled"] and ds["gradient_clipping"] == 1.0 and ds["train_batch_size"] == 64 * 4
    assert ds["managed_gradient_accumulation"] is False
