"""OBLR-PO's SNR learning-rate controller on one learner step layout; run under torchrun by
tests/distributed/test_snr_controller.py (2 ranks, gloo on CPU) and in-process for the single-process reference.

The case: 16 rows whose completion lengths grow with the row index (1..4 tokens on rows 0-7, 5..8 on rows 8-15),
micro-batches of 2 rows, token-mean loss. Rank r trains rows 8r..8r+7, so the two ranks' 4 + 4 micro-batches are
exactly the single process's 8 (the learner sorts rows by length, and these are already sorted): the controller
sees the same set of micro-batches either way. Two updates, so the second step runs on weights that the first
step's SNR-scaled learning rate moved.
"""
from __future__ import annotations

import sys

import torch

KEYS = ("loss", "grad_norm", "lr", "oblr/snr", "oblr/snr_step", "oblr/signal", "oblr/noise", "oblr/lr_scale")
ROWS, PER_RANK = 16, 8


def case_batch(tok):
    from rlpost.batch import collate
    from rlpost.types import Prompt, Sample, Trajectory
    g = torch.Generator().manual_seed(0)
    prompt = tok("12+34=", add_special_tokens=False)["input_ids"]
    trajs = []
    for i in range(ROWS):
        comp = torch.randint(5, 60, (1 + i // 2,), generator=g).tolist()
        s = Sample(prompt_ids=prompt, completion_ids=comp, logprobs=[-1.0] * len(comp))
        trajs.append(Trajectory(Prompt(0, "p"), group_id=i // 4, samples=[s], final_text="", reward=float(i % 3)))
    batch = collate(trajs, tok.pad_token_id)
    adv = torch.randn(batch.response_mask.shape, generator=torch.Generator().manual_seed(1)) * batch.response_mask
    return batch, adv


def run_case(overrides: list[str], distributed: bool) -> list[dict]:
    """The learner's metrics for each of two updates: this rank's rows when ``distributed``, else all rows."""
    from rlpost.algos.losses import ClipParams
    from rlpost.algos.oblr_po import SNRLRController, SNRParams
    from rlpost.config import load_config
    from rlpost.learner import Learner, LearnerSettings, build_optimizer, build_scheduler
    from rlpost.models.tiny import TinySpec, build_model
    from rlpost.models.tokenizer import build_char_tokenizer
    cfg = load_config("configs/tiny/arith_grpo.yaml", ["optim.micro_batch_size=2", "optim.learning_rate=1e-3",
                                                        "optim.max_grad_norm=1.0", *overrides])
    runtime = None
    if distributed:
        from rlpost.distributed import setup
        runtime = setup(cfg)
    tok = build_char_tokenizer()
    torch.manual_seed(0)
    model = build_model(TinySpec(hidden_size=64, num_heads=2, num_kv_heads=1, intermediate_size=128), len(tok),
                        tok.eos_token_id, tok.pad_token_id).train()
    optimizer = build_optimizer(model, cfg.optim)
    settings = LearnerSettings("grpo", ClipParams(), "token-mean", max_completion_length=8, micro_batch_size=2,
                               max_grad_norm=1.0, shared_prefix=False)
    learner = Learner(model, optimizer, build_scheduler(optimizer, cfg.optim, 2), settings,
                      lr_controller=SNRLRController(SNRParams(beta=0.5, floor=0.0)))
    if runtime is not None:
        runtime.wrap_learner(learner)
    batch, adv = case_batch(tok)
    rows = torch.arange(ROWS)
    if runtime is not None:
        rows = rows[runtime.rank * PER_RANK:(runtime.rank + 1) * PER_RANK]
    sub = batch.select(rows)
    out = []
    for _ in range(2):
        metrics = learner.update(sub, adv[rows], learner.prepare(sub))
        out.append({k: metrics[k] for k in KEYS})
    if runtime is not None:
        runtime.close()
    return out


if __name__ == "__main__":
    import os
    from tests.distributed.multirank import write_rank_result
    steps = run_case(sys.argv[1:], distributed=True)
    write_rank_result({"rank": int(os.environ["RANK"]), "steps": steps})
