"""ADORA through `rlpost train`: group weights from the rollouts, logged shares."""
from method_e2e_utils import assert_finite, run_train

KEYS = ["adora/tas_frac", "adora/length_adv_frac", "adora/difficulty_adv_frac", "adora/success_rate_mean",
        "adora/weight_mean", "advantage/abs_mean"]


def test_adora_tiny_config_logs_its_signals(tmp_path):
    rows = run_train(tmp_path / "run", "configs/tiny/arith_adora.yaml", steps=3)
    assert_finite(rows, KEYS)
    for r in rows[1:]:
        assert 0.0 <= r["adora/tas_frac"] <= 1.0
        # weight_mean = kappa_tds + (kappa_tas - kappa_tds) * tas_frac with the preset 2.0 / 1.0
        assert abs(r["adora/weight_mean"] - (1.0 + r["adora/tas_frac"])) < 1e-6


def test_adora_length_mode_uses_truncation(tmp_path):
    rows = run_train(tmp_path / "run", "configs/tiny/arith_adora.yaml", "algo.advantage.mode=length",
                     "algo.advantage.kappa_tas=1.0", "algo.advantage.kappa_tds=0.1", "rollout.max_completion_length=3",
                     steps=2)
    assert_finite(rows, KEYS)
    assert any(r["completion/clipped_ratio"] > 0 for r in rows[1:])      # truncated failures are excluded from L_fail
