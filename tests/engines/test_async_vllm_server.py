"""Async rollouts (rollout.async_level=1) on vLLM: one real ``rlpost serve`` worker (weights are pushed by the
generation thread with the version handshake while the learner updates) and the colocated engine, driven from
the generation thread. Every batch after the first is one version old."""
import json

import pytest
import requests as http

pytest.importorskip("vllm")

from rlpost.cli import main  # noqa: E402
from rlpost.config import ModelConfig  # noqa: E402
from rlpost.engines.vllm_server import start_workers, stop_workers  # noqa: E402
from rlpost.models.loading import load_model  # noqa: E402
from rlpost.serving.weights import weights_fingerprint  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
ENGINE_ARGS = ["--dtype", "float32", "--gpu-memory-utilization", "0.2", "--max-model-len", "256",
               "--max-lora-rank", "8", "--max-loras", "2"]   # LoRA on for the adapter-sync run


@pytest.fixture(scope="module")
def worker(tiny_model_path, tmp_path_factory):
    handles = start_workers(str(tiny_model_path), 1, engine_args=ENGINE_ARGS, timeout_s=600,
                            log_dir=str(tmp_path_factory.mktemp("worker-logs")))
    yield handles[0]
    stop_workers(handles, timeout_s=20)


def test_one_step_off_on_a_worker(worker, tmp_path):
    def health():
        return http.get(f"{worker.url}/health", timeout=10).json()
    before = health()["weights_version"]
    out = tmp_path / "run"
    code = main(["train", "configs/tiny/arith_grpo.yaml", f"trainer.output_dir={out}", "trainer.progress_bar=false",
                 "trainer.report_to=[]", "trainer.save_steps=0", "trainer.max_steps=3", "trainer.eval_steps=3",
                 "data.num_eval=16", "rollout.prompts_per_step=8", "rollout.engine=vllm_server",
                 f"rollout.server_urls=[{worker.url}]", "rollout.async_level=1", "rollout.max_model_len=256"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["async/staleness_max"] for r in rows[1:]] == [0, 1, 1]
    assert rows[1]["rollout/logprob_diff"] < 1e-4              # version 0 on the worker = the learner's weights
    assert "eval/accuracy" in rows[0] and "eval/accuracy" in rows[-1]
    # pushes: version 0 (batches 0, 1, by the generation thread before the first), the two evaluations'
    # snapshots, version 1 (batch 2) = 4
    after = health()
    assert after["weights_version"] == before + 4
    final = load_model(str(out / "final_model"), ModelConfig(), "cpu")
    assert after["weights_fingerprint"] == weights_fingerprint(list(final.named_parameters()))  # the last eval's


def test_one_step_off_with_lora_adapter_sync_on_a_worker(worker, tmp_path, tiny_model_path):
    """model.lora with adapter sync, one step off: the worker receives adapters (policy-v0, policy-v1 ...), keeps
    the last two live, and generates each batch with its version's adapter: step 1's samples (version 0, a
    non-zero adapter) match the learner's log-probs (the worker's base was replaced by the previous test's full
    weights, so the run first sends the learner's base once). Then the broadcast transport sends one adapter."""
    import yaml

    from rlpost.engines.vllm_server import VLLMServerEngine
    from rlpost.models.lora_sync import adapter_weights, read_adapter
    out = tmp_path / "lora"
    code = main(["train", "configs/tiny/arith_grpo.yaml", f"trainer.output_dir={out}", "trainer.progress_bar=false",
                 "trainer.report_to=[]", "trainer.save_steps=0", "trainer.max_steps=3", "trainer.eval_steps=3",
                 "data.num_eval=8", "rollout.prompts_per_step=4", "rollout.engine=vllm_server",
                 f"rollout.server_urls=[{worker.url}]", "rollout.async_level=1", "rollout.max_model_len=256",
                 "model.lora.r=8", "model.lora.init_lora_weights=false", "model.lora.save_merged=false"])
    assert code == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["lora"]["sync"] == "adapter"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["async/staleness_max"] for r in rows[1:]] == [0, 1, 1]
    assert rows[1]["rollout/logprob_diff"] < 1e-4              # the v0 adapter (B != 0) is what sampled
    health = http.get(f"{worker.url}/health", timeout=10).json()
    assert health["live_adapters"] == ["policy-v1", "policy-v3-eval"]   # step 3 ran on v1; then the final eval and health["adapter"] == "policy-v3-eval"
    final = read_adapter(out / "final_model", "final")
    assert health["weights_fingerprint"] == weights_fingerprint(final.tensors)   # the last eval's adapter

    from peft import LoraConfig, get_peft_model
    policy = get_peft_model(load_model(str(tiny_model_path), ModelConfig(), "cpu"),
                            LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    client = VLLMServerEngine([worker.url], None, weight_sync="dist", timeout_s=120, max_lora_rank=8, max_loras=2)
    try:
        client.load_adapter(adapter_weights(policy, "by-broadcast"))
        assert http.get(f"{worker.url}/health", timeout=10).json()["adapter"] == "by-broadcast"
        assert client.use_adapter("by-broadcast")
        assert not client.use_adapter("policy-v3-eval")   # live on the worker, but loaded by the other run
    finally:
        client.close()


def test_one_step_off_on_the_colocated_engine(tmp_path):
    out = tmp_path / "colocated"
    code = main(["train", "configs/tiny/arith_grpo.yaml", f"trainer.output_dir={out}", "trainer.progress_bar=false",
                 "trainer.report_to=[]", "trainer.save_steps=0", "trainer.max_steps=3", "trainer.eval_steps=3",
                 "data.num_eval=16", "rollout.prompts_per_step=8", "rollout.engine=vllm", "rollout.async_level=1",
                 "rollout.gpu_memory_utilization=0.2", "rollout.max_model_len=256"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["async/staleness_max"] for r in rows[1:]] == [0, 1, 1]
    assert rows[1]["rollout/logprob_diff"] < 1e-4              # version 0 in the engine = the learner's weights
    assert rows[2]["rollout/logprob_diff"] > 1e-3              # version 0 samples, the learner at version 1
    assert "eval/accuracy" in rows[0] and "eval/accuracy" in rows[-1]


MULTI_TURN = ["configs/tiny/guess_number_feedback.yaml", "trainer.progress_bar=false", "trainer.report_to=[]",
              "trainer.save_steps=0", "trainer.max_steps=3", "trainer.eval_steps=0", "data.num_eval=8",
              "rollout.prompts_per_step=4", "rollout.num_generations=4", "rollout.async_level=1",
              "rollout.max_model_len=256", "trainer.log_completions=true", "trainer.num_completions_to_print=0"]


def _multi_turn_checks(out):
    """One step off: staleness 0, 1, 1; step 1's episodes were sampled by version 0 (sampler and learner
    log-probs agree on the trained tokens); every step trains 4 whole groups of 4 episodes."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["async/staleness_max"] for r in rows[1:]] == [0, 1, 1]
    assert rows[1]["rollout/logprob_diff"] < 1e-4
    completions = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    for step in (1, 2, 3):
        groups = [r["group"] for r in completions if r["step"] == step]
        assert len(set(groups)) == 4 and all(groups.count(g) == 4 for g in groups), (step, groups)
    assert any(r.get("conversation") and len(r["conversation"]) > 3 for r in completions)   # several turns


def test_async_multi_turn_on_a_worker(worker, tmp_path):
    out = tmp_path / "multi_turn_server"
    assert main(["train", *MULTI_TURN, f"trainer.output_dir={out}", "rollout.engine=vllm_server",
                 f"rollout.server_urls=[{worker.url}]"]) == 0
    _multi_turn_checks(out)


def test_async_multi_turn_on_the_colocated_engine(tmp_path):
    out = tmp_path / "multi_turn_colocated"
    assert main(["train", *MULTI_TURN, f"trainer.output_dir={out}", "rollout.engine=vllm",
                 "rollout.gpu_memory_utilization=0.2"]) == 0
    _multi_turn_checks(out)


def test_async_two_ranks_with_a_worker_driver_generates_for_all(worker, tmp_path):
    """DDP on 2 ranks, one step off, dynamic sampling, a shared worker: rank 0 pushes each version, generates and
    refills the whole step; every rank trains its contiguous half of the kept groups (rank 0's half is whole)."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "driver"
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "rlpost.cli", "train", "configs/tiny/arith_grpo.yaml", f"trainer.output_dir={out}",
           "distributed.backend=ddp", "rollout.engine=vllm_server", f"rollout.server_urls=[{worker.url}]",
           "rollout.async_level=1", "rollout.max_model_len=256", "algo.dynamic_sampling=true", "algo.loss=dapo",
           "rollout.prompts_per_step=4", "rollout.num_generations=4", "trainer.max_steps=3", "trainer.eval_steps=0",
           "data.num_eval=8", "trainer.progress_bar=false", "trainer.report_to=[]", "trainer.save_steps=0",
           "trainer.log_completions=true", "trainer.num_completions_to_print=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["async/staleness_max"] for r in rows[1:]] == [0, 1, 1]
    assert all(r["dynamic_sampling/rounds"] >= 1 and r["dynamic_sampling/kept_groups"] <= 4 for r in rows[1:])
    completions = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    for step in (1, 2, 3):
        groups = [r["group"] for r in completions if r["step"] == step]
        assert 0 < len(set(groups)) <= 2 and all(groups.count(g) == 4 for g in groups), (step, groups)
