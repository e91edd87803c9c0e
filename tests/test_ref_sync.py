"""algo.sync_ref_model (rlpost/models/reference.py): the soft update by hand, and exact resume in a real run."""
import json

import pytest
import torch

from rlpost.config import ConfigError, load_config
from rlpost.models.reference import mix_into_reference


def test_mix_by_hand():
    ref, policy = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        ref.weight.fill_(0.0), ref.bias.fill_(2.0), policy.weight.fill_(4.0), policy.bias.fill_(-2.0)
    mix_into_reference(ref, policy, 0.25)   # 0.25 * 4 + 0.75 * 0 = 1;  0.25 * -2 + 0.75 * 2 = 1
    assert ref.weight.tolist() == [[1.0, 1.0]] and ref.bias.tolist() == [1.0]
    mix_into_reference(ref, policy, 1.0)    # hard update
    assert ref.weight.tolist() == [[4.0, 4.0]] and ref.bias.tolist() == [-2.0]
    assert policy.weight.tolist() == [[4.0, 4.0]]  # the policy is untouched


def test_config_rules():
    cfg = load_config(None, ["beta=0.04", "sync_ref_model=true", "ref_model_mixup_alpha=0.5", "ref_model_sync_steps=8"])
    assert (cfg.algo.sync_ref_model, cfg.algo.ref_model_mixup_alpha, cfg.algo.ref_model_sync_steps) == (True, 0.5, 8)
    with pytest.raises(ConfigError, match="needs a reference model"):
        load_config(None, ["sync_ref_model=true"])
    with pytest.raises(ConfigError, match="model.lora"):
        load_config(None, ["beta=0.04", "sync_ref_model=true", "model.lora.r=8"])


@pytest.mark.slow
def test_reference_moves_and_resume_is_exact(tmp_path, tiny_model_path):
    from rlpost.cli import main
    from rlpost.trainer import Trainer

    common = ["trainer.max_steps=4", "trainer.save_steps=2", "rollout.prompts_per_step=4", "num_generations=4",
              "optim.micro_batch_size=8", "trainer.report_to=[]", "trainer.progress_bar=false", "trainer.eval_steps=0",
              "data.num_eval=8", "beta=0.1", "sync_ref_model=true", "ref_model_mixup_alpha=0.5",
              "ref_model_sync_steps=1", "learning_rate=1e-3"]
    tiny = "configs/tiny/arith_grpo.yaml"

    def rows(out):
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    # the reference follows the policy: after a synced step it differs from the initial weights
    trainer = Trainer(load_config(tiny, common + ["trainer.max_steps=1", f"trainer.output_dir={tmp_path / 'one'}"]))
    trainer.setup()
    before = {n: p.clone() for n, p in trainer.ref_model.named_parameters()}
    trainer.train()
    moved = [n for n, p in trainer.ref_model.named_parameters() if not torch.equal(p, before[n])]
    assert moved
    for n, p in trainer.ref_model.named_parameters():  # 0.5 * theta + 0.5 * theta_ref_initial
        assert torch.allclose(p, 0.5 * dict(trainer.model.named_parameters())[n] + 0.5 * before[n], atol=1e-6)
    trainer.close()

    assert main(["train", tiny, *common, f"trainer.output_dir={tmp_path / 'full'}"]) == 0
    assert main(["train", tiny, *common, "trainer.max_steps=3", f"trainer.output_dir={tmp_path / 'part'}"]) == 0
    assert main(["train", tiny, *common, f"trainer.output_dir={tmp_path / 'part'}",
                 "trainer.resume_from_checkpoint=latest"]) == 0
    full, resumed = rows(tmp_path / "full"), rows(tmp_path / "part")
    assert [r["step"] for r in resumed] == [r["step"] for r in full] == [0, 1, 2, 3, 4]
    by_step = {r["step"]: r for r in resumed}
    for r in full:
        if r["step"] >= 3:  # steps after the resume depend on the restored (mixed) reference through the KL term
            for key in ("kl", "loss", "grad_norm", "reward/mean"):
                assert r[key] == by_step[r["step"]][key], (r["step"], key)
