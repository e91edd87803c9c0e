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
