"""rlpost doctor: one line per check, exit 2 when one fails; every shipped recipe gets through its config check and has
what is missing on this machine reported by name (never a crash)."""
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rlpost.commands import doctor
from rlpost.commands.doctor import Check, estimate_memory, imports_of, reward_columns, run_checks

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


# ---------------------------------------------------------------------------------------------- pieces, by hand

def test_memory_estimate_by_hand():
    """1e9 bf16 parameters (2 bytes), AdamW, micro-batch 4 x 1024 tokens, h = 2048, 24 layers, V = 32000:
    weights 2e9 B; gradients 2e9; optimizer 2 x 2e9 = 4e9; activations 24 x 17 x 4096 x 2048 x 2 = 6,845,104,128;
    logits 2 x 4096 x 32000 x 4 = 1,048,576,000; reference 2e9 (beta > 0)."""
    est = estimate_memory(10**9, 2048, 24, 32000, dtype="bfloat16", micro_batch=4, seq_len=1024, reference=True)
    assert (est.weights, est.gradients, est.optimizer, est.reference) == (2e9, 2e9, 4e9, 2e9)
    assert est.activations == 24 * 17 * 4096 * 2048 * 2 == 6_845_104_128
    assert est.logits == 2 * 4096 * 32000 * 4 == 1_048_576_000
    assert est.learner == 2e9 + 2e9 + 4e9 + 2e9 + 6_845_104_128 + 1_048_576_000
    # gradient checkpointing: 24 layer inputs (N h b each) + one layer in full: 24 x 4096 x 2048 x 2 + 17 x 4096 x 2048 x 2
    ckpt = estimate_memory(10**9, 2048, 24, 32000, dtype="bfloat16", micro_batch=4, seq_len=1024, gradient_checkpointing=True)
    assert ckpt.activations == (24 + 17) * 4096 * 2048 * 2
    # ZeRO-3 on 8 ranks shards weights, gradients and optimizer state: 2e9/8, 2e9/8, 4e9/8; a 256-token logit chunk
    z3 = estimate_memory(10**9, 2048, 24, 32000, dtype="bfloat16", micro_batch=4, seq_len=1024, zero_stage=3,
                         world_size=8, logprob_chunk=256)
    assert (z3.weights, z3.gradients, z3.optimizer, z3.logits) == (2.5e8, 2.5e8, 5e8, 2 * 256 * 32000 * 4)
    # ZeRO-2 keeps whole weights; LoRA with 1e6 adapter parameters: base + adapter weights, adapter-only grads and state
    lora = estimate_memory(10**9, 2048, 24, 32000, dtype="float32", trainable=10**6, micro_batch=1, seq_len=1)
    assert (lora.weights, lora.gradients, lora.optimizer) == (4e9 + 4e6, 4e6, 8e6)


def test_reward_columns_and_imports():
    from rlpost.rewards import REWARDS
    assert reward_columns(REWARDS.get("arithmetic"), {}) == ["answer"]
    assert reward_columns(REWARDS.get("countdown"), {}) == ["nums", "target"]
    assert reward_columns(REWARDS.get("overlong_penalty"), {}) == []           # completion_ids etc. are provided
    assert reward_columns(REWARDS.get("code_exec"), {"tests_column": "unit_tests"}) == ["unit_tests"]
    assert "math_verify" in imports_of(REWARDS.get("math_verify"))
    from rlpost.rewards.dialog import EVAL_METRICS
    assert {"nltk", "sacrebleu", "rouge_score"} <= imports_of(EVAL_METRICS.get("crlhf_score"))   # _require("x", ...)
    assert imports_of(REWARDS.get("format")) == set()                                             # stdlib only


def test_first_rows_reads_only_the_head(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlpost.commands.doctor import first_rows
    from rlpost.data import DataError
    pq.write_table(pa.table({"prompt": [f"q{i}" for i in range(10)], "answer": list(range(10))}), tmp_path / "d.parquet")
    assert first_rows(str(tmp_path / "d.parquet"), "train") == [{"prompt": f"q{i}", "answer": i} for i in range(3)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(DataError, match="bad.jsonl, line 2: not valid JSON"):
        first_rows(str(bad), "train")


def needs_a_missing_package(prompts, completions, **kwargs):
    import rlpost_no_such_package  # noqa: F401  (the doctor finds this import without running it)
    return [0.0] * len(completions)


# ---------------------------------------------------------------------------------------------- whole runs

def test_tiny_config_passes_every_check():
    checks = run_checks(str(ROOT / "configs/tiny/arith_grpo.yaml"), ["trainer.output_dir=runs/doctor_test"])
    names = [c.name for c in checks]
    assert names == ["config", "data.train", "packages", "resources", "model", "template", "disk", "memory"]
    assert all(c.status == "ok" for c in checks), [c.line() for c in checks]
    assert "0.5M parameters" in by_name(checks)["model"].detail


PUBLISHED_PARAMETERS = {   # parameter counts the models' hub pages / safetensors metadata publish
    "Qwen/Qwen2.5-0.5B-Instruct": 494_032_768, "Qwen/Qwen2.5-Math-1.5B": 1_543_714_304,
    "Qwen/Qwen2.5-7B": 7_615_616_512, "Qwen/Qwen2.5-32B-Instruct": 32_763_876_352,
    "Qwen/Qwen3-4B-Base": 4_022_468_096, "Qwen/Qwen3-8B-Base": 8_190_735_360,
    "meta-llama/Meta-Llama-3-8B": 8_030_261_248, "mistralai/Mistral-7B-v0.1": 7_241_732_096, "gpt2": 124_439_808}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_known_configs_count_the_published_parameters(name):
    from rlpost.models.known_configs import known_config
    assert doctor.count_parameters(known_config(name))[0] == PUBLISHED_PARAMETERS[name]


def test_a_hub_model_that_is_not_here_is_sized_from_the_table(monkeypatch):
    """No hub here: Qwen2.5-7B's config cannot load, yet disk and memory are estimated from its architecture fields
    (7,615,616,512 parameters x 2 bytes in bf16 = 14.19 GiB of weights) and say where the size came from."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checks = by_name(run_checks(str(ROOT / "configs/tiny/arith_grpo.yaml"),
                                ["model.name_or_path=Qwen/Qwen2.5-7B", "model.dtype=bfloat16"], device_memory_gb=80))
    assert checks["model"].status == "fail" and "7,615.6M parameters" in checks["model"].detail
    assert "known_configs.py" in checks["model"].detail
    assert checks["memory"].status in ("ok", "warn") and "weights 14.19" in checks["memory"].detail
    assert "parameters from rlpost/models/known_configs.py" in checks["memory"].detail
    assert checks["disk"].status in ("ok", "fail") and "GiB" in checks["disk"].detail


def test_an_unknown_model_that_is_not_here_says_why_memory_is_skipped(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checks = by_name(run_checks(str(ROOT / "configs/tiny/arith_grpo.yaml"), ["model.name_or_path=someone/not-cached-7b"]))
    assert checks["model"].status == "fail"
    for name in ("memory", "disk"):
        assert checks[name].status == "skip"
        assert "'someone/not-cached-7b'" in checks[name].detail and "HF_HUB_OFFLINE" in checks[name].detail
        assert "estimate skipped" in checks[name].detail


def test_a_local_config_whose_tokenizer_fails_is_still_sized(tmp_path, monkeypatch):
    """A folder with only config.json whose tokenizer does not load: the size comes from the config alone."""
    from rlpost.models import loading
    from rlpost.models.known_configs import known_config
    known_config("Qwen/Qwen2.5-0.5B-Instruct").save_pretrained(tmp_path)

    def no_tokenizer(path, model_cfg):
        raise OSError(f"no tokenizer files in {path}")
    monkeypatch.setattr(loading, "load_tokenizer", no_tokenizer)
    checks = by_name(run_checks(str(ROOT / "configs/tiny/arith_grpo.yaml"), [f"model.name_or_path={tmp_path}"],
                                device_memory_gb=80))
    assert checks["model"].status == "fail" and "sized from its config.json alone, 494.0M parameters" in \
        checks["model"].detail
    assert checks["memory"].status == "ok" and "parameters from its config.json alone" in checks["memory"].detail


def test_missing_file_column_package_and_bad_tests_are_named(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "2+2", "solution": "4"}) + "\n")
    checks = by_name(run_checks(str(ROOT / "configs/tiny/arith_grpo.yaml"), [
        "data.task=null", f"data.train_path={rows}", f"data.eval_path={tmp_path / 'absent.jsonl'}"]))
    assert checks["data.train"].status == "fail"
    assert "no column 'answer' (data.answer_column)" in checks["data.train"].detail
    assert checks["data.eval"].status == "fail" and "absent.jsonl (data.eval_path): no such file" in checks["data.eval"].detail

    checks = by_name(run_checks(str(ROOT / "configs/tiny/arith_grpo.yaml"),
                                ["rewards=[{name: test_doctor:needs_a_missing_package}]"]))
    assert checks["packages"].status == "fail"
    assert "rlpost_no_such_package (needed by rewards.0 test_doctor:needs_a_missing_package" in checks["packages"].detail

    bad = tmp_path / "code.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "tests": [1, 2]}) + "\n")
    checks = by_name(run_checks(str(ROOT / "configs/tiny/code_exec.yaml"), [f"data.train_path={bad}", f"data.eval_path={bad}"]))
    assert checks["data.train"].status == "fail" and "rewards.0 (code_exec): row 0: tests must be" in checks["data.train"].detail


def test_bad_config_stops_at_the_config_check():
    checks = run_checks(str(ROOT / "configs/tiny/arith_grpo.yaml"), ["algo.loss=no_such_loss"])
    assert [(c.name, c.status) for c in checks] == [("config", "fail")]
    assert "algo.loss" in checks[0].detail


def test_disk_and_memory_fail_when_they_do_not_fit(monkeypatch):
    import shutil
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    checks = by_name(run_checks(str(ROOT / "configs/tiny/arith_grpo.yaml"), ["optim.micro_batch_size=64"],
                                device_memory_gb=0.01))
    assert checks["disk"].status == "fail" and "0.0 GiB free" in checks["disk"].detail
    assert checks["memory"].status == "fail" and "against 0.01 GiB (--device-memory-gb)" in checks["memory"].detail


class HealthServer:
    def __init__(self, info: dict):
        body = json.dumps(info).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200 if self.path == "/health" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_workers_must_serve_the_configured_model():
    from rlpost.models.loading import resolve_model_path
    from rlpost.config import ModelConfig
    tiny = resolve_model_path(ModelConfig(name_or_path="tiny:qwen2:arithmetic"))
    same, fresh_other, used = (HealthServer({"status": "ok", "model": tiny, "weights_version": 0}),
                               HealthServer({"status": "ok", "model": "Qwen/Qwen2.5-7B", "weights_version": 0}),
                               HealthServer({"status": "ok", "model": tiny, "weights_version": 3}))
    try:
        urls = f"rollout.server_urls=[{same.url},{fresh_other.url},{used.url},http://127.0.0.1:9]"
        checks = [c for c in run_checks(str(ROOT / "configs/tiny/arith_grpo.yaml"), ["rollout.engine=vllm_server", urls])
                  if c.name == "workers"]
    finally:
        for server in (same, fresh_other, used):
            server.close()
    assert [c.status for c in checks] == ["ok", "fail", "warn", "fail"]
    assert "serves 'Qwen/Qwen2.5-7B', the config trains 'tiny:qwen2:arithmetic'" in checks[1].detail
    assert "after 3 weight updates" in checks[2].detail and "does not answer" in checks[3].detail


def test_probe_compares_sampler_and_learner_logprobs():
    checks = by_name(run_checks(str(ROOT / "configs/tiny/arith_grpo.yaml"), ["data.num_eval=4"], probe=True))
    assert checks["probe"].status == "ok", checks["probe"].line()
    assert "4 completions" in checks["probe"].detail


RECIPES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").glob("*/*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_passes_its_config_check_and_names_what_is_missing(recipe, monkeypatch):
    monkeypatch.chdir(ROOT)   # recipes name data files relative to the repository root
    checks = run_checks(recipe)
    assert checks[0].name == "config" and checks[0].status == "ok", checks[0].line()
    for check in checks:
        assert check.status in ("ok", "warn", "fail", "skip") and check.detail
        if check.status == "fail" and check.name.startswith("data."):
            assert ("no such file" in check.detail or "cannot be read here" in check.detail), check.line()
        if check.status == "fail" and check.name == "packages":
            assert "pip install" in check.detail and "needed by" in check.detail


def test_cli_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, "-m", "rlpost.cli", "doctor", "configs/tiny/arith_grpo.yaml",
                         f"trainer.output_dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0] == "# rlpost doctor configs/tiny/arith_grpo.yaml" and lines[-1] == "# all checks passed"
    assert [line.split()[0] for line in lines[1:-1]] == ["ok"] * 8
    bad = subprocess.run([sys.executable, "-m", "rlpost.cli", "doctor", "configs/tiny/arith_grpo.yaml", "data.task=null",
                          "data.train_path=data/not_here.jsonl", "data.eval_path=data/not_here.jsonl"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2
    assert "FAIL  data.train data/not_here.jsonl (data.train_path): no such file" in bad.stdout
    assert bad.stdout.splitlines()[-1] == "# FAILED: data.train, data.eval"


def test_doctor_module_registers_as_a_subcommand():
    from rlpost.cli import build_parser
    args = build_parser().parse_args(["doctor", "x.yaml", "a=1", "--probe", "--world-size", "4"])
    assert args.func is doctor.cmd_doctor and args.overrides == ["a=1"] and args.probe and args.world_size == 4
