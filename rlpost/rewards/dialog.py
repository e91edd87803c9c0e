"""DailyDialog rewards and evaluation score of constrained RLHF (Moskovitz et al., ICLR 2024, App. A.2).

Component rewards (one per completion, TRL convention; ``answer`` is the reference reply):

    meteor         METEOR of the reply against the reference (nltk's ``meteor_score``, which needs WordNet)
    intent_match   1 when a sequence classifier (the paper: a fine-tuned RoBERTa over DailyDialog's four
                   intents) gives the reply the reference's intent, else 0; the reference intent is the
                   row's ``intent`` column when present, else the classifier's label for the reference

Evaluation score (the "ground truth" NM-PPO maximises; computed over the whole held-out set, not per sample):

    crlhf_score = 1/2 [ (SacreBLEU + ROUGE-2 + BLEU) / 3 + (unique-3 + vocab_size-3-nopunct + max_pred_length-nopunct) / 3 ]

each term min-max normalised with the reference code's ranges (``CRLHFEvaluationMetric``), reported as
``eval/crlhf_score`` plus every raw term (``trainer.eval_metrics: [crlhf_score]``).

The packages (nltk + WordNet, sacrebleu, rouge-score) and the intent classifier are not rlpost dependencies:
each is checked when the reward or metric is built, before training, with one error saying how to provide it.
"""
from __future__ import annotations

import string
from collections import Counter
from pathlib import Path

from rlpost.config import ConfigError
from rlpost.registry import Registry
from rlpost.rewards import REWARDS

EVAL_METRICS = Registry("evaluation metric")

_INSTALL = {
    "nltk": "pip install nltk && python -m nltk.downloader wordnet omw-1.4 (offline: copy an nltk_data folder "
            "holding corpora/wordnet and set NLTK_DATA)",
    "sacrebleu": "pip install sacrebleu",
    "rouge_score": "pip install rouge-score",
}


class MissingDependency(ConfigError):
    """A reward or metric needs a package, a data file or a model that is not here."""


def _require(module: str, who: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(f"{who} needs the {module!r} package, which is not installed: {_INSTALL[module]}") from None


def _words(text: str) -> list[str]:
    return text.strip().split()


@REWARDS.register("meteor")
class MeteorReward:
    """METEOR(reply, reference) in [0, 1] per completion (the paper's METEOR component RM).

    Built once (``rewards: [{name: meteor}]``): checks nltk and its WordNet data before training."""

    name = "meteor"

    @staticmethod
    def preflight(**kwargs) -> list[str]:
        """What would stop the build here (``rlpost doctor``): nltk's WordNet data missing (nltk itself is a package)."""
        import importlib.util
        if importlib.util.find_spec("nltk") is None:
            return []   # reported by the package check
        import nltk
        try:
            nltk.data.find("corpora/wordnet")
        except LookupError:
            try:
                nltk.data.find("corpora/wordnet.zip")
            except LookupError:
                return [f"nltk's WordNet data is not found: {_INSTALL['nltk']}"]
        return []

    def __init__(self, alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5):
        nltk = _require("nltk", "reward meteor")
        from nltk.translate.meteor_score import meteor_score
        try:
            nltk.corpus.wordnet.ensure_loaded()
        except LookupError:
            raise MissingDependency(f"reward meteor needs nltk's WordNet data, which is not found: {_INSTALL['nltk']}") from None
        self._score = meteor_score
        self.params = dict(alpha=alpha, beta=beta, gamma=gamma)

    def __call__(self, prompts, completions, answer, **kwargs) -> list[float]:
        return [float(self._score([_words(ref)], _words(reply), **self.params)) for reply, ref in zip(completions, answer)]


@REWARDS.register("intent_match")
class IntentMatchReward:
    """1.0 when the classifier's intent for the reply equals the reference intent, else 0.0.

    path: a ``transformers`` sequence-classification model folder (the paper: RoBERTa fine-tuned on
    DailyDialog's intents); ``intent_column`` (default ``intent``) holds the reference intent as the label name
    or id when the dataset has it, else the classifier labels the reference reply itself."""

    name = "intent"

    def __init__(self, path: str, name: str = "intent", intent_column: str = "intent", batch_size: int = 64,
                 device: str = "cpu", max_length: int = 128):
        if not Path(path).exists():
            raise MissingDependency(
                f"reward intent_match: no intent classifier at {path!r}. Give a transformers sequence-classification "
                "model folder (the paper fine-tunes roberta-base on DailyDialog's four intents: inform, question, "
                "directive, commissive; see recipes/constrained_rlhf/README.md)")
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        self.name, self.intent_column, self.batch_size, self.max_length = name, intent_column, batch_size, max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        self.device = device
        self.label_ids = {str(v).lower(): int(k) for k, v in (self.model.config.id2label or {}).items()}

    def predict(self, texts: list[str]) -> list[int]:
        import torch
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                out += self.model(**enc).logits.argmax(-1).tolist()
        return out

    def _label(self, value) -> int:
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            return int(value)
        if str(value).lower() not in self.label_ids:
            raise ValueError(f"reward intent_match: intent {value!r} is not a label of the classifier "
                             f"({sorted(self.label_ids)})")
        return self.label_ids[str(value).lower()]

    def __call__(self, prompts, completions, answer=None, **columns) -> list[float]:
        refs = columns.get(self.intent_column)
        if refs is None or any(r is None for r in refs):
            if answer is None:
                raise ValueError("reward intent_match needs an `intent` column or the reference reply as `answer`")
            ref_ids = self.predict(list(answer))
        else:
            ref_ids = [self._label(r) for r in refs]
        return [float(p == r) for p, r in zip(self.predict(list(completions)), ref_ids)]


# --------------------------------------------------------------------------------------------- evaluation score

# min-max ranges of the reference code (rl4lms CRLHFEvaluationMetric), per term
CRLHF_RANGES = {"bleu": (0.0, 0.004677), "sacrebleu": (5.33e-6, 0.11063), "rouge2": (0.0, 0.014569),
                "max_pred_length-nopunct": (9.0, 183.0), "vocab_size-3": (41.0, 32227.0), "unique-3": (314.0, 36880.0)}


def _minmax(value: float, lo: float, hi: float) -> float:
    return (value - lo) / (hi - lo)


def diversity_terms(completions: list[str]) -> dict[str, float]:
    """unique-3 (trigrams seen exactly once), vocab_size-3 (distinct trigrams) and max_pred_length-nopunct
    (longest reply in words, punctuation removed) over the whole set, as the reference code's diversity metrics."""
    trigrams = Counter()
    longest = 0
    table = str.maketrans("", "", string.punctuation)
    for text in completions:
        words = _words(text.translate(table))
        longest = max(longest, len(words))
        trigrams.update(zip(words, words[1:], words[2:]))
    return {"unique-3": float(sum(1 for c in trigrams.values() if c == 1)), "vocab_size-3": float(len(trigrams)),
            "max_pred_length-nopunct": float(longest)}


def crlhf_combine(terms: dict[str, float]) -> float:
    """1/2 [(SacreBLEU + ROUGE-2 + BLEU)/3 + (unique-3 + vocab_size-3-nopunct + max_pred_length-nopunct)/3]
    of min-max normalised terms (App. A.2, Eq. A.1)."""
    n = {k: _minmax(terms[k], *CRLHF_RANGES[k]) for k in CRLHF_RANGES}
    return 0.5 * ((n["sacrebleu"] + n["rouge2"] + n["bleu"]) / 3
                  + (n["unique-3"] + n["vocab_size-3"] + n["max_pred_length-nopunct"]) / 3)


@EVAL_METRICS.register("crlhf_score")
class CRLHFScore:
    """The paper's evaluation score over the held-out replies (``trainer.eval_metrics: [crlhf_score]``).

    Called by the trainer as ``metric(prompts, completions, columns) -> {name: value}`` after each evaluation;
    the references are the ``answer`` column. Built once: checks sacrebleu, rouge-score and nltk first."""

    def __init__(self):
        self.sacrebleu = _require("sacrebleu", "eval metric crlhf_score")
        _require("rouge_score", "eval metric crlhf_score")
        _require("nltk", "eval metric crlhf_score")
        from nltk.translate.bleu_score import corpus_bleu
        from rouge_score import rouge_scorer
        self.rouge = rouge_scorer.RougeScorer(["rouge2"])
        self.corpus_bleu = corpus_bleu

    def __call__(self, prompts, completions, columns) -> dict[str, float]:
        refs = [str(r) for r in columns.get("answer") or []]
        if len(refs) != len(completions):
            raise ValueError("eval metric crlhf_score needs the reference reply of every held-out prompt as `answer`")
        terms = {"sacrebleu": self.sacrebleu.corpus_bleu(completions, [refs]).score / 100.0,
                 "bleu": float(self.corpus_bleu([[_words(r)] for r in refs], [_words(c) for c in completions])),
                 "rouge2": sum(self.rouge.score(r, c)["rouge2"].fmeasure for r, c in zip(refs, completions)) / len(refs),
                 **diversity_terms(completions)}
        return {"crlhf_score": crlhf_combine(terms), **{f"crlhf/{k}": v for k, v in terms.items()}}


def build_eval_metric(name: str):
    """A registered eval metric (a class is built once) or ``module:function``."""
    import importlib
    if ":" in name:
        module, fn = name.split(":", 1)
        return getattr(importlib.import_module(module), fn)
    fn = EVAL_METRICS.get(name)
    return fn() if isinstance(fn, type) else fn

