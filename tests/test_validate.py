"""``rlpost validate`` and config resolution: everything a run checks, before any model loads."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlpost.cli import main
from rlpost.config import ConfigError, load_config
from rlpost.resolve import check_context, resolve_file

ROOT = Path(__file__).resolve().parents[1]
GRPO = str(ROOT / "configs/tiny/arith_grpo.yaml")


def validate(capsys, *args):
    code = main(["validate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_prints_the_resolved_config_with_components_expanded(capsys):
    code, out, _ = validate(capsys, GRPO, "algo.loss=gspo", "algo.epsilon=0.2")
    assert code == 0
    resolved = yaml.safe_load(out)
    # GSPO's own epsilon is 3e-4, but the user set algo.epsilon=0.2 (equal to the global default): it is honoured
    assert resolved["algo"]["loss"] == {"name": "gspo", "epsilon": 0.2, "epsilon_high": 4e-4, "dual_clip_c": None,
                                        "delta": None, "importance_sampling_level": "sequence"}
    assert resolved["algo"]["loss_agg"] == "seq-mean-token-mean"      # GSPO's default aggregation, resolved
    assert resolved["algo"]["advantage"]["name"] == "grpo" and "eps" in resolved["algo"]["advantage"]
    assert resolved["rollout"]["workflow"] == "single_turn" or resolved["rollout"]["workflow"]["name"] == "single_turn"
    # without the override GSPO keeps its own epsilon
    code, out, _ = validate(capsys, GRPO, "algo.loss=gspo")
    assert yaml.safe_load(out)["algo"]["loss"]["epsilon"] == 3e-4


def test_loads_no_weights(capsys, monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("rlpost validate loaded a model or tokenizer")
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer,
                transformers.AutoModelForSequenceClassification):
        monkeypatch.setattr(cls, "from_pretrained", refuse)
    assert validate(capsys, GRPO)[0] == 0
    assert validate(capsys, str(ROOT / "recipes/constrained_rlhf/tiny_xi.yaml"))[0] == 0   # two reward models named


@pytest.mark.parametrize("override, message", [
    ("algo.loss={name: dapo, epsilonx: 0.1}", "unknown key algo.loss (dapo).epsilonx; did you mean 'epsilon'? known: "),
    ("algo.loss={name: dapo, epsilon: abc}", "algo.loss (dapo).epsilon: expected float, got 'abc'"),
    ("algo.loss={name: grpo, dual_clip_c: 0.5}", "algo.loss (grpo): algo.dual_clip_c must be > 1"),
    ("algo.loss=dapoo", "algo.loss: unknown policy loss 'dapoo'; did you mean 'dapo'?"),
    ("algo.advantage={name: grpo, eps: [1]}", "algo.advantage (grpo).eps: expected float"),
    ("algo.kl_estimator=k4", "algo.kl_estimator: unknown KL estimator 'k4'"),
    ("algo.loss_agg=token-sum", "algo.loss_agg: unknown loss aggregation"),
    ("rollout.engine=sglang", "rollout.engine: unknown rollout engine 'sglang'"),
    ("rollout.workflow={name: apr, max_depthx: 1}", "unknown key rollout.workflow (apr).max_depthx"),
    ("data.sampler={name: random, seedx: 1}", "unknown key data.sampler (random).seedx known: shuffle"),
    ("data.task=arithmetc", "data.task: unknown synthetic task 'arithmetc'"),
    ("rewards=[nosuchmod:fn]", "rewards.0 (nosuchmod:fn): cannot import reward function 'nosuchmod:fn'"),
    ("rewards=[arithmetc]", "rewards.0.name: unknown reward function 'arithmetc'"),
    ("method.constrained={kl_rate: abc}", "method.constrained.kl_rate: expected float, got 'abc'"),
    ("method.constrained={kl_ratee: 0.1}", "method.constrained: unknown parameter 'kl_ratee'"),
    ("method.nosuch={}", "method.nosuch: unknown method 'nosuch'"),
])
def test_a_mistake_is_one_line_naming_the_key_exit_2(capsys, override, message):
    code, out, err = validate(capsys, GRPO, override)
    assert code == 2 and out == ""
    assert err.startswith("config error: ") and message in err and err.count("\n") == 1, err


def test_train_refuses_a_bad_component_param_before_loading_a_model(tmp_path):
    """`rlpost train` resolves the config in load_config: exit 2, one line, nothing written, no model loaded."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "rlpost.cli", "train", GRPO, "algo.loss={name: dapo, epsilon: abc}",
                           f"trainer.output_dir={out}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "config error: algo.loss (dapo).epsilon: expected float, got 'abc'"
    assert not out.exists()


def test_context_window_of_a_known_model():
    """Qwen2.5-Math-1.5B holds 4096 positions: the HAPO paper's 12288 needs the context-extended setting."""
    cfg = load_config(GRPO)
    cfg.model.name_or_path = "Qwen/Qwen2.5-Math-1.5B"
    check_context(cfg.model, 4096, "rollout.max_model_len")            # fits exactly
    with pytest.raises(ConfigError, match=r"rollout.max_model_len asks for 12288 tokens but Qwen/Qwen2.5-Math-1.5B "
                                          r"has a context window of 4096"):
        check_context(cfg.model, 12288, "rollout.max_model_len")
    cfg.model.model_init_kwargs = {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
    check_context(cfg.model, 12288, "rollout.max_model_len")           # 4096 x 4 = 16384
    cfg.model.model_init_kwargs = {"max_position_embeddings": 16384}
    check_context(cfg.model, 16384, "rollout.max_model_len")
    cfg.model.name_or_path = "my/unknown-model"                         # not in the table: not checked
    check_context(cfg.model, 10**6, "rollout.max_model_len")


def test_validate_checks_the_context_window_from_the_command_line(capsys):
    code, _, err = validate(capsys, GRPO, "model.name_or_path=Qwen/Qwen2.5-Math-1.5B", "rollout.max_model_len=12288")
    assert code == 2 and "context window of 4096" in err
    code, _, err = validate(capsys, GRPO, "model.name_or_path=gpt2", "rollout.max_completion_length=1024")
    assert code == 2 and "rollout.max_completion_length asks for 1025 tokens" in err   # + at least one prompt token


def test_distributed_rules_for_a_world_size(capsys):
    args = [GRPO, "distributed.backend=ddp", "rollout.prompts_per_step=3"]
    assert validate(capsys, *args, "--world-size", "1")[0] == 0
    code, _, err = validate(capsys, *args, "--world-size", "2")
    assert code == 2 and "rollout.prompts_per_step (3) must divide by the number of learner ranks (2)" in err
    code, _, err = validate(capsys, GRPO, "--world-size", "2")
    assert code == 2 and "WORLD_SIZE=2 but distributed.backend is none" in err


def test_stage_configs(capsys):
    code, out, _ = validate(capsys, str(ROOT / "recipes/implicit_sft/tiny_sft.yaml"))
    assert code == 0 and out.startswith("# ") and "a valid sft config" in out
    resolved = yaml.safe_load(out)
    assert resolved["sft"]["loss"] == "nll" or resolved["sft"]["loss"]["name"] == "nll"
    assert set(resolved["sft"]["lr"]) == {"base_lr", "lr_scale", "warmup_ratio", "schedule"}
    code, _, err = validate(capsys, str(ROOT / "recipes/implicit_sft/tiny_sft.yaml"), "sft.loss=f_nope")
    assert code == 2 and "sft.loss" in err and "f_nope" in err
    kind, resolved = resolve_file(ROOT / "recipes/implicit_sft/tiny_dpo.yaml")
    assert kind == "dpo" and resolved["dpo"]["beta"] == 0.1
    code, _, err = validate(capsys, str(ROOT / "recipes/implicit_sft/full_sft.yaml"), "trainer.max_length=16384")
    assert code == 2 and "meta-llama/Meta-Llama-3-8B has a context window of 8192" in err


def test_saved_config_round_trips(tmp_path, capsys):
    """The resolved YAML (what <output_dir>/config.yaml holds) loads back to the same resolved config."""
    code, out, _ = validate(capsys, GRPO, "algo.loss=gspo", "algo.epsilon=0.2", "data.sampler=random")
    path = tmp_path / "config.yaml"
    path.write_text(out)
    code2, out2, _ = validate(capsys, str(path))
    assert code == code2 == 0
    assert yaml.safe_load(out2) == yaml.safe_load(out)


@pytest.mark.parametrize("advantage", ["turn_return", "{name: gigpo, gamma: 0.9}"])
def test_per_turn_credit_needs_a_workflow_that_records_turns(capsys, advantage):
    """algo.advantage turn_return / gigpo validate with the workflows that record per-turn rewards (multi_turn,
    agent, also asynchronously) and are refused with the reason for the others."""
    for config in ("configs/tiny/arith_tool_calculator.yaml", "configs/tiny/arith_agent_calculator.yaml"):
        for extra in ([], ["rollout.async_level=1"]):
            code, _, err = validate(capsys, str(ROOT / config), f"algo.advantage={advantage}", *extra)
            assert code == 0, (config, extra, err)
    for config, workflow in ((GRPO, "single_turn"), (str(ROOT / "recipes/apr/tiny.yaml"), "apr")):
        code, _, err = validate(capsys, config, f"algo.advantage={advantage}")
        assert code == 2 and f"needs per-turn rewards, which rollout.workflow {workflow} does not record: use " \
                              "rollout.workflow agent or multi_turn" in err, err
