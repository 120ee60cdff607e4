"""Faults and bad input: nothing lost, nothing silent, nothing executed."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import TINY, comparable, pause_before, read_jsonl, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

COMMON = [*TINY, "--steps", "8", "--eval-every", "4", "--save-every", "2", "--seed", "5"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("full") / "run"
    run_cli("train", *COMMON, "--output-dir", str(out), cache_dir=cache_dir)
    return out


def _same_run(a, b):
    assert comparable(read_jsonl(a / "metrics.jsonl")) == comparable(read_jsonl(b / "metrics.jsonl"))
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


KILL_COMMON = [*TINY, "--steps", "30", "--eval-every", "10", "--save-every", "4", "--seed", "6"]


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_equals_uninterrupted(tmp_path, cache_dir):
    full = tmp_path / "full"
    run_cli("train", *KILL_COMMON, "--output-dir", str(full), cache_dir=cache_dir)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "conspo", "train", *KILL_COMMON, "--output-dir", str(out), "--cache-dir", cache_dir]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoint-8").exists():
        time.sleep(0.01)
    pause_before(out / "checkpoint-16", 0.3)  # in steps 9-16: mid-step, mid-write of a metrics line
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "summary.json").exists(), "the run finished before it was killed: the test would prove nothing"
    run_cli("train", "--resume", str(out), cache_dir=cache_dir)
    _same_run(out, full)


@pytest.mark.slow
def test_crash_while_writing_a_checkpoint_never_loads_the_half_written_one(tmp_path, cache_dir, uninterrupted):
    out = tmp_path / "run"
    # The CLI in a child process whose checkpoint seam dies (SIGKILL) with checkpoint-4 written but not renamed.
    crash_at_4 = (
        "import os, signal, sys\nimport conspo.checkpoint as c\nfrom conspo.cli import main\n"
        "c.before_publish = lambda tmp, step: step == 4 and os.kill(os.getpid(), signal.SIGKILL)\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", crash_at_4, "train", *COMMON, "--output-dir", str(out), "--cache-dir", cache_dir],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL
    assert (out / "checkpoint-2").exists() and not (out / "checkpoint-4").exists()
    assert list(out.glob(".tmp-checkpoint-4-*")), "the half-written checkpoint should be left as a temp dir"
    run_cli("train", "--resume", str(out), cache_dir=cache_dir)  # resumes from step 2
    assert not list(out.glob(".tmp-checkpoint-*")), "stale temp dirs are cleaned up by the next save"
    _same_run(out, uninterrupted)


def test_non_finite_steps_are_skipped_then_the_run_stops(tmp_path, monkeypatch):
    """Weights and optimizer state stay untouched on a non-finite step; N in a row stop the run."""
    import conspo.train as train_module
    from conspo.config import TrainConfig
    from conspo.train import train

    real = train_module.accumulate_gradients
    calls = {"n": 0}
    snapshots = []

    def poisoned(model, *args, **kwargs):
        calls["n"] += 1
        metrics = real(model, *args, **kwargs)
        if calls["n"] >= 3:  # from the third step on: a NaN gradient
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            for p in model.parameters():
                p.grad = torch.full_like(p, float("nan"))
            metrics["objective/loss"] = float("nan")
        return metrics

    monkeypatch.setattr(train_module, "accumulate_gradients", poisoned)
    cfg = TrainConfig(
        steps=10,
        sft_steps=3,
        prompts_per_step=4,
        group_size=4,
        eval_size=20,
        eval_every=0,
        save_every=0,
        max_consecutive_skips=3,
        output_dir=str(tmp_path / "run"),
        cache_dir=str(tmp_path / "cache"),
        progress=False,
    )
    messages = []
    with pytest.raises(RuntimeError, match="3 consecutive non-finite steps"):
        train(cfg, log=messages.append)
    assert sum("step skipped" in m for m in messages) == 3
    for before, after in zip(snapshots, snapshots[1:]):  # no update between the poisoned steps
        assert all(torch.equal(before[k], after[k]) for k in before)
    lines = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m.get("train/skipped_steps") for m in lines[1:]] == [0, 0, 1, 2]


def test_pickle_weights_and_checkpoints_are_refused(tmp_path, cache_dir):
    from conspo.models import load_policy

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ValueError, match="pickle"):
        load_policy(str(model_dir))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"\x80\x04")
    proc = run_cli("train", "--resume", str(run_dir), cache_dir=cache_dir, check=False)
    assert proc.returncode != 0 and "conspo never loads pickles" in proc.stderr


def test_output_dir_that_cannot_be_created_fails_before_work(tmp_path, cache_dir):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli("train", "--output-dir", str(blocker / "run"), cache_dir=cache_dir, check=False)
    assert proc.returncode == 2 and "not writable" in proc.stderr and "Traceback" not in proc.stderr


# --- the math verifier under random and adversarial strings ---------------------------------

PIECES = [
    "\\boxed{",
    "}",
    "{",
    "\\frac{",
    "^{",
    "9",
    "\\sqrt",
    "(",
    ")",
    "[",
    "]",
    ",",
    "\\pi",
    "x",
    "=",
    "\\approx",
    "\\text{",
    "\\left(",
    "\\right)",
    "__import__('os').system('touch /tmp/conspo_fuzz_pwned')",
    "lambda: 0",
    "\\$",
    "%",
    "\\%",
    "\\infty",
    "\\cup",
    "1e308",
    "-",
    ".",
    "\\\\",
    "$",
    "\\(",
    "\\)",
    "\n",
    "Answer:",
    "\\begin{pmatrix}",
    "\\end{pmatrix}",
    "&",
    "\x00",
    "é",
    "\ud7ff",
]


@pytest.mark.slow
def test_verifier_survives_10k_adversarial_strings():
    from conspo.rewards import MathVerifier

    rng = random.Random(0)
    completions = ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 30))) for _ in range(10_000)]
    golds = [rng.choice(["3", "\\frac{1}{2}", "(1,2)", "x^2+1", "\\pi", "10\\%", "[0, \\infty)"]) for _ in completions]
    started = time.time()
    with MathVerifier(timeout_s=2.0) as verifier:
        result = verifier.score(completions, golds)
    assert len(result.scores) == 10_000 and set(result.scores) <= {0.0, 1.0}
    assert not os.path.exists("/tmp/conspo_fuzz_pwned")
    # every answer is bounded by its time limit: the batch can not take longer than all of them timing out
    assert time.time() - started < 2.0 * (result.timeouts + 1) + 120


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_answer_extraction_never_raises(text):
    from conspo.rewards import extract_answer, normalize_answer

    answer = extract_answer(text)
    if answer is not None:
        normalize_answer(answer)


def test_disk_full_while_checkpointing_stops_cleanly_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    import errno

    import conspo.checkpoint as checkpoint
    from conspo.cli import run_training
    from conspo.config import TrainConfig
    from conspo.errors import RunError
    from conspo.train import train

    real = checkpoint.save_file

    def full_disk(tensors, path, *args, **kwargs):
        if "checkpoint-4" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    run = tmp_path / "run"
    cfg = TrainConfig(
        steps=6,
        sft_steps=3,
        prompts_per_step=4,
        group_size=4,
        eval_size=20,
        eval_every=0,
        save_every=2,
        output_dir=str(run),
        cache_dir=str(tmp_path / "cache"),
        progress=False,
    )
    with pytest.raises(RunError, match="No space left on device.*Earlier checkpoints are intact \\(checkpoint-2\\)"):
        train(cfg, log=lambda *a: None)
    assert (run / "checkpoint-2" / "state.json").exists()
    assert not list(run.glob(".tmp-*")) and not (run / "checkpoint-4").exists()
    monkeypatch.setattr(checkpoint, "save_file", real)  # space freed: the run continues from step 2
    summary = run_training(
        TrainConfig(resume=str(run), progress=False, cache_dir=str(tmp_path / "cache")),
        log=lambda *a: None,
        explicit={"cache_dir"},
    )
    assert summary["steps"] == 6


def test_disk_full_while_logging_stops_cleanly(tmp_path, monkeypatch):
    import errno

    import conspo.reporting as reporting
    from conspo.config import TrainConfig
    from conspo.errors import RunError
    from conspo.train import train

    real = reporting.MetricsWriter.write

    def full_disk(self, step, metrics):
        if step == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, step, metrics)

    monkeypatch.setattr(reporting.MetricsWriter, "write", full_disk)
    cfg = TrainConfig(
        steps=6,
        sft_steps=3,
        prompts_per_step=4,
        group_size=4,
        eval_size=20,
        eval_every=0,
        save_every=2,
        output_dir=str(tmp_path / "run"),
        cache_dir=str(tmp_path / "cache"),
        progress=False,
    )
    with pytest.raises(RunError, match="logs of step 3.*No space left.*intact \\(checkpoint-2\\)"):
        train(cfg, log=lambda *a: None)
