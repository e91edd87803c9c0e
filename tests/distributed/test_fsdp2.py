"""The FSDP2 learner (``distributed.backend: fsdp2``, rlpost/distributed/fsdp2.py) on 2 ranks, torchrun + gloo on CPU.

Against one process (``distributed.rollout=replicate``: both runs train on the same samples, as in test_zero.py):
the same loss and grad norm at every step, plain, with LoRA, and with CPU offload and packing (optim.padding_free)
together (one run for both, to keep the suite short); measured over the 3 steps of the
plain run |loss diff| <= 2.6e-9 and grad-norm relative diff <= 3.3e-7 (tolerance 1e-5 / 1e-4, float32 sums in another
order). Split rollouts: a sharded checkpoint (torch.distributed.checkpoint) at step 2 resumes to the uninterrupted
run's step 3 exactly. The gathers (weight sync, saving, generation, LoRA merge, mixed precision) are checked in
fsdp2_worker.py; the config rules below."""
from pathlib import Path

import pytest

from tests.distributed.multirank import run_ranks, train_run

HERE = Path(__file__).resolve().parent
COMMON = ["trainer.max_steps=3", "trainer.eval_steps=0", "data.num_eval=16", "trainer.progress_bar=false",
          "trainer.report_to=[]", "algo.loss_agg=token-mean", "optim.micro_batch_size=24"]
LOSS_ATOL, GRAD_RTOL = 1e-5, 1e-4
VARIANTS = {"plain": [], "lora": ["model.lora.r=8", "optim.learning_rate=1e-3"],
            "cpu_offload_padding_free": ["distributed.offload_param=true", "optim.padding_free=true"]}
FSDP2 = ["distributed.backend=fsdp2"]


def train(out: Path, *overrides, nproc: int = 1) -> list[dict]:
    return train_run("configs/tiny/arith_grpo.yaml", out, [*COMMON, *overrides], nproc=nproc)


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_ranks_match_one_process(variant, tmp_path, tiny_model_path):
    extra = VARIANTS[variant]
    single = train(tmp_path / "single", *[o for o in extra if not o.startswith("distributed.")])
    sharded = train(tmp_path / "fsdp2", *FSDP2, *extra, "distributed.rollout=replicate", nproc=2)
    assert [r["step"] for r in sharded] == [r["step"] for r in single] == [0, 1, 2, 3]
    for ref, got in zip(single[1:], sharded[1:]):
        assert got["reward/mean"] == ref["reward/mean"] and got["tokens"] == ref["tokens"], (variant, ref["step"])
        assert abs(got["loss"] - ref["loss"]) <= LOSS_ATOL, (variant, ref["step"], got["loss"], ref["loss"])
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=GRAD_RTOL), (variant, ref["step"])
    print(variant, "step 1: loss", single[1]["loss"], sharded[1]["loss"], "grad_norm", single[1]["grad_norm"],
          sharded[1]["grad_norm"])
    from transformers import AutoModelForCausalLM   # rank 0 saved the gathered weights, plain transformers loads them
    final = tmp_path / "fsdp2" / "final_model"
    loaded = AutoModelForCausalLM.from_pretrained(final / "merged" if variant == "lora" else final)
    assert loaded.config.model_type == "qwen2"


@pytest.mark.slow
def test_sharded_checkpoint_resumes_exactly(tmp_path):
    """Split rollouts (each rank generates its own 8 prompts); checkpoint at step 2 with fsdp/ (DCP shards of the
    model and AdamW state), rank-<r>.pt and state.pt; the resumed step 3 equals the uninterrupted one exactly."""
    out = tmp_path / "split"
    opts = [*FSDP2, "trainer.save_steps=2"]
    full = train(out, *opts, nproc=2)
    assert [r["step"] for r in full] == [0, 1, 2, 3]
    ckpt = out / "checkpoints" / "step-2"
    names = {p.name for p in ckpt.iterdir()}
    assert {"model", "state.pt", "rank-0.pt", "rank-1.pt", "fsdp"} <= names, names
    assert (ckpt / "fsdp" / ".metadata").exists()
    import torch
    state = torch.load(ckpt / "state.pt", weights_only=False)
    assert state["optimizer"] is None and state["world_size"] == 2 and state["distributed"] == "fsdp2"
    resumed = train(out, *opts, "trainer.resume_from_checkpoint=latest", nproc=2)
    assert [r["step"] for r in resumed] == [0, 1, 2, 3]
    for key in ("reward/mean", "loss", "grad_norm", "tokens", "eval/accuracy"):
        assert resumed[3][key] == full[3][key], (key, resumed[3][key], full[3][key])


@pytest.mark.slow
def test_gathers_on_a_sharded_model(tmp_path):
    results = run_ranks(HERE / "fsdp2_worker.py", 2, tmp_path / "results", timeout=600)
    assert [r["rank"] for r in results] == [0, 1]
    assert [r["generated"] for r in results] == [2, 5]           # different decoding lengths per rank
    assert all(r["merged_tensors"] == 26 for r in results)       # every base weight of the tiny model, merged
    for r in results:   # bf16 compute on float32 master weights: close to float32, not equal
        assert r["mp_logits_dtype"] == "torch.bfloat16" and 0 < r["mp_logits_max_diff"] < 2e-2


# ---------------------------------------------------------------------------------------------- config rules


def test_validate_accepts_fsdp2_and_its_options():
    from rlpost.config import load_config
    from rlpost.resolve import resolve_train
    cfg = load_config("configs/tiny/arith_grpo.yaml", [*FSDP2, "distributed.offload_param=true",
                                                       "distributed.mixed_precision=bfloat16", "model.lora.r=8"])
    resolved = resolve_train(cfg, world_size=2)
    assert resolved["distributed"]["backend"] == "fsdp2" and resolved["distributed"]["mixed_precision"] == "bfloat16"


@pytest.mark.parametrize("overrides, message", [
    (["distributed.offload_optimizer=true"], "set distributed.offload_param=true"),
    (["distributed.mixed_precision=bfloat16", "model.dtype=bfloat16"], "set model.dtype=float32"),
    (["distributed.mixed_precision=fp8"], "mixed_precision must be none, bfloat16 or float16"),
    (["optim.logprob_chunk_size=256"], "chunked LM head runs outside"),
    (["model.lora.r=8", "model.load_in_4bit=true"], "cannot be sharded"),
    (["algo.lr_controller=oblr_snr", "optim.micro_batch_size=32"], "oblr_snr with distributed.backend=fsdp2"),
    (["algo.sync_ref_model=true", "algo.beta=0.01"], "sync_ref_model with distributed.backend=fsdp2"),
])
def test_fsdp2_refusals_name_the_reason(overrides, message):
    import re
    from rlpost.config import ConfigError
    from rlpost.resolve import load_checked
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_checked("configs/tiny/arith_grpo.yaml", [*FSDP2, *overrides])


def test_fsdp2_world_rules():
    from rlpost.config import ConfigError, load_config
    from rlpost.resolve import load_resolved
    # dynamic sampling composes: the rollout pipeline holds the unsharded parameters for a whole batch, so ranks may
    # run different numbers of refill rounds (tests/compose/test_async_distributed.py runs it)
    load_resolved("configs/tiny/arith_grpo.yaml", [*FSDP2, "algo.dynamic_sampling=true"], world_size=2)
    with pytest.raises(ConfigError, match="needs distributed.rollout=split"):
        load_resolved("configs/tiny/arith_grpo.yaml", [*FSDP2, "algo.dynamic_sampling=true",
                                                       "distributed.rollout=replicate"], world_size=2)
    with pytest.raises(ConfigError, match="is an FSDP2 option"):
        load_config("configs/tiny/arith_grpo.yaml", ["distributed.backend=ddp", "distributed.mixed_precision=bfloat16"])


def test_decoder_layers_are_the_models_no_split_modules(random_tiny_model):
    from rlpost.distributed.fsdp2 import decoder_layer_classes
    classes = decoder_layer_classes(random_tiny_model)
    assert classes == {"Qwen2DecoderLayer"}
    layers = [m for m in random_tiny_model.modules() if type(m).__name__ in classes]
    assert len(layers) == random_tiny_model.config.num_hidden_layers
