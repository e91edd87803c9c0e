"""A character-level tokenizer with a chat template and special tokens, built from code.

Every printable ASCII character and the newline is one token; ``<|im_start|>``, ``<|im_end|>`` and
``<|endoftext|>`` are special tokens. It is a real ``PreTrainedTokenizerFast``: it saves with
``save_pretrained``, loads with ``AutoTokenizer.from_pretrained`` and works with vLLM.

Why byte-level symbols: transformers 5 loads a folder whose config says ``model_type: qwen2`` with
``Qwen2Tokenizer``, which rebuilds the tokenizer from vocab + merges with Qwen's byte-level
pre-tokenizer, whatever ``tokenizer.json`` says. Storing each character as its byte-level symbol
(space -> "Ġ", newline -> "Ċ") with no merges makes that rebuild produce exactly the same ids.
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
CHARS = ["\n"] + [chr(c) for c in range(32, 127)]

# Qwen-style ChatML template
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_level_symbol(char: str) -> str:
    """GPT-2's byte -> printable unicode map for one ASCII character."""
    code = ord(char)
    if 33 <= code <= 126:
        return char
    return chr(256 + sum(1 for b in range(code) if not 33 <= b <= 126 and not 161 <= b <= 172 and not 174 <= b <= 255))


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """Build the tokenizer; ids: specials 0..3, then the characters in ``CHARS`` order."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + [byte_level_symbol(c) for c in CHARS])}
    # BPE with no merges leaves every (byte-level) character a token of its own.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token="<unk>", bos_token=None, additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok
