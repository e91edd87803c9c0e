"""HAPO through `rlpost train`: entropies, carried statistics, adaptive temperature, resume."""
import dataclasses

import torch

from rlpost.engines.base import SamplingParams
from rlpost.methods.hapo import HAPOMethod

from method_e2e_utils import assert_finite, run_train

LOSS_KEYS = ["hapo/boost_frac", "hapo/damp_frac", "hapo/h_tilde_mean", "hapo/eps_low_mean", "hapo/eps_high_mean",
             "hapo/max_abs_group_token_adv_sum", "policy/entropy", "hapo/stats_q"]
TEMP_KEYS = ["hapo/temperature_mean", "hapo/temperature_min", "hapo/temperature_max", "hapo/temperature_up_frac",
             "hapo/temperature_down_frac", "hapo/has_stats"]


def test_hapo_tiny_config_logs_its_signals(tmp_path):
    rows = run_train(tmp_path / "run", "configs/tiny/arith_hapo.yaml", "trainer.save_steps=2", steps=3)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert_finite(rows, LOSS_KEYS + TEMP_KEYS)
    first, later = rows[1], rows[2:]
    assert first["hapo/has_stats"] == 0.0 and first["hapo/temperature_mean"] == 1.0   # no statistics on step 1
    for r in later:                                                                    # then T = T_base (1 + tau h~)
        assert r["hapo/has_stats"] == 1.0
        assert 0.9 - 1e-6 <= r["hapo/temperature_min"] <= r["hapo/temperature_max"] <= 1.1 + 1e-6
    for r in rows[1:]:
        assert abs(r["hapo/max_abs_group_token_adv_sum"]) < 1e-3     # token-level group average sums to 0
    # resume from step 2: the carried temperature statistics come back from the checkpoint
    resumed = run_train(tmp_path / "run", "configs/tiny/arith_hapo.yaml", "trainer.resume_from_checkpoint=latest",
                        steps=3)
    assert resumed[-1]["step"] == 3 and resumed[-1]["hapo/has_stats"] == 1.0


def test_temperature_processor_only_on_training_rollouts():
    m = HAPOMethod()
    from rlpost.algos.hapo import HAPOTemperatureParams
    m.temp_params = HAPOTemperatureParams()
    base = SamplingParams()
    assert m.rollout_params(base, "eval", step=0) is base
    rollout = m.rollout_params(base, "rollout", step=0)
    assert len(rollout.logits_processors) == 1 and base.logits_processors == []
    again = m.rollout_params(base, "rollout", step=0)
    assert again.logits_processors[0] is rollout.logits_processors[0]  # one per step
    m.state = {"q": 0.0, "sigma": 1.0, "h_pos_max": 1.0, "h_neg_min": -1.0}
    proc = m.rollout_params(base, "rollout", step=1).logits_processors[0]
    assert proc is not rollout.logits_processors[0] and proc.stats is not None
    out = proc(0, torch.zeros(2, 1, dtype=torch.long), torch.randn(2, 7))
    assert out.shape == (2, 7)
    assert dataclasses.replace(base) == base
