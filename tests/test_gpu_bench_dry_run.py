"""scripts/gpu_bench.sh --dry-run: the GPU benchmark's CPU mode (tiny model, transformers generation on both
sides, TRL's GRPOTrainer against rlpost) runs end to end and prints the comparison table."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_bench_dry_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([str(ROOT / "scripts" / "gpu_bench.sh"), "--dry-run", "--out", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for label in ("step time (s)", "tokens / s", "learner MFU", "peak RSS (GiB)", "target (rlpost faster"):
        assert label in proc.stdout, label
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    for fw in ("rlpost", "trl"):
        r = results[fw]
        assert r["measured_steps"] == 2 and r["step_time_s"] > 0 and r["tokens_per_s"] > 0 and r["learner_mfu"] > 0
    # both sides processed the same work: 4 prompts x 4 completions of 12 + <= 12 tokens
    assert 16 * 12 < results["rlpost"]["tokens_per_step"] <= 16 * 24
    assert 16 * 12 < results["trl"]["tokens_per_step"] <= 16 * 24


def test_gpu_settings_are_a_valid_rlpost_config(tmp_path):
    """The GPU run's rlpost settings (vLLM colocated, bf16, chunked log-probs) pass config validation here."""
    import sys
    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_bench
    from rlpost.config import load_config
    args = gpu_bench.parse_args(["--out", str(tmp_path)])
    assets = {"model": str(tmp_path / "model"), "prompts": str(tmp_path / "p.jsonl"), "params": 494_032_768}
    cfg = load_config(None, gpu_bench.rlpost_overrides(args, assets, tmp_path / "run"))
    assert cfg.rollout.engine == "vllm" and cfg.model.dtype == "bfloat16" and not cfg.rollout.enforce_eager
    assert cfg.optim.logprob_chunk_size == 2048 and cfg.rollout.prompts_per_step * cfg.rollout.num_generations == 256
    assert (args.warmup, args.steps, args.worker_timeout) == (2, 6, 270.0)
    assert gpu_bench.QWEN25_05B["hidden_size"] == 896 and gpu_bench.QWEN25_05B["vocab_size"] == 151936
