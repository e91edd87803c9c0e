"""Character-level tokenizers with each model family's special tokens and its official chat template
(tests/envs/chat_templates/, copied from TRL; no hub). Every printable ASCII character and the newline is one
token, so a test can write the expected strings by hand."""
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rlpost.models.tokenizer import CHARS, byte_level_symbol

TEMPLATES = Path(__file__).parent / "chat_templates"
CHATML = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
         "<|eom_id|>", "<|python_tag|>"]
HARMONY = ["<|endoftext|>", "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>",
           "<|call|>"]
GLM = ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
DEEPSEEK = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
            "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>",
            "<｜tool▁sep｜>", "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>",
            "<｜tool▁output▁end｜>"]

# family -> (template file, special tokens, eos (the end of an assistant turn), bos or None, tool-call parser)
FAMILIES = {
    "qwen2_5": ("qwen2_5", CHATML, "<|im_end|>", None, "hermes"),
    "qwen3": ("qwen3", CHATML, "<|im_end|>", None, "hermes"),
    "qwen3_5_think": ("qwen3_5_think", CHATML, "<|im_end|>", None, "qwen3_xml"),
    "qwen3_5_nothink": ("qwen3_5_nothink", CHATML, "<|im_end|>", None, "qwen3_xml"),
    "qwen3_2507": ("qwen3_instruct_2507", CHATML, "<|im_end|>", None, "hermes"),
    "llama3_1": ("llama3_1", LLAMA, "<|eot_id|>", "<|begin_of_text|>", "llama3_json"),
    "llama3_2": ("llama3_2", LLAMA, "<|eot_id|>", "<|begin_of_text|>", "llama3_json"),
    "gpt_oss": ("gptoss", HARMONY, "<|return|>", None, "harmony"),
    "glm4": ("glm4moe", GLM, "<|user|>", None, "glm4"),
    "deepseek_r1_distill": ("deepseek_r1_distill", DEEPSEEK, "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>",
                            "hermes"),
}


def build_family_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """The character tokenizer with ``family``'s special tokens (ids first) and its official chat template."""
    template, specials, eos, bos, _ = FAMILIES[family]
    specials = list(dict.fromkeys(specials + ["<unk>"]))
    vocab = {tok: i for i, tok in enumerate(specials + [byte_level_symbol(c) for c in CHARS])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    pad = specials[0]
    others = [s for s in specials if s not in (eos, pad, bos, "<unk>")]
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, pad_token=pad, unk_token="<unk>",
                                  bos_token=bos, additional_special_tokens=others)
    tok.chat_template = (TEMPLATES / f"{template}.jinja").read_text()
    return tok
