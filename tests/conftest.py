"""Shared fixtures. No test reaches a hub; tiny models are the shipped checkpoints (nothing is warm-started)."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RLPOST_CACHE", str(ROOT / ".cache"))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def learning_seed() -> int:
    """The training seed of the tests that assert a learning outcome (marker ``learning``). CI runs seed 0;
    ``python scripts/learning_spread.py`` runs them for seeds 0, 1, 2 on the native and a capped float path and
    prints the spread of every value they report, which is what their margins rest on."""
    return int(os.environ.get("RLPOST_TEST_SEED", "0"))


@pytest.fixture(scope="session")
def report_learning():
    """``report_learning(name, value)``: record a learned quantity (a gain, an accuracy) for
    scripts/learning_spread.py (appended to ``$RLPOST_LEARNING_LOG`` when set; a no-op otherwise)."""
    import json

    def report(name: str, value: float) -> None:
        log = os.environ.get("RLPOST_LEARNING_LOG")
        if log:
            with open(log, "a") as f:
                f.write(json.dumps({"name": name, "value": float(value),
                                    "seed": int(os.environ.get("RLPOST_TEST_SEED", "0"))}) + "\n")
    return report


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The shipped tiny Qwen2 arithmetic checkpoint (rlpost/models/tiny_checkpoints/qwen2-arithmetic)."""
    from rlpost.models.tiny import ensure_tiny
    return ensure_tiny("tiny:qwen2:arithmetic")


@pytest.fixture(scope="session")
def char_tokenizer():
    from rlpost.models.tokenizer import build_char_tokenizer
    return build_char_tokenizer()


@pytest.fixture(scope="session")
def random_tiny_model(char_tokenizer):
    """A random-weight tiny Qwen2 (no warm start): fast to build, real transformers model."""
    import torch
    from rlpost.models.tiny import TinySpec, build_model
    torch.manual_seed(0)
    tok = char_tokenizer
    return build_model(TinySpec(hidden_size=64, num_heads=2, num_kv_heads=1, intermediate_size=128),
                       len(tok), tok.eos_token_id, tok.pad_token_id).eval()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread: on a shared CPU an oversubscribed OpenMP pool is 10-50x slower.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
