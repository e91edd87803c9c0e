import json

import pandas as pd
import pytest

from rlpost.data import DataError, build_prompts, load_rows
from rlpost.tasks import TASKS
from rlpost.tasks.countdown import is_solution


def test_local_formats(tmp_path):
    rows = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2=", "answer": "4"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.csv", "d.parquet"):
        loaded = load_rows(str(tmp_path / name))
        assert [str(r["answer"]) for r in loaded] == ["2", "4"], name
    assert load_rows(rows) == rows


def test_chat_template_formatting(char_tokenizer):
    prompts = build_prompts([{"prompt": "1+1=", "answer": "2"}], char_tokenizer, system_prompt="be brief")
    assert prompts[0].text == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n1+1=<|im_end|>\n<|im_start|>assistant\n"
    assert prompts[0].columns == {"answer": "2"}
    msgs = [{"role": "user", "content": "hi"}]
    assert build_prompts([{"prompt": msgs, "answer": 1}], char_tokenizer)[0].messages == msgs


def test_an_absent_data_file_is_named_not_looked_up_on_a_hub():
    with pytest.raises(DataError, match=r"data/dailydialog/train.jsonl: no such file or folder \(the recipe's README"):
        load_rows("data/dailydialog/train.jsonl")


def test_few_shot_turns_go_between_system_prompt_and_question(char_tokenizer):
    shot = [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]
    p = build_prompts([{"prompt": "1+1=", "answer": "2"}], char_tokenizer, system_prompt="be brief", few_shot=shot)[0]
    assert [m["content"] for m in p.messages] == ["be brief", "2+2=", "4", "1+1="]
    assert p.text == ("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n2+2=<|im_end|>\n<|im_start|>assistant\n"
                      "4<|im_end|>\n<|im_start|>user\n1+1=<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(DataError, match="data.few_shot needs a tokenizer with a chat template"):
        build_prompts([{"prompt": "1+1=", "answer": "2"}], char_tokenizer, chat_template=False, few_shot=shot)


def test_missing_column_and_empty_dataset_are_clear(char_tokenizer, tmp_path):
    with pytest.raises(DataError, match=r"my.jsonl, row 1: missing column 'answer' \(set data.answer_column\)"):
        build_prompts([{"prompt": "a", "answer": 1}, {"prompt": "b"}], char_tokenizer, source="my.jsonl")
    with pytest.raises(DataError, match="missing column 'question'"):
        build_prompts([{"prompt": "a", "answer": 1}], char_tokenizer, prompt_column="question")
    with pytest.raises(DataError, match="empty"):
        build_prompts([], char_tokenizer)
    with pytest.raises(DataError, match="unsupported file type"):
        (tmp_path / "x.txt").write_text("hi")
        load_rows(str(tmp_path / "x.txt"))
    with pytest.raises(DataError, match="nothing-here: no such file or folder"):
        load_rows(str(tmp_path / "nothing-here"))
    with pytest.raises(DataError, match="could not load dataset 'no-such-org/no-such-set'"):   # a hub id, offline
        load_rows("no-such-org/no-such-set")


def test_synthetic_tasks_are_seeded_and_disjoint():
    make = TASKS.get("arithmetic")
    train, test = make("train", 500, seed=0), make("test", 100, seed=0)
    assert train == make("train", 500, seed=0)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert all(int(r["answer"]) == eval(r["prompt"][:-1]) for r in train[:50])  # noqa: S307 (trusted)
    cd_train, cd_test = TASKS.get("countdown")("train", 200, seed=1), TASKS.get("countdown")("test", 50, seed=1)
    assert all(is_solution(r["answer"], r["nums"], r["target"]) and 10 <= r["target"] <= 100 for r in cd_train + cd_test)
    assert not {(tuple(sorted(r["nums"])), r["target"]) for r in cd_train} & {(tuple(sorted(r["nums"])), r["target"]) for r in cd_test}
