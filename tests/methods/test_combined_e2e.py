"""HAPO loss + GAIN-RL sampler + OBLR-PO controller in one run (configs/tiny/arith_hapo_gainrl_oblr.yaml)."""
from method_e2e_utils import assert_finite, run_train

KEYS = ["hapo/boost_frac", "hapo/damp_frac", "hapo/temperature_mean", "gain_rl/mu", "gain_rl/angle",
        "gain_rl/sampled_score_mean", "oblr/snr", "oblr/lr_scale", "lr", "eval/accuracy"]


def test_combined_config_runs(tmp_path):
    rows = run_train(tmp_path / "run", "configs/tiny/arith_hapo_gainrl_oblr.yaml",
                     f"method.gain_rl.cache_dir={tmp_path / 'angles'}", "optim.micro_batch_size=4", steps=2)
    assert_finite(rows, KEYS, steps={2})
    assert_finite(rows, [k for k in KEYS if k != "eval/accuracy"])


def test_combined_with_oblr_baseline(tmp_path):
    rows = run_train(tmp_path / "run", "configs/tiny/arith_hapo_gainrl_oblr.yaml",
                     f"method.gain_rl.cache_dir={tmp_path / 'angles'}", "algo.advantage=oblr", "method.oblr={}",
                     "optim.micro_batch_size=4", steps=1)
    assert_finite(rows, ["oblr/weight_mean", "hapo/damp_frac", "gain_rl/mu", "oblr/snr"])
