"""Features that compose: every asynchronous pair a practitioner runs validates, and runs for a few steps through
the one rollout pipeline (rlpost/rollout/) on the tiny models (hf engine; vLLM pairs in
tests/engines/test_async_vllm_server.py, several learner ranks in tests/compose/test_async_distributed.py).

Each run checks what the composition could break: no group is lost or duplicated (completions.jsonl: every step
trains exactly its groups, each complete), the staleness schedule (``async/staleness_max``: 0, then k), the
lag of the rollout state a batch read (``async/state_lag``), and where the synchronous run resumes exactly, that
the asynchronous one does too (a run killed after its checkpoint and resumed logs the uninterrupted run's values).
"""
import collections
import json
import shutil

import pytest

from rlpost.cli import main

GRPO = "configs/tiny/arith_grpo.yaml"
TOOL = "configs/tiny/arith_tool_calculator.yaml"
HAPO = "configs/tiny/arith_hapo.yaml"
GAIN = "configs/tiny/arith_hapo_gainrl_oblr.yaml"
APR = "recipes/apr/tiny.yaml"
A2FM = "recipes/a2fm/tiny.yaml"
QUIET = ["trainer.progress_bar=false", "trainer.report_to=[]", "trainer.eval_steps=0", "trainer.log_completions=true",
         "trainer.num_completions_to_print=0"]
SMALL = ["rollout.prompts_per_step=4", "rollout.num_generations=4", "data.num_eval=8"]
# the workflows' own sizes, kept small: APR trees of at most 4 threads of 4 calls, 256 tokens a call
APR_SMALL = ["rollout.prompts_per_step=2", "data.num_eval=4", "rollout.max_completion_length=256",
             "rollout.workflow={name: apr, max_depth: 1, max_threads: 4, max_calls_per_thread: 4, max_context: 256}"]
VALUES = ("reward/mean", "loss", "grad_norm", "tokens", "completion/mean_length", "async/staleness_max",
          "async/state_lag")


# ---------------------------------------------------------------------------------------------- validate

PAIRS = {   # the pairs that were refused before the pipeline (issue "features that compose")
    "async x multi_turn": (TOOL, []),
    "async x dynamic sampling (HAPO)": (HAPO, []),
    "async x dynamic sampling (DAPO-style)": (GRPO, ["algo.loss=dapo", "algo.dynamic_sampling=true"]),
    "async x LoRA on hf": (GRPO, ["model.lora.r=8"]),
    "async x LoRA adapter sync on vllm": (GRPO, ["model.lora.r=8", "model.lora.sync=adapter", "rollout.engine=vllm"]),
    "async x LoRA adapter sync on vllm_server": (GRPO, ["model.lora.r=8", "model.lora.sync=adapter",
                                                        "rollout.engine=vllm_server",
                                                        "rollout.server_urls=[http://127.0.0.1:9]"]),
    "async x GAIN-RL sampler + HAPO temperature": (GAIN, []),
    "async x apr": (APR, []),
    "async x a2fm": (A2FM, []),
    "async x vllm_server": (GRPO, ["rollout.engine=vllm_server", "rollout.server_urls=[http://127.0.0.1:9]"]),
}
WORLD_PAIRS = {
    "async x DDP": ["distributed.backend=ddp"],
    "async x ZeRO-2": ["distributed.backend=deepspeed", "distributed.zero_stage=2"],
    "async x ZeRO-3": ["distributed.backend=deepspeed", "distributed.zero_stage=3"],
    "async x FSDP2": ["distributed.backend=fsdp2"],
    "async x DDP x LoRA adapter sync (vllm_server driver)": [
        "distributed.backend=ddp", "model.lora.r=8", "model.lora.sync=adapter", "rollout.engine=vllm_server",
        "rollout.server_urls=[http://127.0.0.1:9]"],
    "async x ZeRO-3 x dynamic sampling (vllm_server driver)": [
        "distributed.backend=deepspeed", "distributed.zero_stage=3", "algo.dynamic_sampling=true",
        "rollout.engine=vllm_server", "rollout.server_urls=[http://127.0.0.1:9]"],
}


@pytest.mark.parametrize("name", PAIRS)
def test_every_async_pair_validates(name, capsys):
    config, overrides = PAIRS[name]
    assert main(["validate", config, "rollout.async_level=1", *overrides]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("name", WORLD_PAIRS)
def test_every_async_pair_validates_on_several_ranks(name, capsys):
    code = main(["validate", GRPO, "rollout.async_level=1", *WORLD_PAIRS[name], "--world-size", "2"])
    assert code == 0, capsys.readouterr().err


def test_hapo_with_zero3_validates(capsys):
    """Dynamic sampling on ZeRO-3: the pipeline gathers the parameters once per batch, so ranks may generate
    different numbers of refill rounds (each refill round is drawn in lockstep)."""
    code = main(["validate", HAPO, "distributed.backend=deepspeed", "distributed.zero_stage=3", "--world-size", "2"])
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize("overrides, reason", [
    (["rollout.engine=vllm", "rollout.enable_sleep_mode=true"], "generates during the learner's update"),
    (["distributed.backend=ddp", "algo.dynamic_sampling=true"], "needs rollout.engine=vllm_server"),
    (["distributed.backend=fsdp2", "model.lora.r=8", "model.lora.sync=adapter", "rollout.engine=vllm"],
     "adapter sync does not gather it"),
    (["distributed.backend=deepspeed", "distributed.zero_stage=3", "model.lora.r=8", "model.lora.sync=adapter",
      "rollout.engine=vllm"], "adapter sync does not gather it"),
])
def test_what_stays_refused_says_why_and_what_works(overrides, reason, capsys):
    assert main(["validate", GRPO, "rollout.async_level=1", *overrides, "--world-size", "2"]) == 2
    err = capsys.readouterr().err
    assert reason in err and ("set " in err or "needs " in err), err


# ---------------------------------------------------------------------------------------------- runs

def run(out, config, *overrides) -> tuple[list[dict], list[dict]]:
    """Train; the metrics rows and the completions rows."""
    assert main(["train", config, f"trainer.output_dir={out}", *QUIET, *overrides]) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    completions = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    return metrics, completions


def assert_whole_groups(completions, groups_per_step: int, exact: bool = True) -> None:
    """Every step trains ``groups_per_step`` distinct groups (at most, with dynamic sampling), each complete: as
    many trajectories as every other group of the step (a lost or repeated trajectory changes its group's size)."""
    for step in sorted({r["step"] for r in completions}):
        rows = [r for r in completions if r["step"] == step]
        sizes = collections.Counter(r["group"] for r in rows)
        assert (len(sizes) == groups_per_step) if exact else (0 < len(sizes) <= groups_per_step), (step, sizes)
        assert len(set(sizes.values())) == 1, (step, sizes)


def assert_schedule(metrics, level: int) -> None:
    steps = [r for r in metrics if r["step"] > 0]
    assert [r["async/staleness_max"] for r in steps] == [min(t, level) for t in range(len(steps))]
    assert all(r["async/state_lag"] == min(t, level) for t, r in enumerate(steps))


def resume_after_kill(tmp_path, config, overrides, kill_step: int):
    """Run to the end saving every ``kill_step`` steps; copy the checkpoint of ``kill_step`` into a fresh folder
    (a run killed right after it) and resume there. Returns (uninterrupted rows, resumed rows)."""
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    full, _ = run(full_dir, config, *overrides, f"trainer.save_steps={kill_step}", "trainer.save_total_limit=5")
    shutil.copytree(full_dir / "checkpoints" / f"step-{kill_step}", killed_dir / "checkpoints" / f"step-{kill_step}")
    resumed, _ = run(killed_dir, config, *overrides, f"trainer.save_steps={kill_step}",
                     "trainer.resume_from_checkpoint=latest")
    return full, resumed


def assert_same_values(full, resumed) -> None:
    by_step = {r["step"]: r for r in full}
    assert resumed and any(r.get("grad_norm", 0) > 0 for r in resumed)
    for row in resumed:
        for key in VALUES:
            assert by_step[row["step"]].get(key) == row.get(key), (row["step"], key)


@pytest.mark.slow
def test_async_multi_turn_runs_and_resumes_exactly(tmp_path):
    """The calculator environment (multi_turn, tool calls) one step off: whole groups, the schedule, and a resume
    from a killed run's step-2 checkpoint (the queued batch of step 2 was generated on version 1 and saved;
    step 3's is regenerated on version 2) that logs the uninterrupted run's values."""
    overrides = ["rollout.async_level=1", "trainer.max_steps=4", *SMALL]
    full, resumed = resume_after_kill(tmp_path, TOOL, overrides, kill_step=2)
    completions = [json.loads(line) for line in (tmp_path / "full" / "completions.jsonl").read_text().splitlines()]
    assert_whole_groups(completions, 4)
    assert_schedule(full, 1)
    assert [r["step"] for r in resumed] == [3, 4]
    assert_same_values(full, resumed)


@pytest.mark.slow
def test_async_dynamic_sampling_is_a_streaming_filter_that_resumes_exactly(tmp_path):
    """HAPO's config (dynamic sampling, HAPO's adaptive temperature and loss) two steps off: each batch keeps
    generating refill rounds on its own version until it has its informative groups; the refill counts are
    logged, the temperature hook reads the state of k updates before (state_lag), and resume is exact."""
    overrides = ["rollout.async_level=2", "trainer.max_steps=4", "rollout.prompts_per_step=4", "data.num_eval=8"]
    full, resumed = resume_after_kill(tmp_path, HAPO, overrides, kill_step=2)
    assert_schedule(full, 2)
    steps = [r for r in full if r["step"] > 0]
    assert all(1 <= r["dynamic_sampling/rounds"] and 0 < r["dynamic_sampling/kept_groups"] <= 4 for r in steps)
    assert any(r["dynamic_sampling/rounds"] > 1 for r in steps)           # refills happened (and were counted)
    assert_same_values(full, resumed)
    assert all(by["dynamic_sampling/rounds"] == r["dynamic_sampling/rounds"]
               for by in full for r in resumed if by["step"] == r["step"])


@pytest.mark.slow
def test_async_dynamic_sampling_draws_the_prompts_the_synchronous_run_draws(tmp_path):
    """The batch of step 1 (version 0 in both) is the synchronous run's: the same prompts, refills included,
    so the same samples and rewards (the sampler sees the same sequence of draws whatever the lookahead)."""
    overrides = ["trainer.max_steps=2", "rollout.prompts_per_step=4", "data.num_eval=8"]
    sync, sync_rows = run(tmp_path / "sync", HAPO, *overrides)
    one_off, async_rows = run(tmp_path / "async", HAPO, *overrides, "rollout.async_level=1")
    for key in ("reward/mean", "tokens", "dynamic_sampling/rounds", "dynamic_sampling/kept_groups"):
        assert sync[1][key] == one_off[1][key], key
    first = [(r["group"], r["completion"]) for r in sync_rows if r["step"] == 1]
    assert first == [(r["group"], r["completion"]) for r in async_rows if r["step"] == 1]
    assert_whole_groups(async_rows, 4, exact=False)


@pytest.mark.slow
@pytest.mark.parametrize("config, overrides, groups", [
    (APR, APR_SMALL, 2),
    (A2FM, ["rollout.prompts_per_step=2", "data.num_eval=4"], 2),
], ids=["apr", "a2fm"])
def test_async_multi_call_workflows(tmp_path, config, overrides, groups):
    """APR's spawn/join trees and A²FM's routed modes (group-level APO scoring) one step off."""
    metrics, completions = run(tmp_path / "run", config, "rollout.async_level=1", "trainer.max_steps=3", *overrides)
    assert_schedule(metrics, 1)
    assert_whole_groups(completions, groups)


@pytest.mark.slow
def test_async_gain_rl_sampler_reads_the_newest_state_with_its_lag(tmp_path):
    """GAIN-RL's angle sampler and HAPO's temperature (the combined config) two steps off: the batch of step t
    reads the sampler and the temperature after update t - 3 (lag 2 from step 2 on, logged)."""
    metrics, completions = run(tmp_path / "run", GAIN, "rollout.async_level=2", "trainer.max_steps=3",
                               "data.num_eval=8")
    assert_schedule(metrics, 2)
    assert all("gain_rl/mu" in r and "gain_rl/sampled_rank_mean" in r for r in metrics[1:])   # the curriculum acted
    assert_whole_groups(completions, 16)


@pytest.mark.slow
def test_async_lora_on_hf_trains_the_adapter_and_generates_on_merged_snapshots(tmp_path):
    """LoRA with the hf engine one step off: the generation thread's model holds each version's merged weights;
    step 1 trains on the synchronous run's batch (version 0), later steps on one version older."""
    overrides = ["model.lora.r=8", "trainer.max_steps=3", *SMALL]
    sync, _ = run(tmp_path / "sync", GRPO, *overrides)
    one_off, completions = run(tmp_path / "async", GRPO, *overrides, "rollout.async_level=1")
    assert_schedule(one_off, 1)
    assert_whole_groups(completions, 4)
    assert one_off[1]["reward/mean"] == sync[1]["reward/mean"] and one_off[1]["tokens"] == sync[1]["tokens"]
    assert abs(one_off[1]["rollout/is_ratio/mean"] - 1) < 1e-4        # version 0 on both sides
    assert (tmp_path / "async" / "final_model" / "adapter_config.json").exists()


@pytest.mark.slow
def test_an_engine_failure_during_async_rollouts_checkpoints_and_stops(tmp_path, monkeypatch, capsys):
    """The generation thread's engine dies while the learner trains: the run stops with exit 3 and the engine's
    message, after writing a checkpoint of the last finished step; resuming from it finishes the run."""
    import threading

    import rlpost.rollout.build as rollout_build
    from rlpost.engines.base import EngineError
    calls = {"n": 0}

    class DiesOnThirdBatch:
        def __init__(self, inner):
            self.inner = inner

        def generate(self, requests, params):
            if threading.current_thread().name.startswith("rlpost-rollout"):
                calls["n"] += 1
                if calls["n"] == 3:          # batches 0, 1 (version 0), then the one of step 2 fails
                    raise EngineError("worker 0 died\nlast log lines: out of memory")
            return self.inner.generate(requests, params)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    build = rollout_build.build_engine
    monkeypatch.setattr(rollout_build, "build_engine", lambda *a, **k: DiesOnThirdBatch(build(*a, **k)))
    out = tmp_path / "run"
    overrides = [f"trainer.output_dir={out}", *QUIET, *SMALL, "rollout.async_level=1", "trainer.max_steps=4",
                 "trainer.save_steps=0"]
    assert main(["train", GRPO, *overrides]) == 3
    err = capsys.readouterr().err
    assert "worker 0 died" in err and "out of memory" in err and "step-2" in err
    assert (out / "checkpoints" / "step-2").exists()
    monkeypatch.undo()
    assert main(["train", GRPO, *overrides, "trainer.resume_from_checkpoint=latest"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4]
