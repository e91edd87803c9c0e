"""rlpost: RL post-training for Hugging Face language models (see README.md)."""
import os as _os

# The capped float path (ATEN_CPU_CAPABILITY=default: generic kernels, how rlpost checks that a result holds on
# another CPU) meets a torch 2.13 inductor bug: with no vector ISA selected, its C++ code generator still emits
# at::vec reductions for int64 and the compile fails (vLLM's sampler compiles `batched_count_greater_than`). On that
# path alone, torch.compile becomes a no-op (eager), which is also what rounds like a CPU without vector units.
# TorchDynamo reads the variable when a function is decorated, so it must be set before vLLM is imported.
if _os.environ.get("ATEN_CPU_CAPABILITY") == "default":
    _os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
