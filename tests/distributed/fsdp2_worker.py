"""Run by tests/distributed/test_fsdp2.py under torchrun (2 ranks, gloo on CPU): FSDP2's gathers on a sharded tiny
model, plain and LoRA, against an unsharded copy with the same weights. Each rank writes its result file
(rank-<r>.json, tests/distributed/multirank.py); any failed check raises, so no file is written."""
import copy

import torch

from rlpost.config import load_config
from rlpost.distributed import setup
from rlpost.distributed.weight_sync import named_parameters_for_sync
from rlpost.learner import Learner, LearnerSettings, build_optimizer, build_scheduler
from rlpost.algos.losses import ClipParams
from rlpost.models.lora import apply_lora, merged_state_dict
from rlpost.models.tiny import TinySpec, build_model
from rlpost.models.tokenizer import build_char_tokenizer
from tests.distributed.multirank import write_rank_result

tok = build_char_tokenizer()
ids = torch.tensor([tok("12+34=", add_special_tokens=False)["input_ids"]])


def sharded(cfg, lora: bool):
    torch.manual_seed(0)
    model = build_model(TinySpec(hidden_size=64, num_heads=2, num_kv_heads=1, intermediate_size=128), len(tok),
                        tok.eos_token_id, tok.pad_token_id)
    if lora:
        model = apply_lora(model, cfg.model)
        with torch.no_grad():  # B = 0 at init would make the merge trivial
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
    plain = copy.deepcopy(model).eval()
    optimizer = build_optimizer(model, cfg.optim)
    learner = Learner(model, optimizer, build_scheduler(optimizer, cfg.optim, 1),
                      LearnerSettings("grpo", ClipParams(), "token-mean", max_completion_length=8))
    runtime.wrap_learner(learner)
    return model, plain, learner


def expect_equal(got: dict, want: dict, what: str) -> None:
    assert set(got) == set(want), (what, sorted(set(got) ^ set(want))[:5])
    for name, t in want.items():
        assert not hasattr(got[name], "full_tensor"), (what, name, "still a DTensor")
        assert torch.equal(got[name].cpu(), t.detach().cpu()), (what, name)


cfg = load_config("configs/tiny/arith_grpo.yaml", ["distributed.backend=fsdp2", "model.lora.r=4"])
runtime = setup(cfg)
rank = runtime.rank
result = {"rank": rank}

# plain model: every parameter a shard; sync and saving read the full weights
model, plain, learner = sharded(cfg, lora=False)
assert all(hasattr(p, "full_tensor") for p in model.parameters())
assert sum(p.to_local().numel() for p in model.parameters()) < sum(p.numel() for p in plain.parameters())
assert all(id(p) in {id(q) for q in model.parameters()} for g in learner.optimizer.param_groups for p in g["params"])
expect_equal(dict(named_parameters_for_sync(model, runtime)), dict(plain.named_parameters()), "sync")
state = runtime.full_state_dict(model)
if rank == 0:
    # parameters once each (the tied lm_head.weight is the embedding's, as save_pretrained expects) + buffers
    persistent = {k: v for k, v in plain.state_dict(keep_vars=True).items() if not isinstance(v, torch.nn.Parameter)}
    expect_equal(state, {**dict(plain.named_parameters()), **persistent}, "full_state_dict")
else:
    assert state is None
# generation with the learner's model: ranks run different numbers of forwards, no collective inside
with torch.no_grad():
    reference = plain(ids).logits
    with runtime.full_parameters():
        assert torch.allclose(model(ids).logits, reference, atol=1e-6)
        out = model.generate(ids, max_new_tokens=2 + 3 * rank, do_sample=False, pad_token_id=tok.pad_token_id)
    assert all(hasattr(p, "full_tensor") for p in model.parameters())   # sharded again
    assert torch.allclose(model(ids).logits, reference, atol=1e-6)       # and a sharded forward still works
result["generated"] = out.shape[1] - ids.shape[1]

# LoRA: the merged weights for sync (each adapted layer's unit unsharded while it merges) and for saving
model, plain, learner = sharded(cfg, lora=True)
trainable = [n for n, p in model.named_parameters() if p.requires_grad]
assert trainable and all("lora_" in n for n in trainable)
want = merged_state_dict(plain)
expect_equal({n: t for n, t in named_parameters_for_sync(model, runtime)}, want, "lora sync")
result["merged_tensors"] = len(want)

# mixed precision: bf16 compute, float32 parameters kept
mp = load_config("configs/tiny/arith_grpo.yaml", ["distributed.backend=fsdp2", "distributed.mixed_precision=bfloat16"])
runtime.cfg = mp  # the sharding reads the runtime's config
model, plain, learner = sharded(mp, lora=False)
out = model(ids, labels=ids)
out.loss.backward()
assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
result["mp_logits_dtype"] = str(out.logits.dtype)
result["mp_logits_max_diff"] = (out.logits.float() - plain(ids).logits).abs().max().item()
runtime.close()
write_rank_result(result)
