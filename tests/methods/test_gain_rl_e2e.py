"""GAIN-RL through `rlpost train`: cached offline angle scores, training-time angle hook, mu update, resume."""
from method_e2e_utils import assert_finite, run_train

KEYS = ["gain_rl/mu", "gain_rl/delta_mu", "gain_rl/accuracy", "gain_rl/angle", "gain_rl/sampled_rank_mean",
        "gain_rl/sampled_score_mean"]


def test_gain_rl_tiny_config_logs_its_signals(tmp_path):
    cache = tmp_path / "angles"
    args = [f"method.gain_rl.cache_dir={cache}", "data.sampler.sigma=20", "data.sampler.step_size=10",
            "data.sampler.beta=0.0", "trainer.save_steps=2"]          # beta 0: accuracy >= target, so mu moves
    rows = run_train(tmp_path / "run", "configs/tiny/arith_gain_rl.yaml", *args, steps=3)
    assert_finite(rows, KEYS)
    assert len(list(cache.glob("angle_scores_*.pt"))) == 1
    for r in rows[1:]:
        assert 0.0 < r["gain_rl/angle"] <= 1.0 + 1e-6                     # mean pairwise cosine of MLP inputs
        assert 0.0 <= r["gain_rl/accuracy"] <= 1.0
    assert rows[1]["gain_rl/mu"] > 0.0 and rows[3]["gain_rl/mu"] >= rows[1]["gain_rl/mu"]
    # resume from step 2: mu and the sampler's generator come back; step 3 repeats exactly
    resumed = run_train(tmp_path / "run", "configs/tiny/arith_gain_rl.yaml", *args,
                        "trainer.resume_from_checkpoint=latest", steps=3)
    assert resumed[-1]["gain_rl/sampled_rank_mean"] == rows[-1]["gain_rl/sampled_rank_mean"]
    assert abs(resumed[-1]["gain_rl/mu"] - rows[-1]["gain_rl/mu"]) < 1e-9


def test_gain_rl_prompt_span(tmp_path):
    rows = run_train(tmp_path / "run", "configs/tiny/arith_gain_rl.yaml",
                     f"method.gain_rl.cache_dir={tmp_path / 'angles'}", "data.sampler.angle_span=prompt", steps=1)
    assert_finite(rows, KEYS)


def test_gain_rl_precomputed_angle_order_replays_the_scored_run(tmp_path):
    """The order of the cached scores, saved as sorted indices, gives the scored run's draws without scoring."""
    import torch

    from rlpost.algos.gain_rl import rank_order
    cache = tmp_path / "angles"
    scored = run_train(tmp_path / "scored", "configs/tiny/arith_gain_rl.yaml", f"method.gain_rl.cache_dir={cache}",
                       steps=2)
    (scores_file,) = cache.glob("angle_scores_*.pt")
    torch.save(rank_order(torch.load(scores_file)["scores"]), tmp_path / "sorted.pt")
    pre = run_train(tmp_path / "pre", "configs/tiny/arith_gain_rl.yaml", f"method.gain_rl.cache_dir={tmp_path / 'none'}",
                    f"data.sampler.angle_order={tmp_path / 'sorted.pt'}", steps=2)
    assert not (tmp_path / "none").exists()                             # no scoring pass
    assert [r["gain_rl/sampled_rank_mean"] for r in pre[1:]] == [r["gain_rl/sampled_rank_mean"] for r in scored[1:]]
    assert "gain_rl/sampled_score_mean" not in pre[-1]
