"""Fixtures for the A²FM and APR end-to-end tests: random tiny models with the phrase tokenizers, and a
few fast RL steps through `rlpost train`."""
import json

import pytest

# Two steps of 2 prompts x 2 completions, 16 training and 4 held-out prompts.
FAST = ["trainer.max_steps=2", "rollout.prompts_per_step=2", "rollout.num_generations=2", "data.num_train=16",
        "data.num_eval=4", "trainer.progress_bar=false"]


def _random_model(out_dir, tokenizer):
    """A random 1-layer LLaMA with ``tokenizer`` saved to ``out_dir`` (what the pretrain scripts save, untrained)."""
    from rlpost.studies.common import save_model, scratch_model
    model, tok = scratch_model(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=128,
                               tokenizer=tokenizer)
    return save_model(model, tok, out_dir)


@pytest.fixture(scope="module")
def a2fm_model(tmp_path_factory):
    """A random tiny model with the A²FM phrase tokenizer."""
    from rlpost.studies.phrase_tokenizer import a2fm_tokenizer
    return _random_model(tmp_path_factory.mktemp("a2fm") / "model", a2fm_tokenizer())


@pytest.fixture(scope="module")
def apr_model(tmp_path_factory):
    """A random tiny model with the APR phrase tokenizer."""
    from rlpost.studies.phrase_tokenizer import apr_tokenizer
    return _random_model(tmp_path_factory.mktemp("apr") / "model", apr_tokenizer())


@pytest.fixture
def train_fast():
    """``train_fast(recipe, model, out, *overrides)``: `rlpost train` with :data:`FAST` then ``overrides`` (which
    win); asserts it succeeds and returns the rows of ``out/metrics.jsonl``."""
    from rlpost.cli import main

    def train(recipe, model, out, *overrides):
        assert main(["train", recipe, f"model.name_or_path={model}", f"trainer.output_dir={out}", *FAST,
                     *overrides]) == 0
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return train
