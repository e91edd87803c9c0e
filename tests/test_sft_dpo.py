"""``rlpost sft`` and ``rlpost dpo`` end to end on the tiny model (TRL SFTTrainer / DPOTrainer on CPU)."""
import json
import math

import pytest

from rlpost.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
SFT = "recipes/implicit_sft/tiny_sft.yaml"
DPO = "recipes/implicit_sft/tiny_dpo.yaml"
SMALL = ["data.num_train=32", "data.num_eval=16", "trainer.per_device_train_batch_size=8", "trainer.logging_steps=3",
         "sft.lr.base_lr=3e-4"]


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out):
    return [r["loss"] for r in rows(out) if "loss" in r]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model_path, learning_seed):
    out = tmp_path_factory.mktemp("sft") / "nll"
    code = main(["sft", SFT, f"trainer.output_dir={out}", "trainer.max_steps=12", f"trainer.seed={learning_seed}",
                 *SMALL])
    return code, out


@pytest.mark.learning
def test_sft_cli_nll_loss_decreases_and_logs_implicit_reward(sft_run, capsys, report_learning):
    code, out = sft_run
    assert code == 0
    logged = rows(out)
    first, last = losses(out)[0], losses(out)[-1]
    report_learning("sft_loss_drop", first - last)
    assert last < first, (first, last)
    train = [r for r in logged if "loss" in r]
    for key in ("sft/nll", "sft/implicit_reward", "sft/kl_to_initial", "learning_rate", "grad_norm"):
        assert key in train[-1], key
    assert train[0]["sft/kl_to_initial"] < train[-1]["sft/kl_to_initial"]   # drifts away from the initial model
    scores = [r for r in logged if "eval/heldout_score" in r]
    assert [r["step"] for r in scores] == [0, 12]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["sft_loss"] == "nll"
    assert (out / "final_model" / "config.json").exists() and (out / "curves.png").exists()


def test_sft_f_divergence_objective_and_lr_reduction(tmp_path, tiny_model_path):
    out = tmp_path / "pearson"
    code = main(["sft", SFT, f"trainer.output_dir={out}", "trainer.max_steps=9", "sft.loss.name=f_pearson",
                 "sft.loss.beta=0.5", "sft.lr.lr_scale=0.5", "data.num_eval=0", *SMALL[:1], *SMALL[2:]])
    assert code == 0
    train = [r for r in rows(out) if "loss" in r]
    assert train[-1]["loss"] < train[0]["loss"]
    for key in ("sft/u_mean", "sft/phi_weight_mean", "sft/frac_clamped", "sft/kl_to_initial"):
        assert key in train[-1], key
    summary = json.loads((out / "summary.json").read_text())
    assert summary["learning_rate"] == pytest.approx(3e-4 * 0.5) and summary["heldout_score"] is None
    assert max(r["learning_rate"] for r in train) <= 3e-4 * 0.5 + 1e-12


@pytest.mark.learning
def test_dpo_cli_from_sft_checkpoint(sft_run, tmp_path, learning_seed, report_learning):
    _, sft_out = sft_run
    out = tmp_path / "dpo"
    code = main(["dpo", DPO, f"model.name_or_path={sft_out / 'final_model'}", f"trainer.output_dir={out}",
                 "trainer.max_steps=9", "dpo.learning_rate=5e-4", "data.num_train=16", f"trainer.seed={learning_seed}",
                 *SMALL[1:4], "trainer.logging_steps=1"])
    assert code == 0
    train = [r for r in rows(out) if "loss" in r]
    # step 1 is scored before any update: policy == reference, so every pair's loss is -log sigmoid(0) = ln 2
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    last3 = sum(r["loss"] for r in train[-3:]) / 3
    report_learning("dpo_loss_drop", train[0]["loss"] - last3)
    assert last3 < train[0]["loss"], [r["loss"] for r in train]
    assert "rewards/margins" in train[-1] and "rewards/accuracies" in train[-1]
    assert (out / "final_model" / "config.json").exists()


def test_bad_sft_and_dpo_configs_exit_with_clear_errors(capsys):
    assert main(["sft", SFT, "sft.los=nll"]) == 2
    assert "did you mean sft.loss" in capsys.readouterr().err
    assert main(["sft", SFT, "sft.loss.name=nope"]) == 2
    assert "unknown SFT loss 'nope'" in capsys.readouterr().err
    assert main(["sft", SFT, "sft.lr.lr_scale=2"]) == 2
    assert main(["dpo", DPO, "dpo.bta=0.1"]) == 2
    assert "did you mean dpo.beta" in capsys.readouterr().err


def test_recipe_configs_load():
    from rlpost.dpo import DPORunConfig
    from rlpost.sft import SFTRunConfig, load_stage_config
    full = load_stage_config(SFTRunConfig, "recipes/implicit_sft/full_sft.yaml")
    assert full.model.name_or_path == "meta-llama/Meta-Llama-3-8B" and full.sft.lr["base_lr"] == 2e-5
    assert full.data.messages_column == "messages"
    assert load_stage_config(DPORunConfig, "recipes/implicit_sft/full_dpo.yaml").dpo.beta == 0.01
    assert load_stage_config(SFTRunConfig, SFT).sft.loss["name"] == "nll"
    assert load_stage_config(DPORunConfig, DPO).dpo.loss_type == ["sigmoid"]
