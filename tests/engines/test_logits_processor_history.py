"""The vLLM-side logits processor builds the [N, L] token history only for processors that read it.

Unit level (no engine start-up): RlpostLogitsProcessor is fed two rows of one registered call by hand.
"""
import pytest
import torch

pytest.importorskip("vllm")

from rlpost.algos.hapo import HAPOTemperature, HAPOTemperatureParams  # noqa: E402
from rlpost.algos.logits_processors import needs_input_ids  # noqa: E402
from rlpost.engines.vllm_worker import CallSpec, RlpostLogitsProcessor, register_call, unregister_call  # noqa: E402


class Recorder:
    """Returns the logits unchanged and records what it was given as input_ids."""

    def __init__(self, needs=None):
        if needs is not None:
            self.needs_input_ids = needs
        self.seen = []

    def __call__(self, step, input_ids, logits):
        self.seen.append(None if input_ids is None else input_ids.clone())
        return logits


def run(processors):
    proc = RlpostLogitsProcessor(None, torch.device("cpu"), False)
    # batch index -> (call id, row, prompt ids, generated ids): two rows, prompts of 3 and 2 tokens, 1 token out
    proc.rows = {0: ("c", 0, [5, 6, 7], [9]), 1: ("c", 1, [5, 6], [8])}
    register_call("c", CallSpec(processors=processors, temperature=1.0, top_k=0, top_p=1.0, want_entropy=False,
                                pad_id=0))
    try:
        return proc.apply(torch.zeros(2, 12))
    finally:
        unregister_call("c")


def test_hapo_temperature_gets_no_history_and_a_processor_that_asks_does():
    hapo = HAPOTemperature(HAPOTemperatureParams(temperature_tau=0.1),
                           state={"q": 0.0, "sigma": 1.0, "h_pos_max": 2.0, "h_neg_min": -2.0})
    spy = Recorder(needs=False)
    assert HAPOTemperature.needs_input_ids is False and not needs_input_ids([hapo, spy])
    run([hapo, spy])
    assert spy.seen == [None]                                        # nothing built for HAPO's call

    asks = Recorder(needs=True)
    run([hapo, asks])
    assert asks.seen[0].tolist() == [[5, 6, 7, 9], [0, 5, 6, 8]]     # left-padded prompt + generated ids


def test_a_processor_that_declares_nothing_still_gets_the_history():
    plain = Recorder()                                               # e.g. a user's function
    assert needs_input_ids([plain])
    run([plain])
    assert plain.seen[0].shape == (2, 4)
