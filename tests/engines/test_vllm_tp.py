"""Rollout tensor parallelism for real: one ``rlpost serve --tensor-parallel-size 2`` worker on vLLM's CPU build
(two vLLM worker processes, gloo/shm between them; the tiny Qwen2 has 2 KV heads, one per rank). Generation, a
weight sync over both transports reaching both shards, and sampler/learner log-prob agreement."""
import pytest
import torch

pytest.importorskip("vllm")

from rlpost.config import ModelConfig  # noqa: E402
from rlpost.engines.base import EngineError, SamplingParams  # noqa: E402
from rlpost.engines.vllm_server import VLLMServerEngine, start_workers, stop_workers  # noqa: E402
from rlpost.models.loading import load_model, load_tokenizer  # noqa: E402

from tests.engines.test_vllm_server import ENGINE_ARGS, TOL, learner_diff, requests_for  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
if torch.cuda.is_available() and torch.cuda.device_count() < 2:   # the CPU build runs both ranks on its cores
    pytest.skip("tensor_parallel_size=2 on a CUDA build needs 2 GPUs", allow_module_level=True)


@pytest.fixture(scope="module")
def tp_client(tiny_model_path, tmp_path_factory):
    handles = start_workers(str(tiny_model_path), 1, engine_args=ENGINE_ARGS, timeout_s=600, tensor_parallel_size=2,
                            log_dir=str(tmp_path_factory.mktemp("tp-worker-logs")))
    tok = load_tokenizer(str(tiny_model_path), ModelConfig())
    eng = VLLMServerEngine([h.url for h in handles], tok, timeout_s=120, workers=handles)
    yield eng, tok, handles[0]
    eng.close()
    stop_workers(handles, timeout_s=20)


def test_two_ranks_generate_what_the_learner_scores(tp_client, tiny_model_path):
    eng, tok, worker = tp_client
    log = open(worker.log_path).read()
    assert "Worker_TP0" in log and "Worker_TP1" in log, "a --tensor-parallel-size 2 worker runs a vLLM process per rank"
    samples = eng.generate(requests_for(tok, 3), SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=5))
    assert len(samples) == 6 and all(s.completion_ids for s in samples)
    model = load_model(str(tiny_model_path), ModelConfig(), "cpu")
    assert learner_diff(model, tok, samples) < TOL


@pytest.mark.parametrize("transport", ["file", "dist"])
def test_weight_sync_reaches_both_shards(tp_client, tiny_model_path, transport, tmp_path):
    """Every q/k/v/o, gate/up/down and embedding row is split between the ranks: only if each rank loaded its own
    slice of the new weights do the sampler's log-probs match the perturbed learner's."""
    eng, tok, _ = tp_client
    model = load_model(str(tiny_model_path), ModelConfig(), "cpu")
    reqs, params = requests_for(tok, 3), SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=3)
    before = eng.generate(reqs, params)
    torch.manual_seed(0 if transport == "file" else 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    eng.weight_sync, eng.weight_sync_dir = transport, str(tmp_path)
    eng.load_weights(model.named_parameters())
    after = eng.generate(reqs, params)
    assert learner_diff(model, tok, after) < TOL
    assert learner_diff(model, tok, before) > 1e-2
    eng.load_weights(load_model(str(tiny_model_path), ModelConfig(), "cpu").named_parameters())   # restore


def test_in_sampler_processing_is_refused_with_the_reason(tp_client):
    eng, tok, _ = tp_client
    with pytest.raises(EngineError, match="tensor_parallel_size=2.*worker processes"):
        eng.generate(requests_for(tok, 1), SamplingParams(n=1, max_tokens=4, return_entropy=True))
