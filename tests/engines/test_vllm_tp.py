"""Rollout tensor and data parallelism for real, on vLLM's CPU build: one ``rlpost serve --tensor-parallel-size 2``
worker (two vLLM worker processes, gloo/shm between them; the tiny Qwen2 has 2 KV heads, one per rank) and one
``rlpost serve --data-parallel-size 2`` worker (two engine cores, requests balanced over them by vLLM).
Generation, a weight sync over both transports reaching both shards / both cores, sampler/learner log-prob
agreement, and rlpost's logits processor (entropies, top-k/top-p) running on the ranks / cores."""
import pytest
import torch

pytest.importorskip("vllm")

from rlpost.config import ModelConfig  # noqa: E402
from rlpost.engines.base import SamplingParams  # noqa: E402
from rlpost.engines.vllm_server import VLLMServerEngine, start_workers, stop_workers  # noqa: E402
from rlpost.models.loading import load_model, load_tokenizer  # noqa: E402

from tests.engines.test_vllm_server import ENGINE_ARGS, TOL, learner_diff, requests_for  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
if torch.cuda.is_available() and torch.cuda.device_count() < 2:   # the CPU build runs both ranks on its cores
    pytest.skip("tensor_parallel_size=2 on a CUDA build needs 2 GPUs", allow_module_level=True)


@pytest.fixture(scope="module", params=["tp2", "dp2"])
def tp_client(request, tiny_model_path, tmp_path_factory):
    tp, extra = (2, []) if request.param == "tp2" else (1, ["--data-parallel-size", "2"])
    handles = start_workers(str(tiny_model_path), 1, engine_args=ENGINE_ARGS + extra, timeout_s=600,
                            tensor_parallel_size=tp, log_dir=str(tmp_path_factory.mktemp(f"{request.param}-logs")))
    tok = load_tokenizer(str(tiny_model_path), ModelConfig())
    eng = VLLMServerEngine([h.url for h in handles], tok, timeout_s=120, workers=handles)
    yield eng, tok, handles[0]
    eng.close()
    stop_workers(handles, timeout_s=20)


def test_two_ranks_generate_what_the_learner_scores(tp_client, tiny_model_path):
    eng, tok, worker = tp_client
    log = open(worker.log_path).read()
    if "Worker_TP1" not in log:   # the data-parallel worker: two engine cores
        assert "EngineCore_DP0" in log and "EngineCore_DP1" in log, "a --data-parallel-size 2 worker runs 2 cores"
    else:
        assert "Worker_TP0" in log, "a --tensor-parallel-size 2 worker runs a vLLM process per rank"
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


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, 5, 1.0), (1.2, 0, 0.8)])
def test_entropies_and_truncation_run_on_the_ranks(tp_client, tiny_model_path, temperature, top_k, top_p):
    """rlpost's logits processor runs in each rank's process: entropies and the top-k/top-p kept-mass correction
    come back from rank 0 and match the learner (log softmax(z/T) before truncation, entropy of softmax(z/T))."""
    from tests.engines.test_vllm import learner_view, max_diff
    eng, tok, _ = tp_client
    samples = eng.generate(requests_for(tok, 3), SamplingParams(n=2, temperature=temperature, top_k=top_k,
                                                                top_p=top_p, max_tokens=8, seed=3, return_entropy=True))
    batch, logp, ent = learner_view(load_model(str(tiny_model_path), ModelConfig(), "cpu"), tok, samples, temperature)
    assert max_diff(logp, batch.sampler_logprobs, batch.response_mask) < TOL
    assert max_diff(ent, batch.sampler_entropies, batch.response_mask) < TOL
