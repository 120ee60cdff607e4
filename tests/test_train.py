"""The training loop (conspo/train.py), end to end through the real CLI at toy size (cleanrl-style): every output
written, resume equal to an uninterrupted run, coefficient mode equal to whole groups."""

import json

import pytest
import torch
import yaml
from helpers import TINY, comparable, read_jsonl, run_cli

STABLE_NAMES = {
    "reward/mean",
    "objective/loss",
    "objective/grad_norm",
    "conspo/score_gap",
    "conspo/margin",
    "gen/truncated_frac",
    "time/step_s",
    "train/lr",
}


@pytest.mark.slow
def test_train_smoke_writes_every_output(tmp_path, cache_dir):
    out = tmp_path / "run"
    proc = run_cli(
        "train",
        *TINY,
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--save-every",
        "2",
        "--log-samples-every",
        "2",
        "--margin-schedule",
        "linear",
        "--margin-end",
        "0.2",
        "--output-dir",
        str(out),
        cache_dir=cache_dir,
    )
    assert "held-out accuracy after (greedy)" in proc.stdout + proc.stderr
    summary = json.load(open(out / "summary.json"))
    for key in ("objective", "steps", "heldout_accuracy_before", "heldout_accuracy_after", "wall_seconds"):
        assert key in summary
    assert summary["steps"] == 4
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2, 3, 4]
    assert STABLE_NAMES <= set(metrics[1])
    assert metrics[4]["conspo/margin"] == pytest.approx(0.2 * 3 / 4)  # linear ramp over 4 steps, at step index 3
    assert yaml.safe_load(open(out / "config.yaml"))["objective"] == "conspo"
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "final" / "model.safetensors").exists()
    assert len(read_jsonl(out / "samples.jsonl")) == 2 * 4
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["conspo", "grpo"])
def test_resume_equals_uninterrupted_run(tmp_path, cache_dir, objective):
    common = [*TINY, "--objective", objective, "--steps", "6", "--eval-every", "3", "--save-every", "2", "--seed", "3"]
    full, parts = tmp_path / "full", tmp_path / "parts"
    run_cli("train", *common, "--output-dir", str(full), cache_dir=cache_dir)
    run_cli("train", *common, "--output-dir", str(parts), "--stop-after", "3", cache_dir=cache_dir)
    assert not (parts / "summary.json").exists()
    # a torn, half-written line after the checkpoint must not survive the resume
    with open(parts / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "reward/me')
    run_cli("train", "--resume", str(parts), cache_dir=cache_dir)
    assert comparable(read_jsonl(parts / "metrics.jsonl")) == comparable(read_jsonl(full / "metrics.jsonl"))
    from safetensors.torch import load_file

    a = load_file(str(full / "final" / "model.safetensors"))
    b = load_file(str(parts / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_coefficient_mode_run_matches_whole_group_run(tmp_path, cache_dir):
    """End to end: one step in coefficient mode with groups split gives the same weights as whole groups."""
    common = [*TINY, "--steps", "2", "--eval-every", "0", "--save-every", "0", "--lr", "1e-3"]
    run_cli("train", *common, "--output-dir", str(tmp_path / "whole"), "--group-mode", "whole", cache_dir=cache_dir)
    run_cli(
        "train",
        *common,
        "--output-dir",
        str(tmp_path / "coef"),
        "--group-mode",
        "coefficients",
        "--micro-batch-size",
        "3",
        cache_dir=cache_dir,
    )
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "whole" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "coef" / "final" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    ma = read_jsonl(tmp_path / "whole" / "metrics.jsonl")[1]
    mb = read_jsonl(tmp_path / "coef" / "metrics.jsonl")[1]
    assert ma["objective/loss"] == pytest.approx(mb["objective/loss"], rel=1e-5)
