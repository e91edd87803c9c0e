"""Adapter-only LoRA sync (rlpost/models/lora_sync.py, model.lora.sync): the adapter versions engines load, their
peft-layout files, vLLM's rank limits, the live set an engine keeps, and which runs resolve to which sync.
Engines with real vLLM: tests/engines/test_vllm.py (log-probs) and tests/engines/test_async_vllm_server.py (an
async run on a worker)."""
import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict

from rlpost.config import ConfigError, load_config
from rlpost.models.lora_sync import (AdapterWeights, LiveAdapters, adapter_weights, read_adapter, vllm_max_lora_rank,
                                     write_adapter)
from rlpost.models.lora_sync import lora_engine_args, lora_sync
from rlpost.resolve import resolve_train


@pytest.fixture()
def peft_model(random_tiny_model):
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)  # B != 0
    return get_peft_model(copy.deepcopy(random_tiny_model).float(), cfg)


def test_adapter_files_load_in_peft_as_the_trained_policy(peft_model, random_tiny_model, tmp_path):
    """What an engine receives is the adapter alone (2 * r * (d_in + d_out) values per adapted linear) and
    peft loads the written directory back into the same policy."""
    adapter = adapter_weights(peft_model, "policy-v3")
    assert adapter.name == "policy-v3" and adapter.rank == 4 and adapter.config["r"] == 4
    assert all(".lora_A." in k or ".lora_B." in k for k, _ in adapter.tensors)
    assert sorted(k for k, _ in adapter.tensors) == sorted(get_peft_model_state_dict(peft_model))   # peft's keys
    linears = [m for n, m in random_tiny_model.named_modules()
               if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]
    assert adapter.nbytes == 4 * sum(4 * (m.in_features + m.out_features) for m in linears)   # fp32: 4 bytes
    path = write_adapter(adapter, tmp_path / "v3")
    loaded = PeftModel.from_pretrained(copy.deepcopy(random_tiny_model).float(), path).eval()
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, peft_model.eval()(ids).logits, atol=1e-6)
    back = read_adapter(path, "again")
    assert back.name == "again" and back.config == adapter.config
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(sorted(back.tensors), sorted(adapter.tensors)))


def test_vllm_max_lora_rank_is_the_smallest_allowed_value():
    assert [vllm_max_lora_rank(r) for r in (1, 2, 8, 9, 64, 300, 512)] == [1, 8, 8, 16, 64, 320, 512]
    with pytest.raises(ValueError, match="512"):
        vllm_max_lora_rank(513)


def test_live_adapters_keep_the_newest_and_never_reuse_an_id():
    live = LiveAdapters(2)
    assert live.add("policy-v0") == (1, [])
    assert live.add("policy-v1") == (2, [])
    assert live.touch("policy-v0") == 1                  # v0 is now the newest: v1 goes first
    assert live.add("policy-v2") == (3, [2])
    assert live.names() == ["policy-v0", "policy-v2"] and live.touch("policy-v1") is None
    assert live.add("policy-v2") == (4, [3])             # a name loaded again: new content, new id
    with pytest.raises(ValueError):
        LiveAdapters(0)


def test_adapter_rank_counts_the_rank_pattern():
    assert AdapterWeights("a", [], {"r": 8, "rank_pattern": {"q_proj": 32}}).rank == 32


GRPO = "configs/tiny/arith_grpo.yaml"


def cfg_for(*overrides):
    return load_config(GRPO, ["model.lora.r=8", *overrides])


@pytest.mark.parametrize("overrides, mode, reason", [
    (["rollout.engine=vllm"], "adapter", None),
    (["rollout.engine=vllm_server", "rollout.server_urls=[http://127.0.0.1:9]"], "adapter", None),
    (["rollout.engine=vllm", "model.lora.sync=merged"], "merged", None),
    (["rollout.engine=hf"], "merged", "rollout.engine=hf loads no adapters"),
    (["rollout.engine=vllm", "model.lora.modules_to_save=[lm_head]"], "merged", "modules_to_save"),
    (["rollout.engine=vllm", "model.lora.bias=all"], "merged", "trained biases"),
    (["rollout.engine=vllm", "model.lora.init_lora_weights=pissa"], "merged", "changes the base weights"),
    (["rollout.engine=vllm", "model.lora.target_modules=[q_proj,lm_head]"], "merged", "lm_head"),
    (["rollout.engine=vllm", "model.lora.r=1024"], "merged", "above vLLM's largest"),
    (["rollout.engine=vllm", "model.load_in_4bit=true"], "merged", "quantisation error"),
    (["rollout.engine=vllm", "distributed.backend=fsdp2"], "merged", "sharded across ranks"),
    (["rollout.engine=vllm", "distributed.backend=deepspeed", "distributed.zero_stage=3"], "merged", "zero_stage=3"),
])
def test_the_default_falls_back_to_merged_with_the_reason(overrides, mode, reason):
    got, why = lora_sync(cfg_for(*overrides))
    assert got == mode
    assert (why is None) if reason is None else (reason in why)


@pytest.mark.parametrize("overrides, reason", [
    (["model.lora.modules_to_save=[lm_head]"], "modules_to_save"),
    (["distributed.backend=fsdp2"], "adapter sync does not gather it"),
    (["model.load_in_4bit=true"], "4-bit"),
])
def test_explicit_adapter_sync_that_cannot_work_is_refused(overrides, reason):
    with pytest.raises(ConfigError, match=f"model.lora.sync=adapter cannot work here: .*{reason}"):
        lora_sync(cfg_for("rollout.engine=vllm", "model.lora.sync=adapter", *overrides))
    with pytest.raises(ConfigError, match="model.lora.sync must be adapter or merged"):
        load_config(GRPO, ["model.lora.r=8", "model.lora.sync=delta"])


def test_resolved_config_and_engine_args():
    cfg = cfg_for("rollout.engine=vllm", "rollout.async_level=1", "model.lora.r=12")
    assert resolve_train(cfg)["model"]["lora"]["sync"] == "adapter"
    assert lora_engine_args(cfg) == {"max_lora_rank": 16, "max_loras": 2}
    assert lora_engine_args(cfg_for("rollout.engine=vllm", "model.lora.sync=merged")) == {}
    assert resolve_train(cfg_for("rollout.engine=hf"))["model"]["lora"]["sync"] == "merged"


class AdapterEngine:
    """Holds ``capacity`` live adapters like the vLLM engines; records what each generation ran with."""

    def __init__(self, capacity: int):
        self.live, self.active, self.loads = LiveAdapters(capacity), None, []

    def load_adapter(self, adapter):
        self.live.add(adapter.name)
        self.active = adapter.name
        self.loads.append((adapter.name, float(dict(adapter.tensors)[FIRST_B].sum())))

    def use_adapter(self, name):
        if self.live.touch(name) is None:
            return False
        self.active = name
        return True

    def load_weights(self, named):
        raise AssertionError("adapter sync sends no full weights to an engine whose base is the learner's")


FIRST_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


class ActiveAdapterWorkflow:
    def __init__(self, engine):
        self.engine = engine

    def rollout(self, draws, params):
        from rlpost.types import Sample, Trajectory
        return [Trajectory(prompt=d, group_id=d.id, samples=[Sample([1], [2], [0.0])], final_text=self.engine.active)
                for d in draws]


class VersionScorer:
    def score(self, trajs):
        for t in trajs:
            t.reward = float(t.final_text.removeprefix("policy-v"))
        return {}

    def metrics(self, trajs, components):
        return {}


def test_async_pipeline_generates_each_batch_with_its_versions_adapter(peft_model):
    """k = 1 with adapter sync: the engine gets policy-v{version} adapters only (no full weights), each batch runs
    with the adapter of its behaviour version, and each adapter carries that version's weights."""
    from rlpost.distributed import Runtime
    from rlpost.rollout import RolloutPipeline, behaviour_version
    from rlpost.samplers import build_sampler
    from rlpost.timing import PhaseTimes
    from rlpost.types import Prompt
    cfg = cfg_for("rollout.engine=vllm", "rollout.async_level=1", "rollout.prompts_per_step=2", "trainer.max_steps=5")
    engine = AdapterEngine(capacity=2)
    pipe = RolloutPipeline(cfg, engine=engine, workflow=ActiveAdapterWorkflow(engine), scorer=VersionScorer(),
                           prompts=[Prompt(i, "p") for i in range(8)], sampler=build_sampler("uniform", 8, 0, True),
                           methods={}, dist=Runtime(), model=peft_model, times=PhaseTimes())
    b = dict(peft_model.named_parameters())[FIRST_B.replace("lora_B.weight", "lora_B.default.weight")]
    seen = []
    try:
        pipe.start(0)
        for step in range(5):
            trajs, _ = pipe.batch(step)
            seen.append({t.reward for t in trajs})
            with torch.no_grad():
                b.fill_(step + 1)                # the update: version v has B[0] = v everywhere (v > 0)
            pipe.publish(step + 1)
    finally:
        pipe.close()
    assert seen == [{float(behaviour_version(t, 1))} for t in range(5)]
    names = [name for name, _ in engine.loads]
    assert names[:4] == ["policy-v0", "policy-v1", "policy-v2", "policy-v3"]   # one load per version
    sums = dict(engine.loads)
    assert [sums[f"policy-v{v}"] for v in (1, 2, 3)] == [float(b.numel() * v) for v in (1, 2, 3)]
