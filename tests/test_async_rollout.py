"""Asynchronous rollouts (rollout.async_level, rlpost/rollout/): the schedule, the pipeline's weight versions and
checkpoint state, the config rules, and end-to-end runs on the tiny model (hf engine)."""
import json
import threading

import pytest
import torch
import yaml

from rlpost.distributed import Runtime
from rlpost.rollout import RolloutPipeline, behaviour_version, is_settings
from rlpost.samplers import build_sampler
from rlpost.timing import PhaseTimes
from rlpost.cli import main
from rlpost.config import ConfigError, load_config
from rlpost.types import Prompt, Sample, Trajectory

TINY = "configs/tiny/arith_grpo.yaml"
SMALL = ["rollout.prompts_per_step=4", "num_generations=4", "optim.micro_batch_size=16", "trainer.report_to=[]",
         "trainer.eval_steps=0", "data.num_eval=16"]


# ---------------------------------------------------------------------------------------------- schedule and driver

def test_behaviour_version_is_bounded_staleness():
    assert [behaviour_version(t, 0) for t in range(5)] == [0, 1, 2, 3, 4]
    assert [behaviour_version(t, 1) for t in range(5)] == [0, 0, 1, 2, 3]
    assert [behaviour_version(t, 2) for t in range(5)] == [0, 0, 0, 1, 2]


class RecordingEngine:
    """Records which weight version (the value of its single tensor) each generation ran on, and on which thread."""

    def __init__(self):
        self.value, self.loads, self.threads = None, 0, set()

    def load_weights(self, named):
        (_, tensor), = list(named)
        self.value, self.loads = float(tensor.detach()), self.loads + 1
        self.threads.add(threading.get_ident())


class OneParam(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))


class FakeWorkflow:
    """One trajectory per prompt whose text is the weight value the engine holds; records the generating thread."""

    def __init__(self, engine):
        self.engine = engine

    def rollout(self, draws, params):
        self.engine.threads.add(threading.get_ident())
        return [Trajectory(prompt=d, group_id=d.id, samples=[Sample([1], [2], [0.0])], final_text=f"{self.engine.value}")
                for d in draws]


class FakeScorer:
    def score(self, trajs):
        for t in trajs:
            t.reward = float(t.final_text)
        return {"value": [t.reward for t in trajs]}

    def metrics(self, trajs, components):
        return {"reward/mean": sum(t.reward for t in trajs) / len(trajs)}


def pipeline(level, engine, model, steps=6):
    cfg = load_config(TINY, [f"rollout.async_level={level}", "rollout.prompts_per_step=2", f"trainer.max_steps={steps}"])
    return RolloutPipeline(cfg, engine=engine, workflow=FakeWorkflow(engine), scorer=FakeScorer(),
                           prompts=[Prompt(i, "p") for i in range(8)], sampler=build_sampler("uniform", 8, 0, True),
                           methods={}, dist=Runtime(), model=model, times=PhaseTimes())


def drive(level, steps, model, rollouts, start=0):
    """The trainer's side: start on version ``start``, then per step take the batch, update, publish."""
    seen = []
    for step in range(start, steps):
        trajs, metrics = rollouts.batch(step)
        seen.append((float(trajs[-1].final_text), metrics.get("async/staleness_max"), trajs[0].policy_version,
                     [t.prompt.id for t in trajs]))
        with torch.no_grad():
            model.w.add_(1.0)                       # the update: version step + 1 has w = step + 1
        rollouts.publish(step + 1)
    return seen


@pytest.mark.parametrize("level", [1, 2])
def test_each_batch_is_generated_on_its_version_on_the_generation_thread(level):
    engine, model = RecordingEngine(), OneParam()
    rollouts = pipeline(level, engine, model)
    try:
        rollouts.start(0)
        seen = drive(level, 6, model, rollouts)
    finally:
        rollouts.close()
    expected = [behaviour_version(t, level) for t in range(6)]
    assert [s[0] for s in seen] == expected                                # the weights each batch ran on
    assert [s[2] for s in seen] == expected                                # the version each trajectory carries
    assert [s[1] for s in seen] == [t - v for t, v in enumerate(expected)]  # staleness: 0, 1, (2,) then k
    assert engine.threads and threading.get_ident() not in engine.threads
    assert engine.loads == len(set(expected))                              # one load per version, not per batch
    assert set(rollouts.weights) <= {5, 6}                                 # older snapshots were dropped
    # the prompts of each step are those the synchronous pipeline draws (step order), whatever the lookahead
    sync_engine, sync_model = RecordingEngine(), OneParam()
    sync = pipeline(0, sync_engine, sync_model)
    sync.start(0)
    assert [s[3] for s in drive(0, 6, sync_model, sync)] == [s[3] for s in seen]


def test_checkpoint_state_keeps_old_version_results_and_regenerates_the_rest():
    engine, model = RecordingEngine(), OneParam()
    rollouts = pipeline(2, engine, model)
    rollouts.start(0)
    rollouts.batch(0)
    with torch.no_grad():
        model.w.add_(1.0)
    rollouts.publish(1)                                     # queued: steps 1, 2 (version 0) and 3 (version 1)
    state = rollouts.state_dict(1)
    rollouts.close()
    assert [(j["step"], j["version"], j["result"] is not None) for j in state["jobs"]] == \
        [(1, 0, True), (2, 0, True), (3, 1, False)]
    assert float(state["jobs"][0]["result"].kept[-1].final_text) == 0.0
    # resume: the saved batches come back as they were, the version-1 batch is regenerated on version 1
    engine2 = RecordingEngine()
    resumed = pipeline(2, engine2, model)
    resumed.start(1, state)
    try:
        got = [float(resumed.batch(step)[0][-1].final_text) for step in (1, 2, 3)]
    finally:
        resumed.close()
    assert got == [0.0, 0.0, 1.0] and engine2.loads == 1
    wrong = pipeline(1, RecordingEngine(), model)
    with pytest.raises(ConfigError, match="async_level=1, but the checkpoint was written with async_level=2"):
        wrong.start(1, state)
    wrong.close()


# ---------------------------------------------------------------------------------------------- config

def test_off_policy_correction_is_on_by_default_with_async():
    cfg = load_config(TINY, ["rollout.async_level=1"])
    assert is_settings(cfg)["vllm_importance_sampling_correction"] is True
    assert is_settings(cfg)["vllm_importance_sampling_mode"] == "token_truncate"
    cfg = load_config(TINY, ["rollout.async_level=1", "algo.vllm_importance_sampling_correction=false"])
    assert is_settings(cfg)["vllm_importance_sampling_correction"] is False          # the user's choice wins
    cfg = load_config(TINY, ["max_async_level=2", "algo.vllm_importance_sampling_mode=sequence_mask"])
    assert cfg.rollout.async_level == 2                                               # prime-rl's name
    assert is_settings(cfg)["vllm_importance_sampling_mode"] == "sequence_mask"
    assert is_settings(load_config(TINY))["vllm_importance_sampling_correction"] is False   # sync: unchanged


@pytest.mark.parametrize("overrides, message", [
    (["rollout.engine=vllm", "rollout.enable_sleep_mode=true"], "rollout.enable_sleep_mode does not work with"),
    (["distributed.backend=ddp", "algo.dynamic_sampling=true"], "needs rollout.engine=vllm_server (one driver"),
])
def test_validate_rejects_what_does_not_run_asynchronously(capsys, overrides, message):
    code = main(["validate", TINY, "rollout.async_level=1", *overrides])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("config error: ") and message in err, err
    assert main(["validate", TINY, *overrides]) in (0, 2)     # (the same keys may have other rules of their own)


@pytest.mark.parametrize("overrides", [
    ["algo.dynamic_sampling=true"], ["method.hapo={}", "algo.loss=hapo"],
    ["method.gain_rl={}", "data.sampler={name: gain_rl}"], ["rollout.workflow=apr"], ["rollout.workflow=a2fm"],
    ["distributed.backend=ddp"], ["model.lora.r=8"], ["rollout.engine=vllm"],
])
def test_validate_accepts_the_compositions_that_used_to_be_refused(capsys, overrides):
    assert main(["validate", TINY, "rollout.async_level=1", *overrides]) == 0, capsys.readouterr().err


def test_validate_prints_the_effective_correction(capsys):
    assert main(["validate", TINY, "rollout.async_level=1"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["rollout"]["async_level"] == 1
    assert resolved["algo"]["vllm_importance_sampling_correction"] is True
    assert resolved["algo"]["vllm_importance_sampling_mode"] == "token_truncate"
    assert main(["validate", TINY, "rollout.async_level=-1"]) == 2
    assert "rollout.async_level must be >= 0" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- end to end (hf)

def run(tmp_path, name, *overrides):
    out = tmp_path / name
    code = main(["train", TINY, f"trainer.output_dir={out}", "trainer.progress_bar=false", *SMALL, *overrides])
    return code, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] if code == 0 else []


VALUES = ("reward/mean", "loss", "grad_norm", "tokens", "policy/clipfrac", "completion/mean_length")


@pytest.mark.slow
def test_async_level_0_is_the_synchronous_loop(tmp_path):
    """rollout.async_level=0 is the loop without the driver: the same values as a run that does not name the key,
    and none of the async metrics (the run before this feature logged the same values: README)."""
    code, plain = run(tmp_path, "plain", "trainer.max_steps=2")
    code0, zero = run(tmp_path, "zero", "trainer.max_steps=2", "rollout.async_level=0")
    assert code == code0 == 0
    for a, b in zip(plain, zero):
        assert {k: v for k, v in a.items() if not k.startswith(("timing/", "step_time", "perf/"))} == \
               {k: v for k, v in b.items() if not k.startswith(("timing/", "step_time", "perf/"))}
    assert not any(k.startswith("async/") for row in zero for k in row)
    assert "timing/generate" in zero[1] and "timing/generate_wait" not in zero[1]


@pytest.mark.slow
def test_one_step_off_trains_on_version_t_minus_1(tmp_path):
    """async_level=1: step 1 trains on the very batch the synchronous run trains on (version 0, same seed and
    prompts: the same samples, the same loss up to the sampler's float noise); from step 2 on every sample is
    exactly one version old, and the truncated IS weights (token_truncate, on by default) move away from 1."""
    full = ["rollout.prompts_per_step=16", "num_generations=8", "optim.micro_batch_size=64"]   # the config's batch
    _, sync = run(tmp_path, "sync", "trainer.max_steps=4", *full)
    code, rows = run(tmp_path, "async1", "trainer.max_steps=4", "rollout.async_level=1", *full)
    assert code == 0 and [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    for key in ("reward/mean", "tokens", "completion/mean_length"):
        assert rows[1][key] == sync[1][key], key                        # the same samples
    assert sync[1]["grad_norm"] > 0
    assert rows[1]["loss"] == pytest.approx(sync[1]["loss"], rel=1e-4, abs=1e-7)
    assert abs(rows[1]["rollout/is_ratio/min"] - 1) < 1e-4 and abs(rows[1]["rollout/is_ratio/max"] - 1) < 1e-4
    assert [r["async/staleness_max"] for r in rows[1:]] == [0, 1, 1, 1]
    assert [r["async/staleness_mean"] for r in rows[1:]] == [0.0, 1.0, 1.0, 1.0]
    assert min(r["rollout/is_ratio/min"] for r in rows[2:]) < 0.99     # stale samples: weights pi_old / pi_sampler
    assert rows[2]["tokens"] != sync[2]["tokens"] or rows[2]["reward/mean"] != sync[2]["reward/mean"]
    for r in rows[1:]:
        assert r["timing/generate_wait"] >= 0 and r["timing/update"] > 0 and "timing/generate" not in r
    saved = yaml.safe_load((tmp_path / "async1" / "config.yaml").read_text())
    assert saved["algo"]["vllm_importance_sampling_correction"] is True


@pytest.mark.slow
def test_bounded_staleness_two(tmp_path):
    code, rows = run(tmp_path, "async2", "trainer.max_steps=4", "max_async_level=2")
    assert code == 0
    assert [r["async/staleness_max"] for r in rows[1:]] == [0, 1, 2, 2]


@pytest.mark.slow
def test_async_level_1_resume_is_exact(tmp_path):
    """A run interrupted after step 3 (checkpoint at step 2) and resumed logs the uninterrupted run's values: the
    queued batch of step 2 (version 1) was saved, the one of step 3 (version 2) regenerated from the checkpoint."""
    common = ["trainer.max_steps=5", "trainer.save_steps=2", "rollout.async_level=1", "algo.num_iterations=2"]
    code, full = run(tmp_path, "full", *common)
    assert code == 0 and any(r.get("grad_norm", 0) > 0 for r in full[3:])   # the resumed steps do learn
    assert run(tmp_path, "part", *common[1:], "trainer.max_steps=3")[0] == 0
    code, resumed = run(tmp_path, "part", *common, "trainer.resume_from_checkpoint=latest")
    assert code == 0 and [r["step"] for r in resumed] == [0, 1, 2, 3, 4, 5]
    for a, b in zip(full, resumed):
        for key in (*VALUES, "async/staleness_max", "rollout/is_ratio/mean"):
            assert a.get(key) == b.get(key), (a["step"], key, a.get(key), b.get(key))
    # resuming with another async level is refused (the batch schedule would differ)
    code, _ = run(tmp_path, "part", *common[:2], "rollout.async_level=0", "algo.num_iterations=2",
                  "trainer.resume_from_checkpoint=latest")
    assert code == 2                                                    # a config error, before any step


@pytest.mark.slow
def test_bounded_staleness_resume_from_a_copied_checkpoint_is_exact(tmp_path):
    """async_level=2, a run killed after its step-2 checkpoint (simulated: the checkpoint copied into a fresh output
    folder): the resumed steps 3-5 log the uninterrupted run's values. The checkpoint held the batches of steps 2
    and 3 (version 0 and 1, older than its weights) as trajectories; the batch of step 4 (version 2) is regenerated."""
    import shutil
    common = ["trainer.max_steps=5", "trainer.save_steps=2", "rollout.async_level=2", "trainer.save_total_limit=5"]
    code, full = run(tmp_path, "full", *common)
    assert code == 0
    state = torch.load(tmp_path / "full" / "checkpoints" / "step-2" / "state.pt", weights_only=False)["async"]
    assert [(j["step"], j["version"], j["result"] is not None) for j in state["jobs"]] == \
        [(2, 0, True), (3, 1, True), (4, 2, False)]
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-2", tmp_path / "killed" / "checkpoints" / "step-2")
    code, resumed = run(tmp_path, "killed", *common, "trainer.resume_from_checkpoint=latest")
    assert code == 0
    by_step = {r["step"]: r for r in full}
    assert [r["step"] for r in resumed] == [3, 4, 5] and any(r["grad_norm"] > 0 for r in resumed)
    for b in resumed:
        for key in (*VALUES, "async/staleness_max", "rollout/is_ratio/mean"):
            assert by_step[b["step"]].get(key) == b.get(key), (b["step"], key)
