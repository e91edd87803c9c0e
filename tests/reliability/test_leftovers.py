"""What an interrupted run leaves behind does not break or silently erase the next one (rlpost train, tiny model)."""
import json
import logging

import pytest

from rlpost.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = ["trainer.progress_bar=false", "trainer.eval_steps=0", "data.num_eval=4", "rollout.prompts_per_step=2",
        "rollout.num_generations=2", "trainer.report_to=[jsonl]"]


def train(out, *overrides):
    return main(["train", "configs/tiny/arith_grpo.yaml", f"trainer.output_dir={out}", *FAST, *overrides])


def steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_half_written_checkpoint_and_final_model_files_are_removed_at_start(tmp_path, caplog):
    out = tmp_path / "run"
    (out / "checkpoints" / ".step-7.x1y2" / "model").mkdir(parents=True)
    (out / "final_model").mkdir(parents=True)
    (out / "final_model" / ".tmp_model.safetensors").write_bytes(b"half")
    with caplog.at_level(logging.WARNING):
        assert train(out, "trainer.max_steps=1", "trainer.save_steps=0") == 0
    assert not list((out / "checkpoints").glob(".step-*")) and not list((out / "final_model").glob(".tmp*"))
    assert "left half-written by an interrupted run" in caplog.text


def test_resume_drops_a_metrics_line_cut_short_by_a_kill(tmp_path, caplog):
    out = tmp_path / "run"
    assert train(out, "trainer.max_steps=2", "trainer.save_steps=1") == 0
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "reward/me')                     # a kill during the write of step 3
    with caplog.at_level(logging.WARNING):
        assert train(out, "trainer.max_steps=3", "trainer.save_steps=1", "trainer.resume_from_checkpoint=latest") == 0
    assert steps(out) == [0, 1, 2, 3] and "is not JSON" in caplog.text


def test_resume_latest_without_a_checkpoint_says_so_and_keeps_the_old_metrics(tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 0, "eval/accuracy": 0.5}\n{"step": 1, "loss": 0.1}\n')
    with caplog.at_level(logging.WARNING):
        assert train(out, "trainer.max_steps=1", "trainer.save_steps=0", "trainer.resume_from_checkpoint=latest") == 0
    assert "no checkpoint in" in caplog.text and "kept aside" in caplog.text
    assert (out / "metrics.jsonl.old").read_text().startswith('{"step": 0, "eval/accuracy": 0.5}')
    assert steps(out) == [0, 1]


def test_a_step_larger_than_the_dataset_never_merges_groups(tmp_path, caplog):
    """5 prompts per step from a 3-prompt training set: prompts repeat, with a warning, and every group still holds
    exactly num_generations completions (before: a prompt drawn twice formed one group of 4)."""
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        assert main(["train", "configs/tiny/arith_grpo.yaml", f"trainer.output_dir={out}", *FAST,
                     "rollout.prompts_per_step=5", "data.num_train=3", "trainer.max_steps=2", "trainer.save_steps=0",
                     "trainer.log_completions=true", "trainer.num_completions_to_print=0"]) == 0
    assert "larger than the training set (3 prompts)" in caplog.text
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    for step in (1, 2):
        groups = [r["group"] for r in rows if r["step"] == step]
        assert len(groups) == 10 and all(groups.count(g) == 2 for g in groups), groups
        prompts = [r["prompt"] for r in rows if r["step"] == step]
        assert len(set(prompts)) <= 3 < len(set(groups))                     # repeated prompts, distinct groups


def test_a_weight_sync_that_fails_still_logs_its_step_and_resume_misses_none(tmp_path, monkeypatch):
    """An engine whose weight sync fails after step 2 (a worker dying mid-sync): the run stops with exit 3, the
    checkpoint is step 2 and metrics.jsonl has step 2's row; resuming continues with step 3 (before: 1, 3, 4)."""
    from rlpost.engines.base import EngineError
    calls = {"n": 0}

    class SyncFails:
        """The hf engine with a separate model copy, as a remote engine has; its 3rd weight sync fails."""
        def __init__(self, inner):
            import copy
            self.inner, self.model = inner, copy.deepcopy(inner.model)

        def generate(self, requests, params):
            return self.inner.generate(requests, params)

        def load_weights(self, named):
            calls["n"] += 1
            if calls["n"] == 3:             # 1: before step 1 (setup), 2: after step 1, 3: after step 2
                raise EngineError("worker 0 died during update_weights")
            self.inner.load_weights(named)

        def close(self):
            self.inner.close()

    import rlpost.rollout.build as rollout_build
    build = rollout_build.build_engine
    monkeypatch.setattr(rollout_build, "build_engine", lambda *args, **kwargs: SyncFails(build(*args, **kwargs)))
    out = tmp_path / "run"
    assert train(out, "trainer.max_steps=4", "trainer.save_steps=0") == 3
    assert steps(out) == [0, 1, 2] and (out / "checkpoints" / "step-2").exists()
    monkeypatch.undo()
    assert train(out, "trainer.max_steps=4", "trainer.save_steps=0", "trainer.resume_from_checkpoint=latest") == 0
    assert steps(out) == [0, 1, 2, 3, 4]
