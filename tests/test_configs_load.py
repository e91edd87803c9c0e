"""Every YAML under configs/ and recipes/ loads with its loader, passes the method combination rules and
``rlpost validate`` (reward_models/ ships no YAML: its RMs are trained by reward_models/train_rm.py flags).

Training configs go through ``rlpost.config.load_config`` and ``rlpost.methods.validate_methods`` (what
``rlpost train`` checks before loading a model); ``sft:`` / ``dpo:`` stage configs through
``rlpost.sft.load_stage_config``. Nothing is built, so full-scale (multi-GPU, hub) configs are checked too.
"""
import re
from pathlib import Path

import pytest
import yaml

from rlpost.config import ConfigError, load_config
from rlpost.methods import validate_methods
from rlpost.resolve import load_checked

ROOT = Path(__file__).resolve().parents[1]
YAMLS = sorted(p for d in ("configs", "recipes") for p in (ROOT / d).rglob("*.y*ml"))


def _load(path: Path):
    raw = yaml.safe_load(path.read_text()) or {}
    if "sft" in raw or "dpo" in raw:
        from rlpost.sft import load_stage_config
        if "sft" in raw:
            from rlpost.sft import SFTRunConfig as cls
        else:
            from rlpost.dpo import DPORunConfig as cls
        return load_stage_config(cls, path, [])
    cfg = load_config(path)
    validate_methods(cfg)
    return cfg


def test_there_are_configs():
    names = {p.relative_to(ROOT).as_posix() for p in YAMLS}
    for needed in ("configs/tiny/arith_hapo.yaml", "configs/tiny/arith_adora.yaml", "configs/tiny/arith_oblr_po.yaml",
                   "configs/tiny/arith_gain_rl.yaml", "configs/tiny/arith_hapo_gainrl_oblr.yaml",
                   "recipes/hapo/qwen2.5-math-1.5b.yaml", "recipes/adora/qwen2.5-7b.yaml",
                   "recipes/oblr_po/qwen3-8b-base.yaml", "recipes/gain_rl/qwen2.5-0.5b-instruct-gsm8k.yaml"):
        assert needed in names


@pytest.mark.parametrize("path", YAMLS, ids=[p.relative_to(ROOT).as_posix() for p in YAMLS])
def test_config_loads(path):
    _load(path)


@pytest.mark.parametrize("path", YAMLS, ids=[p.relative_to(ROOT).as_posix() for p in YAMLS])
def test_rlpost_validate_accepts_every_shipped_config(path, capsys):
    """CI's check that every shipped YAML starts: ``rlpost validate`` resolves it fully (registry names, component
    params and types, method and distributed rules, a known model's context window) without loading weights."""
    from rlpost.cli import main
    code = main(["validate", str(path), "-q"])
    err = capsys.readouterr().err
    assert code == 0, err


# ------------------------------------------------------------------ combination rules (rlpost/methods/*.validate)

def _cfg(*overrides):
    return load_checked(ROOT / "configs/tiny/arith_grpo.yaml", list(overrides))


@pytest.mark.parametrize("overrides, message", [
    # HAPO
    (["algo.loss=hapo"], "needs `method: {hapo: {}}`"),
    (["rollout.logits_processor=hapo_temperature"], "needs `method: {hapo: {}}`"),
    (["method.hapo={}"], "select at least one"),
    (["algo.advantage=hapo", "algo.scale_rewards=batch"], "scale_rewards=batch is not defined"),
    (["algo.advantage={name: adora, base: hapo}", "algo.scale_rewards=batch"], "base 'hapo' rejects"),
    (["algo.loss=hapo", "method.hapo={}", "algo.importance_sampling_level=sequence"], "would be ignored"),
    (["rollout.logits_processor=hapo_temperature", "method.hapo={}", "algo.vllm_importance_sampling_correction=true"],
     "importance-sampling correction"),
    (["rollout.logits_processor=hapo_temperature", "method.hapo={}", "rollout.engine=vllm_server"], "vllm_server"),
    (["rollout.logits_processor=hapo_temperature", "method.hapo={}", "rollout.temperature=0"], "greedy"),
    (["rollout.logits_processor={name: hapo_temperature, temperature_tau: 1.5}", "method.hapo={}"], "temperature_tau"),
    # ADORA
    (["method.adora={}"], "algo.advantage is not adora"),
    (["algo.advantage={name: adora, base: nope}"], "unknown base estimator"),
    (["algo.advantage={name: adora, tau: 1.5}"], "tau is a success-rate threshold"),
    (["algo.advantage={name: adora, kappa_tds: -1}"], "must be >= 0"),
    (["algo.advantage={name: adora, mode: sometimes}"], "mode must be one of"),
    # OBLR-PO
    (["algo.advantage=oblr"], "needs `method: {oblr: {}}`"),
    (["algo.advantage={name: oblr, weight: exact}"], "weight=exact"),
    (["method.oblr={}"], "drop it"),
    (["algo.advantage={name: oblr, weight: length}", "algo.scale_rewards=none"], "normalize_std"),
    (["algo.lr_controller=oblr_snr", "optim.micro_batch_size=128"], ">= 2 micro-batches"),
    (["algo.lr_controller=oblr_snr", "optim.micro_batch_size=16", "algo.dynamic_sampling=true"], "single group"),
    (["algo.lr_controller={name: oblr_snr, floor: 2}"], "floor"),
    # GAIN-RL
    (["data.sampler=gain_rl"], "needs `method: {gain_rl: {}}`"),
    (["method.gain_rl={}"], "set data.sampler"),
    (["data.sampler=gain_rl", "method.gain_rl={}", "data.num_train=8"], "distinct prompts per step"),
    (["data.sampler={name: gain_rl, acc_scale: 0}", "method.gain_rl={}"], "acc_scale"),
    (["data.sampler={name: gain_rl, sigma: -1}", "method.gain_rl={}"], "sigma"),
])
def test_combination_rules(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):   # load_checked resolves the config, methods included
        _cfg(*overrides)


@pytest.mark.parametrize("overrides", [
    ["algo.advantage=hapo"],                                               # HAPO's advantage alone needs no hooks
    ["algo.advantage={name: oblr, weight: uniform}"],                      # RLOO-like, no hooks
    ["algo.lr_controller=oblr_snr", "optim.micro_batch_size=32"],          # 4 micro-batches
    ["algo.lr_controller=oblr_snr", "optim.micro_batch_size=4", "algo.dynamic_sampling=true"],
    # per-rank micro-batch gradient norms gathered before the all-reduce (tests/distributed/test_snr_controller.py)
    ["algo.lr_controller=oblr_snr", "optim.micro_batch_size=32", "distributed.backend=deepspeed"],
    ["algo.lr_controller=oblr_snr", "optim.micro_batch_size=32", "distributed.backend=ddp"],
    ["algo.advantage={name: adora, base: rloo}"],
    ["data.sampler=random"],
])
def test_valid_combinations(overrides):
    validate_methods(_cfg(*overrides))
