"""The shipped tool-using warm start: it resolves without a build, its card carries its numbers, and greedily it
answers directly (the behaviour configs/tiny/arith_tool_calculator.yaml's RL moves away from)."""
import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlpost.engines.base import SamplingParams
from rlpost.engines.hf import HFEngine
from rlpost.types import Prompt
from rlpost.workflows.multi_turn import MultiTurnWorkflow


def test_the_calculator_tool_checkpoint_is_shipped_with_its_card():
    import rlpost.models.tiny as tiny
    path = tiny.ensure_tiny("tiny:qwen2:calculator_tool")
    assert path == tiny.SHIPPED_DIR / "qwen2-calculator_tool"
    stages = json.loads((path / "rlpost_study.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["1-format", "2-copy", "3-direct"]
    card = (path / "CARD.md").read_text()
    assert f"{stages[1]['greedy']['accuracy']:.3f}" in card and f"{stages[2]['sampled']['accuracy']:.3f}" in card
    with pytest.raises(ValueError, match="scripts/tool_pretrain.py"):
        tiny.ensure_tiny("tiny:qwen2:calculator_tool:1")


def test_greedy_answers_directly_and_the_tool_path_is_known():
    import rlpost.models.tiny as tiny
    path = tiny.ensure_tiny("tiny:qwen2:calculator_tool")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    wf = MultiTurnWorkflow(HFEngine(model, tok), tok, env="rlpost.envs.examples:CalculatorEnv",
                           env_kwargs={"system_prompt": "Use the calculator."}, max_turns=3, max_total_tokens=384)
    prompt = Prompt(0, "", [{"role": "user", "content": "123+456="}], {"answer": "579"})
    (traj,) = wf.rollout([prompt], SamplingParams(n=1, temperature=0.0, max_tokens=96))
    assert traj.info["tool_calls"] == 0 and traj.final_text.startswith("The answer is ")
