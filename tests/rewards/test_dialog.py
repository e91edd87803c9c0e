"""Constrained RLHF's DailyDialog pieces (rlpost/rewards/dialog.py): the evaluation score by hand, clear errors
when a package or the intent classifier is absent, the intent reward on a tiny classifier, the trainer hook."""
import json
import sys

import pytest

from rlpost.rewards import REWARDS
from rlpost.rewards.dialog import CRLHF_RANGES, MissingDependency, build_eval_metric, crlhf_combine, diversity_terms


def test_diversity_terms_by_hand():
    # words without punctuation: "a b c a b c" (trigrams abc bca cab abc) and "a b c" (abc):
    # abc x3, bca x1, cab x1 -> unique-3 = 2, vocab_size-3 = 3, longest reply 6 words
    assert diversity_terms(["a b c a b c", "a, b c."]) == {"unique-3": 2.0, "vocab_size-3": 3.0,
                                                           "max_pred_length-nopunct": 6.0}


def test_crlhf_score_by_hand():
    low = {k: lo for k, (lo, hi) in CRLHF_RANGES.items()}
    high = {k: hi for k, (lo, hi) in CRLHF_RANGES.items()}
    assert crlhf_combine(low) == pytest.approx(0.0) and crlhf_combine(high) == pytest.approx(1.0)
    # only the quality half at its maximum: 1/2 (1 + 1 + 1)/3 = 0.5; plus max_pred_length halfway: + 1/2 (0.5/3)
    mixed = dict(low, bleu=0.004677, sacrebleu=0.11063, rouge2=0.014569, **{"max_pred_length-nopunct": 96.0})
    assert crlhf_combine(mixed) == pytest.approx(0.5 + 0.5 * 0.5 / 3)


@pytest.mark.parametrize("package, build", [
    ("nltk", lambda: REWARDS.get("meteor")()),
    ("sacrebleu", lambda: build_eval_metric("crlhf_score")),
])
def test_a_missing_package_is_one_clear_error(monkeypatch, package, build):
    monkeypatch.setitem(sys.modules, package, None)          # import fails as if not installed
    with pytest.raises(MissingDependency, match=f"needs the '{package}' package, which is not installed: pip install"):
        build()


def test_intent_reward_without_its_classifier_says_how_to_provide_it(tmp_path):
    with pytest.raises(MissingDependency, match="no intent classifier at .*roberta-base on DailyDialog's four intents"):
        REWARDS.get("intent_match")(path=str(tmp_path / "absent"))


def test_intent_reward_on_a_tiny_classifier(tmp_path, tiny_model_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    cfg = AutoConfig.from_pretrained(tiny_model_path, num_labels=4, pad_token_id=tok.pad_token_id,
                                     id2label={0: "inform", 1: "question", 2: "directive", 3: "commissive"})
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(tmp_path / "clf")
    tok.save_pretrained(tmp_path / "clf")
    reward = REWARDS.get("intent_match")(path=str(tmp_path / "clf"))
    replies = ["12+34=46", "7+8=15", "hello"]
    predicted = reward.predict(replies)
    labels = ["inform", "question", "commissive"]
    assert reward(None, replies, answer=None, intent=labels) == [float(p == reward._label(x))
                                                                for p, x in zip(predicted, labels)]
    # no intent column: the reference's own predicted intent; a reply equal to its reference always matches
    assert reward(None, replies, answer=replies) == [1.0, 1.0, 1.0]


def test_trainer_logs_set_level_eval_metrics(tmp_path):
    from rlpost.cli import main
    out = tmp_path / "run"
    code = main(["train", "configs/tiny/arith_grpo.yaml", f"trainer.output_dir={out}", "trainer.progress_bar=false",
                 "trainer.max_steps=1", "data.num_eval=8", "rollout.prompts_per_step=2", "num_generations=2",
                 "trainer.report_to=[]", "trainer.eval_metrics=[tests.rewards.test_dialog:share_of_digits]"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert 0.0 <= rows[0]["eval/digit_share"] <= 1.0 and rows[0]["eval/n_answers"] == 8


def share_of_digits(prompts, completions, columns):
    """A user's set-level metric: module:function(prompts, completions, columns) -> {name: value}."""
    text = "".join(completions)
    return {"digit_share": sum(c.isdigit() for c in text) / max(len(text), 1), "n_answers": len(columns["answer"])}
