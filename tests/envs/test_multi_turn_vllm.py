"""multi_turn on the vLLM engines (in-process ``vllm`` and an ``rlpost serve`` worker): feedback episodes whose
trained tokens the learner scores exactly as the sampler did (1e-4, the engines' fp32 tolerance on CPU), with the
feedback rendered by the chat template between the turns."""
import pytest
import torch

pytest.importorskip("vllm")

from rlpost.batch import collate  # noqa: E402
from rlpost.config import ModelConfig  # noqa: E402
from rlpost.engines.base import SamplingParams  # noqa: E402
from rlpost.learner import token_logprobs  # noqa: E402
from rlpost.models.loading import load_model, load_tokenizer  # noqa: E402
from rlpost.types import Prompt  # noqa: E402
from rlpost.workflows.multi_turn import MultiTurnWorkflow  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
TOKEN = "test-token-envs"


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    return load_tokenizer(str(tiny_model_path), ModelConfig())


@pytest.fixture(scope="module", params=["vllm", "vllm_server"])
def engine(request, tiny_model_path, tok, tmp_path_factory):
    if request.param == "vllm":
        from rlpost.engines.vllm_engine import VLLMEngine
        eng = VLLMEngine(str(tiny_model_path), tok, dtype="float32", gpu_memory_utilization=0.2, max_model_len=256)
        yield eng
        eng.close()
        return
    from rlpost.engines.vllm_server import VLLMServerEngine, start_workers, stop_workers
    handles = start_workers(str(tiny_model_path), 1, token=TOKEN, timeout_s=600,
                            engine_args=["--dtype", "float32", "--gpu-memory-utilization", "0.2", "--max-model-len", "256"],
                            log_dir=str(tmp_path_factory.mktemp("worker-logs")))
    eng = VLLMServerEngine([h.url for h in handles], tok, token=TOKEN, timeout_s=120)
    yield eng
    eng.close()
    stop_workers(handles, timeout_s=20)


def test_feedback_episodes_train_on_the_sampled_tokens(engine, tok, tiny_model_path):
    prompts = [Prompt(i, "", [{"role": "user", "content": "Guess my number (1-16)."}], {"answer": str(a)})
               for i, a in enumerate((3, 11))]
    wf = MultiTurnWorkflow(engine, tok, env="rlpost.envs.examples:GuessNumberEnv", max_turns=3, max_total_tokens=200)
    trajs = wf.rollout(prompts, SamplingParams(n=2, max_tokens=6, seed=0))
    assert max(t.info["turns"] for t in trajs) > 1
    for t in trajs:   # every observation is the template's rendering of the environment's message
        s, conv = t.samples[0], t.info["conversation"]
        feedback = [m["content"] for m in conv[2:] if m["role"] == "user"][: t.info["turns"] - 1]
        masked = tok.decode([i for i, m in zip(s.completion_ids, s.loss_mask) if not m], skip_special_tokens=False)
        assert masked == "".join(f"\n<|im_start|>user\n{f}<|im_end|>\n<|im_start|>assistant\n" for f in feedback)
    model = load_model(str(tiny_model_path), ModelConfig(), "cpu").eval()
    batch = collate(trajs, tok.pad_token_id)
    with torch.no_grad():
        logp, _ = token_logprobs(model, batch, 1.0, False)
    diff = ((logp - batch.sampler_logprobs).abs() * batch.response_mask).max().item()
    assert diff < 1e-4


def test_agent_workflow_trains_on_the_served_ids(engine, tok, tiny_model_path):
    """The agent workflow (rlpost/workflows/agent.py) on the same engines: the shipped calculator agent's requests
    through the openai client; the learner scores the recorded ids as the sampler did."""
    from rlpost.workflows.agent import AgentWorkflow
    prompts = [Prompt(i, "", [{"role": "user", "content": q}], {"answer": a})
               for i, (q, a) in enumerate((("12+34=", "46"), ("50+7=", "57")))]
    wf = AgentWorkflow(engine, tok, rollout="rlpost.envs.agent_examples:calculator_agent")
    trajs = wf.rollout(prompts, SamplingParams(n=2, max_tokens=12, seed=0))
    assert len(trajs) == 4 and all(t.info["requests"] >= 1 and t.samples[0].completion_ids for t in trajs)
    # both engines batch continuously: each request is its own call, seeded by (episode, request), not by timing
    again = wf.rollout(prompts, SamplingParams(n=2, max_tokens=12, seed=0))
    ids = lambda ts: [[s.completion_ids for s in t.samples] for t in ts]   # noqa: E731
    assert ids(again) == ids(trajs)
    model = load_model(str(tiny_model_path), ModelConfig(), "cpu").eval()
    batch = collate(trajs, tok.pad_token_id)
    with torch.no_grad():
        logp, _ = token_logprobs(model, batch, 1.0, False)
    assert ((logp - batch.sampler_logprobs).abs() * batch.response_mask).max().item() < 1e-4


def test_per_episode_rollouts(engine, tok, tiny_model_path):
    """schedule: per_episode on both engines (vllm_server: each episode's turn is its own request, batched
    continuously by the worker): several turns, trained tokens scored by the learner as the sampler did; on
    vllm_server a turn's seed is (episode, turn), so a second rollout gives the very same episodes."""
    prompts = [Prompt(i, "", [{"role": "user", "content": "Guess my number (1-16)."}], {"answer": str(a)})
               for i, a in enumerate((3, 11, 7))]
    wf = MultiTurnWorkflow(engine, tok, env="rlpost.envs.examples:GuessNumberEnv", max_turns=3, max_total_tokens=200,
                           schedule="per_episode")
    params = SamplingParams(n=2, max_tokens=6, seed=0)
    trajs = wf.rollout(prompts, params)
    assert len(trajs) == 6 and max(t.info["turns"] for t in trajs) > 1
    model = load_model(str(tiny_model_path), ModelConfig(), "cpu").eval()
    batch = collate(trajs, tok.pad_token_id)
    with torch.no_grad():
        logp, _ = token_logprobs(model, batch, 1.0, False)
    assert ((logp - batch.sampler_logprobs).abs() * batch.response_mask).max().item() < 1e-4
    assert engine.continuous_batching   # vllm: in process (EngineDriver); vllm_server: the workers' async engine
    if getattr(engine, "continuous_batching", False):
        again = wf.rollout(prompts, params)
        assert [t.samples[0].completion_ids for t in again] == [t.samples[0].completion_ids for t in trajs]
