"""OBLR-PO through `rlpost train`: sum_p_sq in the old-policy pass, weighted baseline, SNR learning rate."""
from method_e2e_utils import assert_finite, run_train

KEYS = ["oblr/weight_mean", "oblr/weight_group_cv", "oblr/baseline_mean", "oblr/snr", "oblr/snr_step",
        "oblr/signal", "oblr/noise", "oblr/lr_scale", "lr"]


def test_oblr_tiny_config_logs_its_signals(tmp_path):
    rows = run_train(tmp_path / "run", "configs/tiny/arith_oblr_po.yaml", "optim.micro_batch_size=4", steps=3)
    assert_finite(rows, KEYS)
    for r in rows[1:]:
        assert 0.05 - 1e-12 <= r["oblr/lr_scale"] <= 1.0
        assert abs(r["lr"] - 1e-4 * r["oblr/lr_scale"]) < 1e-12           # scheduler lr (constant) x SNR scale
        assert r["oblr/weight_mean"] > 0                                  # logit-space score norms from sum_p_sq
