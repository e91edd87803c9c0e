"""Shared fixtures. No test reaches a hub; the tiny model is built once per machine into .cache/."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RLPOST_CACHE", str(ROOT / ".cache"))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The warm-started tiny Qwen2 arithmetic model (built on first use, then cached)."""
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
