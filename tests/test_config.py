import pytest
import yaml

from rlpost.config import ConfigError, load_config, save_config


def test_yaml_plus_overrides_and_trl_aliases(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algo:\n  loss: grpo\nrollout:\n  num_generations: 4\nbeta: 0.01\n")
    cfg = load_config(path, ["algo.loss=dapo", "rollout.num_generations=8", "learning_rate=1e-5",
                             "epsilon_high=0.28", "loss_type=dr_grpo"])
    assert cfg.algo.loss == "dr_grpo"  # loss_type is TRL's alias of algo.loss; later wins
    assert cfg.rollout.num_generations == 8
    assert cfg.algo.beta == 0.01
    assert cfg.optim.learning_rate == 1e-5 and isinstance(cfg.optim.learning_rate, float)
    assert cfg.algo.epsilon_high == 0.28


def test_section_aliases_and_component_mappings():
    cfg = load_config(None, ["algo.advantage={name: grpo, scale_rewards: none}", "rollout.n=4"])
    assert cfg.algo.advantage == {"name": "grpo", "scale_rewards": "none"}
    assert cfg.rollout.num_generations == 4


def test_sampling_knobs_by_trl_name_and_bounds():
    cfg = load_config(None, ["repetition_penalty=1.1", "min_p=0.05"])
    assert (cfg.rollout.repetition_penalty, cfg.rollout.min_p) == (1.1, 0.05)
    with pytest.raises(ConfigError, match="rollout.min_p must be in"):
        load_config(None, ["min_p=1.5"])
    with pytest.raises(ConfigError, match="rollout.repetition_penalty must be > 0"):
        load_config(None, ["repetition_penalty=0"])


def test_trl_reward_weights_set_each_reward_in_order():
    cfg = load_config(None, ["rewards=[arithmetic, format]", "reward_weights=[1.0, 0.25]"])
    assert [(r.name, r.weight) for r in cfg.rewards] == [("arithmetic", 1.0), ("format", 0.25)]
    with pytest.raises(ConfigError, match="reward_weights has 1 weights for 2 reward functions"):
        load_config(None, ["rewards=[arithmetic, format]", "reward_weights=[1.0]"])
    with pytest.raises(ConfigError, match="reward_weights: expected a list of numbers"):
        load_config(None, ["reward_weights=high"])


def test_verl_token_budget_alias_and_its_bounds():
    assert load_config(None, ["ppo_max_token_len_per_gpu=4096"]).optim.max_tokens_per_micro_batch == 4096
    with pytest.raises(ConfigError, match="optim.max_tokens_per_micro_batch must be >= 0"):
        load_config(None, ["optim.max_tokens_per_micro_batch=-1"])


@pytest.mark.parametrize("override, message", [
    ("algo.los=dapo", "did you mean algo.loss"),
    ("rollout.temprature=0.5", "did you mean rollout.temperature"),
    ("num_generation=4", "did you mean num_generations"),
    ("rollout.num_generations=abc", "rollout.num_generations: expected int"),
    ("optim.learning_rate=fast", "optim.learning_rate: expected float"),
    ("algo.dynamic_sampling=maybe", "algo.dynamic_sampling: expected bool"),
    ("rollout.num_generations=1", "num_generations must be >= 2"),
    ("max_prompt_length=128", "removed from TRL"),
    ("algo.loss", "key=value"),
])
def test_bad_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_rewards_list_and_saved_config_round_trip(tmp_path):
    cfg = load_config(None, ["rewards=[arithmetic, {name: format, weight: 0.5}]"])
    assert [r.name for r in cfg.rewards] == ["arithmetic", "format"] and cfg.rewards[1].weight == 0.5
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "resolved.yaml").read_text())["rollout"]["num_generations"] == 8


def test_saved_config_redacts_the_serve_token(tmp_path):
    cfg = load_config(None, ["rollout.server_token=s3cret"])
    save_config(cfg, tmp_path / "c.yaml")
    text = (tmp_path / "c.yaml").read_text()
    assert "s3cret" not in text and "<redacted>" in text


@pytest.mark.parametrize("overrides, want", [
    ([], 3e-4),                                   # GSPO's own default
    (["algo.epsilon=0.2"], 0.2),                  # explicit, although 0.2 is the global default
    (["epsilon=0.2"], 0.2),                       # the TRL name too
    (["algo.epsilon=0.3"], 0.3),
])
def test_explicit_values_win_over_a_components_defaults_even_when_equal_to_the_global_default(overrides, want):
    import copy

    from rlpost.algos import POLICY_LOSSES, build_params
    from rlpost.config import explicit_fields as user_set_fields
    cfg = load_config("configs/tiny/arith_grpo.yaml", ["algo.loss=gspo", *overrides])
    entry = POLICY_LOSSES.entry("gspo")
    for algo in (cfg.algo, copy.deepcopy(cfg.algo)):
        assert build_params(entry.params, user_set_fields(algo), {}, where="algo.loss").epsilon == want


def test_explicit_values_in_the_yaml_count_too(tmp_path):
    from rlpost.config import explicit_fields
    path = tmp_path / "c.yaml"
    path.write_text("algo:\n  loss: gspo\n  epsilon: 0.2\n")
    assert explicit_fields(load_config(path).algo)["epsilon"] == 0.2
    assert "epsilon" not in explicit_fields(load_config(None, ["algo.loss=gspo"]).algo)
