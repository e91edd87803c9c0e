"""Asynchronous rollouts and dynamic sampling with several learner processes (torchrun, 2 ranks, gloo on CPU).

Split rollouts: every rank's pipeline draws the step's prompts in lockstep when it queues a batch, and its
generation thread generates the rank's share on a model of its own (loaded with each version's full weights:
gathered under ZeRO-3). Results are read from what rank 0 writes (metrics.jsonl, completions.jsonl, the
checkpoint), which cannot interleave.
"""
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
COMMON = ["trainer.progress_bar=false", "trainer.report_to=[]", "trainer.eval_steps=0", "data.num_eval=8",
          "rollout.prompts_per_step=4", "rollout.num_generations=4", "trainer.log_completions=true",
          "trainer.num_completions_to_print=0"]
VALUES = ("reward/mean", "loss", "grad_norm", "tokens", "async/staleness_max")
pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(out: Path, config: str, *overrides) -> tuple[list[dict], list[dict]]:
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_port", str(_port()), "-m", "rlpost.cli", "train", config,
           f"trainer.output_dir={out}", *COMMON, *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    completions = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    return metrics, completions


def rank0_groups(completions) -> dict[int, collections.Counter]:
    """Rank 0's share of each step: group -> trajectories."""
    return {s: collections.Counter(r["group"] for r in completions if r["step"] == s)
            for s in sorted({r["step"] for r in completions})}


@pytest.mark.parametrize("backend", [["distributed.backend=ddp"],
                                     ["distributed.backend=deepspeed", "distributed.zero_stage=2"],
                                     ["distributed.backend=deepspeed", "distributed.zero_stage=3"],
                                     ["distributed.backend=fsdp2"]],
                         ids=["ddp", "zero2", "zero3", "fsdp2"])
def test_async_on_two_ranks_matches_the_schedule_and_keeps_whole_groups(tmp_path, backend):
    """One step off on DDP, ZeRO-2, ZeRO-3 and FSDP2: rank 0 trains its 2 of the 4 groups, whole; step 1 is on-policy
    (version 0 on the generator: sampler and learner log-probs agree), later steps one version old."""
    metrics, completions = train(tmp_path / "run", "configs/tiny/arith_grpo.yaml", *backend,
                                 "rollout.async_level=1", "trainer.max_steps=3")
    steps = [r for r in metrics if r["step"] > 0]
    assert [r["async/staleness_max"] for r in steps] == [0, 1, 1]
    assert steps[0]["rollout/logprob_diff"] < 1e-4 and steps[1]["rollout/logprob_diff"] > 1e-3
    for step, groups in rank0_groups(completions).items():
        assert len(groups) == 2 and set(groups.values()) == {4}, (step, groups)


def test_async_ddp_resumes_exactly(tmp_path):
    """A 2-rank async run killed after its step-2 checkpoint and resumed logs the uninterrupted run's values."""
    overrides = ["distributed.backend=ddp", "rollout.async_level=1", "trainer.max_steps=4", "trainer.save_steps=2",
                 "trainer.save_total_limit=5"]
    full, _ = train(tmp_path / "full", "configs/tiny/arith_grpo.yaml", *overrides)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-2", tmp_path / "killed" / "checkpoints" / "step-2")
    resumed, _ = train(tmp_path / "killed", "configs/tiny/arith_grpo.yaml", *overrides,
                       "trainer.resume_from_checkpoint=latest")
    by_step = {r["step"]: r for r in full}
    assert [r["step"] for r in resumed] == [3, 4]
    for row in resumed:
        for key in VALUES:
            assert by_step[row["step"]][key] == row[key], (row["step"], key)


@pytest.mark.parametrize("backend", [["distributed.backend=deepspeed", "distributed.zero_stage=3"],
                                     ["distributed.backend=fsdp2"]], ids=["zero3", "fsdp2"])
def test_hapo_dynamic_sampling_on_sharded_parameters(tmp_path, backend):
    """HAPO's config (dynamic sampling) on ZeRO-3 and FSDP2: ranks refill different numbers of groups in lockstep
    rounds, while the pipeline holds the gathered parameters for the whole batch."""
    metrics, completions = train(tmp_path / "run", "configs/tiny/arith_hapo.yaml", *backend, "trainer.max_steps=2",
                                 "rollout.num_generations=8")
    steps = [r for r in metrics if r["step"] > 0]
    assert all(r["dynamic_sampling/rounds"] >= 1 and 0 < r["dynamic_sampling/kept_groups"] <= 4 for r in steps)
    for step, groups in rank0_groups(completions).items():
        assert 0 < len(groups) <= 2 and len(set(groups.values())) == 1, (step, groups)
