"""rollout.tensor_parallel_size with the rest of a config: what validates, and what is refused with the reason."""
import pytest

from rlpost.config import ConfigError
from rlpost.resolve import load_resolved

CFG = "configs/tiny/arith_grpo.yaml"
TP = ["rollout.engine=vllm", "rollout.tensor_parallel_size=2"]


@pytest.mark.parametrize("config, extra", [(CFG, []), (CFG, ["rollout.async_level=1"]), (CFG, ["model.lora.r=8"]),
                                           ("configs/tiny/guess_number_feedback.yaml", ["rollout.async_level=1"]),
                                           ("configs/tiny/arith_tool_calculator.yaml", []),
                                           (CFG, ["rollout.top_p=0.9", "rollout.return_entropy=true"]),
                                           ("configs/tiny/arith_hapo.yaml", [])])
def test_tp_validates_with_async_lora_multi_turn_and_in_sampler_processing(config, extra):
    cfg, resolved = load_resolved(config, TP + extra, world_size=1)
    assert resolved["rollout"]["tensor_parallel_size"] == 2


@pytest.mark.parametrize("extra, world, reason", [
    (["rollout.engine=hf"], 1, "applies to rollout.engine=vllm only"),
    (["rollout.engine=vllm_server", "rollout.server_urls=[http://127.0.0.1:1]"], 1, "--tensor-parallel-size"),
    (["distributed.backend=ddp"], 2, "WORLD_SIZE=2: every learner rank would start its own"),
])
def test_what_tp_cannot_do_is_refused_with_the_reason(extra, world, reason):
    with pytest.raises(ConfigError, match="tensor_parallel_size=2") as err:
        load_resolved(CFG, TP + extra, world_size=world)
    assert reason in str(err.value)


def test_serve_checks_its_parallel_sizes():
    from rlpost.commands.serve import check_parallel
    check_parallel(2, 1)
    check_parallel(1, 2)   # data parallelism: engine cores of one worker (tests/engines/test_vllm_tp.py, dp2)
    with pytest.raises(ConfigError, match="--data-parallel-size must be >= 1, got 0"):
        check_parallel(1, 0)
    with pytest.raises(ConfigError, match="--tensor-parallel-size must be >= 1"):
        check_parallel(0, 1)


def test_the_colocated_engine_gets_the_configured_tp_size(monkeypatch):
    """rollout.tensor_parallel_size reaches vllm.LLM's keywords through VLLMEngine.from_config (the engine itself runs
    under TP in tests/engines/test_vllm_tp.py, behind rlpost serve)."""
    pytest.importorskip("vllm")
    from rlpost.engines import vllm_engine
    seen = {}
    monkeypatch.setattr(vllm_engine.VLLMEngine, "__init__", lambda self, *a, **kw: seen.update(kw))
    cfg, _ = load_resolved(CFG, TP, world_size=1)
    vllm_engine.VLLMEngine.from_config(cfg, "unused", tokenizer=None)
    assert seen["tensor_parallel_size"] == 2
    assert vllm_engine.tensor_parallel_kwargs(1) == {}
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "auto")   # so that teardown undoes what the call may set
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND")
    assert vllm_engine.tensor_parallel_kwargs(2)["distributed_executor_backend"] == "mp"
