"""Every user mistake the CLI knows of ends in one line on stderr and an exit code (2: bad input,
1: a run that cannot go on, 130: Ctrl-C), with no traceback and nothing left behind.

The cases run ``conspo.cli.main`` in this process (no torch import per case); the ones that
must fail before any work also prove that no model was built. The last few run the real CLI in a
subprocess (``run_cli``): config values and YAML files refused at validation, an output directory kept.
"""

import json
import signal

import pytest
import torch
from helpers import TINY, run_cli

from conspo import __version__
from conspo.cli import join_negative_numbers, main


@pytest.fixture
def cli(capsys):
    """Run ``conspo <args>``; return (exit code, stderr) after checking stderr's last message is one line."""

    def run(*args):
        code = main([str(a) for a in args])
        err = capsys.readouterr().err.strip()
        return code, err

    return run


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "expected a message on stderr"
    assert "Traceback" not in err, err
    return lines[-1]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if any model weights are loaded (refusals must come first)."""
    import conspo.models
    import conspo.warmup

    def forbidden(*a, **k):
        raise AssertionError("a model was built before the refusal")

    monkeypatch.setattr(conspo.models, "load_policy", forbidden)
    monkeypatch.setattr(conspo.warmup, "tiny_base", forbidden)


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"conspo {__version__}"


@pytest.mark.parametrize(
    "make_args,code,message",
    [
        (
            lambda t: ["train", "--task", "math"],
            2,
            "the tiny model .* trains only the built-in tasks, addition and chain; --task math needs --model",
        ),
        (lambda t: ["train", "--task", "chess"], 2, "task=.chess.: must be one of addition, chain, math"),
        (lambda t: ["train", "--resume", t / "nowhere"], 2, "no such directory.*--overwrite"),
        (lambda t: ["train", "--resume", t], 2, "no complete checkpoint.*stopped before its first checkpoint"),
        (
            lambda t: ["train", "--model", t / "no-such-model", "--output-dir", t / "run"],
            2,
            "--model .*no-such-model: no such folder",
        ),
        (lambda t: ["train", "--output-dir", write_lines(t / "a-file", ["x"])], 2, "is a file, not a directory"),
        (lambda t: ["train", "--lr", "-1e-5", "--output-dir", t / "run"], 2, "lr=-1e-05: must be a finite number > 0"),
        (lambda t: ["compare", "--seeds", "0"], 2, "--seeds 0: must be >= 1"),
        (lambda t: ["compare", "--stop-after", "3"], 2, "--stop-after is an option of conspo train, not of compare"),
        (lambda t: ["train", "--config", t / "missing.yaml"], 2, "--config .*missing.yaml"),
    ],
)
def test_user_mistakes_give_one_line_and_an_exit_code(tmp_path, cli, no_model_load, make_args, code, message):
    got, err = cli(*make_args(tmp_path))
    assert got == code
    import re

    assert re.search(message, one_line(err)), err
    assert not (tmp_path / "run").exists(), "a failed start leaves no run directory"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is missing")
def test_cuda_without_cuda(tmp_path, cli, no_model_load):
    code, err = cli("train", "--device", "cuda", "--output-dir", tmp_path / "run")
    assert code == 2 and "CUDA is not available" in one_line(err) and "--device cpu" in err


def test_reporter_package_missing(tmp_path, cli, no_model_load, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a))
    code, err = cli("train", "--report-to", "tensorboard", "--output-dir", tmp_path / "run")
    assert code == 2 and "pip install tensorboard" in one_line(err)


def test_broken_and_missing_jsonl_name_file_line_and_column(tmp_path, cli, no_model_load):
    broken = '{"problem": "what is 2+2, written out in full?", "answer": }'
    with pytest.raises(json.JSONDecodeError) as decoded:
        json.loads(broken)
    bad = write_lines(tmp_path / "train.jsonl", ['{"problem": "1+1", "answer": "2"}', broken])
    code, err = cli(
        "train",
        "--task",
        "math",
        "--model",
        "some/model",
        "--train-data",
        bad,
        "--eval-data",
        bad,
        "--output-dir",
        tmp_path / "run",
    )
    line = one_line(err)
    assert code == 2 and f"{bad} line 2: invalid JSON" in line
    assert decoded.value.colno > 1 and f"column {decoded.value.colno}" in line  # where json's decoder stopped
    code, err = cli(
        "train",
        "--task",
        "math",
        "--model",
        "some/model",
        "--train-data",
        tmp_path / "none.jsonl",
        "--output-dir",
        tmp_path / "run",
    )
    assert code == 2 and "no such JSONL file" in one_line(err)
    assert not (tmp_path / "run").exists()


def test_a_model_that_cannot_fit_is_refused_before_it_is_built(tmp_path, cli, no_model_load):
    """A 72B-parameter config (no weights on disk): weights + grads + AdamW exceed any CPU here."""
    from transformers import Qwen2Config

    huge = tmp_path / "huge"
    Qwen2Config(
        hidden_size=8192,
        intermediate_size=29568,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=152064,
    ).save_pretrained(huge)
    code, err = cli("train", "--task", "addition", "--model", huge, "--output-dir", tmp_path / "run")
    line = one_line(err)
    assert code == 2 and "B parameters need at least" in line and "GiB free" in line and "--lora-r" in line


def test_negative_numbers_and_yaml_floats(tmp_path):
    assert join_negative_numbers(["train", "--lr", "-1e-5", "--margin-end", "-.5", "--seed", "-3"]) == [
        "train",
        "--lr=-1e-5",
        "--margin-end=-.5",
        "--seed=-3",
    ]
    assert join_negative_numbers(["--no-progress", "-h"]) == ["--no-progress", "-h"]
    import argparse

    from conspo.cli import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_arguments(parser)
    config = write_lines(tmp_path / "c.yaml", ["lr: 1e-5", "margin_end: 2e-1", "eps_high: 3e-1"])
    cfg, _ = config_from_args(
        parser.parse_args(join_negative_numbers(["--config", str(config), "--margin-start", "-1e-2"]))
    )
    assert (cfg.lr, cfg.margin_end, cfg.eps_high, cfg.margin_start) == (1e-5, 0.2, 0.3, -0.01)


def test_eval_refuses_to_overwrite_results(tmp_path, cli, no_model_load):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text("{}")
    code, err = cli("eval", "--model", "some/model", "--output-dir", out)
    assert code == 2 and "--overwrite" in one_line(err)
    assert (out / "results.json").read_text() == "{}"
    code, err = cli("eval", "--model", "some/model", "--k", "0")
    assert code == 2 and "--k must be >= 1" in one_line(err)


# ---- runs of the tiny model (in this process) ----------------------------------------


def test_ctrl_c_finishes_the_step_saves_and_says_how_to_continue(tmp_path, cli, monkeypatch):
    import conspo.train

    real = conspo.train._batch_metrics
    calls = []

    def interrupt_in_step_3(*a, **k):  # SIGINT lands mid-step, after generation
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(conspo.train, "_batch_metrics", interrupt_in_step_3)
    # as in a terminal (a background job of a non-interactive shell starts with SIGINT ignored)
    handler_before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _check_ctrl_c_run(tmp_path, cli, monkeypatch, real)
    finally:
        signal.signal(signal.SIGINT, handler_before)


def _check_ctrl_c_run(tmp_path, cli, monkeypatch, real):
    import conspo.train

    out = tmp_path / "run"
    code, err = cli(
        "train", *TINY, "--steps", "8", "--save-every", "5", "--output-dir", out, "--cache-dir", tmp_path / "cache"
    )
    line = one_line(err)
    assert code == 130, err
    assert line.endswith(
        f"interrupted after step 3 of 8; checkpoint-3 saved; continue with: conspo train --resume {out}"
    )
    assert (out / "checkpoint-3" / "state.json").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler is restored"
    monkeypatch.setattr(conspo.train, "_batch_metrics", real)
    code, err = cli("train", "--resume", out, "--cache-dir", tmp_path / "cache")
    assert code == 0, err
    assert json.load(open(out / "summary.json"))["steps"] == 8


def test_overwrite_replaces_the_earlier_run_and_resume_refuses_mixed_runs(tmp_path, cli):
    out, cache = tmp_path / "run", tmp_path / "cache"
    common = [*TINY, "--eval-every", "0", "--output-dir", out, "--cache-dir", cache]
    assert cli("train", *common, "--steps", "6", "--save-every", "2", "--keep-checkpoints", "3")[0] == 0
    old_id = json.load(open(out / "summary.json"))["run_id"]
    code, err = cli("train", *common, "--steps", "4")
    assert code == 2 and "holds a run: pass --resume" in one_line(err)
    code, err = cli("train", *common, "--steps", "3", "--save-every", "1", "--seed", "1", "--overwrite")
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    assert names == ["checkpoint-2", "checkpoint-3"], "the old run's checkpoints are gone, the new run's kept"
    new_id = json.load(open(out / "summary.json"))["run_id"]
    assert new_id != old_id
    for name in names:
        assert json.load(open(out / name / "state.json"))["run_id"] == new_id
    # a checkpoint of another run copied in: --resume refuses to guess
    state = json.load(open(out / "checkpoint-2" / "state.json"))
    state["run_id"] = old_id
    json.dump(state, open(out / "checkpoint-2" / "state.json", "w"))
    code, err = cli("train", "--resume", out, "--cache-dir", cache)
    assert code == 2 and "checkpoints of different runs" in one_line(err)


def test_a_run_stopped_before_its_first_checkpoint_can_be_started_over(tmp_path, cli):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 0}\n')  # what such a run leaves
    code, err = cli("train", "--output-dir", out)
    assert code == 2 and "holds no checkpoint" in one_line(err) and "--overwrite" in err
    code, err = cli("train", "--resume", out)
    assert code == 2 and "--overwrite" in one_line(err)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--steps", "0"], "steps=0"),
        (["--objective", "ppo"], "objective='ppo'"),
        (["--tau", "-1"], "tau=-1.0"),
        (["--micro-batch-size", "3", "--objective", "grpo"], "micro_batch_size=3"),
        (["--group-mode", "coefficients", "--objective", "dapo"], "group_mode"),
        (["--margin-schedule", "exp"], "margin_schedule='exp'"),
        (["--report-to", "mlflow"], "report_to"),
    ],
)
def test_bad_config_values_give_clear_errors(tmp_path, cache_dir, args, message):
    proc = run_cli("train", *args, "--output-dir", str(tmp_path / "x"), cache_dir=cache_dir, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_bad_yaml_config(tmp_path, cache_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("objective: conspo\nlearning_rate: 0.1\n")
    proc = run_cli("train", "--config", str(bad), cache_dir=cache_dir, check=False)
    assert proc.returncode == 2 and "unknown option(s) ['learning_rate']" in proc.stderr
    bad.write_text("steps: many\n")
    proc = run_cli("train", "--config", str(bad), cache_dir=cache_dir, check=False)
    assert proc.returncode == 2 and "steps='many' should be of type int" in proc.stderr
    bad.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    proc = run_cli("train", "--config", str(bad), cache_dir=cache_dir, check=False)
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr


def test_existing_output_dir_is_not_clobbered(tmp_path, cache_dir):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    proc = run_cli("train", "--output-dir", str(out), cache_dir=cache_dir, check=False)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert (out / "precious.txt").read_text() == "keep"
