"""Run by tests/distributed/test_deepspeed_internals.py under torchrun (2 ranks, gloo on CPU): the private
DeepSpeed calls of rlpost/distributed/deepspeed_internals.py on a real ZeRO-3 engine built with rlpost's own
DeepSpeed config. Each check is an assert; at the end each rank writes its result file (rank-<r>.json,
tests/distributed/multirank.py)."""
import copy
import datetime

import deepspeed
import torch

from rlpost.config import load_config
from rlpost.distributed.deepspeed_internals import gathered_without_hooks, is_zero3_partitioned
from rlpost.distributed.learner_ops import deepspeed_config
from rlpost.models.tiny import TinySpec, build_model
from rlpost.models.tokenizer import build_char_tokenizer
from tests.distributed.multirank import write_rank_result

# a collective that one rank never joins (hooks left in place) fails after a minute instead of hanging
deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False,
                           timeout=datetime.timedelta(seconds=60))
rank = torch.distributed.get_rank()
cfg = load_config("configs/tiny/arith_grpo.yaml", ["distributed.backend=deepspeed", "distributed.zero_stage=3",
                                                    "optim.micro_batch_size=1"])
tok = build_char_tokenizer()
torch.manual_seed(0)
model = build_model(TinySpec(hidden_size=64, num_heads=2, num_kv_heads=1, intermediate_size=64), len(tok),
                    tok.eos_token_id, tok.pad_token_id)
plain = copy.deepcopy(model).eval()   # the same weights, never partitioned
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
                                  config=deepspeed_config(cfg, world=2), dist_init_required=False)
engine.eval()
offload = engine.optimizer.parameter_offload
ids = torch.tensor([tok("12+34=", add_special_tokens=False)["input_ids"]])
params = list(engine.module.parameters())

# partitioned: every rank holds a shard, the full tensor is fetched by DeepSpeed's hooks in forward
assert all(is_zero3_partitioned(p) for p in params) and not any(is_zero3_partitioned(p) for p in plain.parameters())
assert all(p.data.numel() == 0 for p in params) and offload.forward_hooks
with torch.no_grad():
    reference = plain(ids).logits
    assert torch.equal(engine.module(ids).logits, reference)

# gathered without hooks: full tensors, plain forwards, and ranks may run different numbers of them
with gathered_without_hooks(engine), torch.no_grad():
    assert all(p.data.shape == p.ds_shape for p in params)
    assert offload.forward_hooks == [] and offload.backward_hooks == []
    hook_free_forwards = 0
    for _ in range(1 + 2 * rank):  # rank 1 runs three forwards, rank 0 one: no collective in any of them
        assert torch.equal(engine.module(ids).logits, reference)
        hook_free_forwards += 1
    out = engine.module.generate(ids, max_new_tokens=3 + rank, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 3 + rank or out[0, -1] == tok.eos_token_id

# afterwards: partitioned again with the hooks back, and training works as before
assert all(p.data.numel() == 0 for p in params) and offload.forward_hooks and offload.backward_hooks
engine.train()
loss = engine(ids, labels=ids).loss
engine.backward(loss)
engine.step()
with torch.no_grad():
    assert not torch.equal(engine.module(ids).logits, reference)  # the step changed the (gathered) weights
engine.destroy()
write_rank_result({"rank": rank, "ok": True, "hook_free_forwards": hook_free_forwards})
