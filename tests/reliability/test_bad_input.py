"""Bad input through `rlpost train` and every other subcommand (rlpost.cli.error_boundary): one clear line naming the
key, file, line, path or reward function; exit code 2; no traceback (unless --debug)."""
import pytest

from rlpost.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "bad.jsonl").write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2", "answer": \n')
    (d / "empty.jsonl").write_text("")
    (d / "nocol.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    (d / "bad_sft.jsonl").write_text('{"prompt": "1+1=", "completion": "2"}\n\n{"prompt": "2+2=", "completion": 4,\n')
    (d / "bad_dpo.jsonl").write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n{"prompt": "2+2="\n')
    return d


CASES = [
    ("data.train_path={d}/bad.jsonl", "bad.jsonl, line 2: not valid JSON"),
    ("data.train_path={d}/empty.jsonl", "empty.jsonl: the file is empty"),
    ("data.train_path={d}/nocol.jsonl", "missing column 'prompt' (set data.prompt_column)"),
    ("model.name_or_path={d}/no-such-model", "model.name_or_path: no such folder"),
    ("rewards=[nosuchmod:fn]", "cannot import reward function 'nosuchmod:fn'"),
    ("trainer.output_dir=/proc/rlpost-cannot-write", "trainer.output_dir: cannot write to"),
    ("algo.loss=nope", "algo.loss: unknown policy loss 'nope'"),
]


@pytest.mark.parametrize("override, message", CASES)
def test_bad_input_is_one_line_and_exit_2(files, tmp_path, capsys, override, message):
    code = main(["train", "configs/tiny/arith_grpo.yaml", f"trainer.output_dir={tmp_path / 'out'}",
                 "trainer.max_steps=1", "trainer.progress_bar=false", override.format(d=files)])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith(("error:", "config error:"))]
    assert len(lines) == 1 and message in lines[0], err[-2000:]
    assert "Traceback" not in err


def assert_one_line_exit_2(code, err, message):
    lines = [line for line in err.splitlines() if line.startswith(("error:", "config error:"))]
    assert code == 2 and len(lines) == 1 and message in lines[0], err[-2000:]
    assert "Traceback" not in err


SFT, DPO = "recipes/implicit_sft/tiny_sft.yaml", "recipes/implicit_sft/tiny_dpo.yaml"
TINY = "model.name_or_path=tiny:qwen2:arithmetic"
SUBCOMMAND_CASES = [
    ("sft", [SFT, "data.task=null", "data.train_path={d}/bad_sft.jsonl"], "bad_sft.jsonl, line 3: not valid JSON"),
    ("sft", [SFT, "model.name_or_path={d}/no-such-model"], "model.name_or_path: no such folder"),
    ("dpo", [DPO, TINY, "data.train_path={d}/bad_dpo.jsonl"], "bad_dpo.jsonl, line 2: not valid JSON"),
    ("dpo", [DPO, "model.name_or_path=no-such-run/sft/final_model"],          # relative, more than one '/'
     "model.name_or_path: no such folder 'no-such-run/sft/final_model'"),
    ("serve", ["{d}/no-such-model"], "model.name_or_path: no such folder"),
    ("eval", ["{d}/no-such-model", "--engine", "hf", "--benchmark", "arithmetic"], "checkpoint: no such folder"),
    ("eval", ["no-such-run/final", "--engine", "hf", "--benchmark", "arithmetic"],   # a hub id, offline or unknown
     "checkpoint: cannot load 'no-such-run/final'"),
    ("eval", ["tiny:qwen2:arithmetic", "--engine", "hf", "--benchmark", "gsm8k={d}/bad_sft.jsonl"],
     "bad_sft.jsonl, line 3: not valid JSON"),
    ("make-tiny", ["--task", "nope"], "unknown synthetic task 'nope'"),
    ("reproduce", ["hapo", "--tasks", "nope"], "unknown task 'nope'"),
]


@pytest.mark.parametrize("command, argv, message", SUBCOMMAND_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_every_subcommand_reports_bad_input_in_one_line_with_exit_2(files, tmp_path, capsys, command, argv, message):
    argv = [a.format(d=files) for a in argv]
    out = str(tmp_path / "out")
    if command in ("sft", "dpo"):
        argv.append(f"trainer.output_dir={out}")
    elif command in ("eval", "make-tiny", "reproduce"):
        argv += ["--out" if command != "eval" else "--output-dir", out]
    assert_one_line_exit_2(main([command, *argv]), capsys.readouterr().err, message)


def test_the_boundary_gives_engine_failures_exit_3_and_keeps_bugs_after_the_input_is_read(capsys):
    import argparse

    from rlpost.cli import error_boundary
    from rlpost.engines.base import EngineError

    def fails(err):
        def command(args):
            raise err
        return command
    args = argparse.Namespace(debug=False)
    assert error_boundary(fails(EngineError("worker 0 died\nlast log lines")))(args) == 3
    assert capsys.readouterr().err.startswith("engine error: worker 0 died")
    assert error_boundary(fails(KeyError("unknown thing 'x'")))(args) == 2
    assert capsys.readouterr().err == "error: unknown thing 'x'\n"
    args.running = True   # the command read its input: a KeyError now is a failure with its traceback
    with pytest.raises(KeyError):
        error_boundary(fails(KeyError("x")))(args)
    with pytest.raises(EngineError):
        error_boundary(fails(EngineError("x")))(argparse.Namespace(debug=True))


def test_debug_shows_the_traceback(files, tmp_path):
    from rlpost.data import DataError
    with pytest.raises(DataError, match="line 2"):
        main(["--debug", "train", "configs/tiny/arith_grpo.yaml", f"trainer.output_dir={tmp_path / 'out'}",
              f"data.train_path={files}/bad.jsonl"])


@pytest.fixture(scope="module")
def long_data(tmp_path_factory):
    """4 short prompts and one of ~700 characters (the char tokenizer: ~700 tokens; the tiny model has 512
    positions)."""
    import json
    path = tmp_path_factory.mktemp("long") / "long.jsonl"
    rows = [{"prompt": f"{a} + {a} = ?", "answer": str(2 * a)} for a in range(10, 14)]
    rows.insert(2, {"prompt": "please " * 100 + "1 + 1 = ?", "answer": "2"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_overlong_prompts_fail_before_step_0_by_default(long_data, tmp_path, capsys):
    code = main(["train", "configs/tiny/arith_grpo.yaml", f"trainer.output_dir={tmp_path / 'out'}",
                 f"data.train_path={long_data}", "trainer.max_steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and "1 of 5 training prompts do not fit the model's context" in err and "row 2" in err
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


@pytest.mark.parametrize("policy", ["drop", "truncate_left"])
def test_overlong_prompts_can_be_dropped_or_truncated(long_data, tmp_path, caplog, policy):
    import logging

    from rlpost.config import load_config
    from rlpost.trainer import Trainer
    cfg = load_config("configs/tiny/arith_grpo.yaml", [f"trainer.output_dir={tmp_path / 'out'}",
                                                       f"data.train_path={long_data}", f"data.overlong_prompts={policy}"])
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(cfg).setup()
    try:
        room = 512 - cfg.rollout.max_completion_length
        lengths = [len(trainer.tokenizer(p.text, add_special_tokens=False)["input_ids"]) for p in trainer.train_prompts]
        assert max(lengths) <= room and f"data.overlong_prompts={policy}: 1 of 5 training prompts" in caplog.text
        assert len(lengths) == (4 if policy == "drop" else 5)
        if policy == "truncate_left":
            assert trainer.train_prompts[2].text.endswith("1 + 1 = ?<|im_end|>\n<|im_start|>assistant\n")
    finally:
        trainer.close()
