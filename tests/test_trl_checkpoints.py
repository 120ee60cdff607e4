"""`conspo train --engine trl`: checkpoints without pickles, --stop-after / kill -9 + --resume equal an
uninterrupted run, a checkpoint killed while being written is never loaded, and two processes resume."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("trl")

from helpers import comparable, pause_before, read_jsonl, run_cli  # noqa: E402

# A base that sometimes answers right (120 warm-up steps), so that groups are mixed and steps move the weights.
TRL_RUN = [
    "--engine",
    "trl",
    "--sft-steps",
    "120",
    "--prompts-per-step",
    "4",
    "--group-size",
    "4",
    "--eval-size",
    "40",
    "--no-progress",
    "--lr-warmup-steps",
    "2",
    "--lr",
    "1e-3",
    "--steps",
    "12",
    "--eval-every",
    "6",
    "--save-every",
    "3",
    "--seed",
    "5",
    "--threads",
    "1",
]
PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".pkl", ".ckpt"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("full") / "run"
    run_cli("train", *TRL_RUN, "--output-dir", str(out), cache_dir=cache_dir)
    return out


def steady(rows):
    """metrics without wall-clock fields (TRL logs throughput and runtimes)."""
    return [{k: v for k, v in row.items() if "runtime" not in k and "per_second" not in k} for row in comparable(rows)]


def assert_same_run(a, b):
    assert steady(read_jsonl(a / "metrics.jsonl")) == steady(read_jsonl(b / "metrics.jsonl"))
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_checkpoints_hold_no_pickles_and_the_run_learns_something(uninterrupted):
    kept = sorted(p.name for p in uninterrupted.glob("checkpoint-*"))
    assert kept == ["checkpoint-12", "checkpoint-9"], kept  # --keep-checkpoints 2 (default)
    for checkpoint in uninterrupted.glob("checkpoint-*"):
        names = {p.name for p in checkpoint.iterdir()}
        assert {
            "model.safetensors",
            "optimizer.safetensors",
            "scheduler.json",
            "rng_state_0.safetensors",
            "trainer_state.json",
            "state.json",
        } <= names, names
        assert not [n for n in names if os.path.splitext(n)[1] in PICKLE_SUFFIXES], names
    rows = read_jsonl(uninterrupted / "metrics.jsonl")
    assert max(r.get("conspo/valid_group_frac", 0) for r in rows) > 0, (
        "no mixed group: the resume test would be vacuous"
    )


@pytest.mark.slow
def test_stop_after_then_resume_equals_uninterrupted(tmp_path, cache_dir, uninterrupted):
    out = tmp_path / "run"
    proc = run_cli("train", *TRL_RUN, "--output-dir", str(out), "--stop-after", "4", cache_dir=cache_dir)
    assert "stopped after step 4 of 12; checkpoint-4 saved" in proc.stdout + proc.stderr
    assert not (out / "summary.json").exists()
    run_cli("train", "--resume", str(out), cache_dir=cache_dir)
    assert_same_run(out, uninterrupted)


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_equals_uninterrupted(tmp_path, cache_dir, uninterrupted):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "conspo", "train", *TRL_RUN, "--output-dir", str(out), "--cache-dir", cache_dir]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoint-3" / "state.json").exists():
        time.sleep(0.01)
    pause_before(out / "checkpoint-6" / "state.json", 1.0)  # in steps 4-6: mid-generation, -update or -save
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "summary.json").exists(), "the run finished before it was killed: the test would prove nothing"
    # As if killed while writing a later checkpoint: a directory without state.json must never be loaded.
    half = out / "checkpoint-11"
    half.mkdir(exist_ok=True)
    (half / "model.safetensors").write_bytes(b"half-written")
    run_cli("train", "--resume", str(out), cache_dir=cache_dir)
    assert not half.exists(), "the incomplete checkpoint is deleted by the next save"
    assert_same_run(out, uninterrupted)


@pytest.mark.slow
def test_ctrl_c_finishes_the_step_checkpoints_and_resume_equals_uninterrupted(tmp_path, cache_dir, uninterrupted):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "conspo", "train", *TRL_RUN, "--output-dir", str(out), "--cache-dir", cache_dir]
    # SIGINT as in a terminal: a background job of a non-interactive shell (a CI runner may start the
    # tests so) inherits SIGINT ignored, and conspo rightly leaves an ignored SIGINT alone
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoint-3" / "state.json").exists():
        time.sleep(0.01)
    pause_before(out / "checkpoint-6" / "state.json", 0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    stopped = int(err.split("interrupted after step ")[1].split()[0])
    assert 3 <= stopped < 12 and (out / f"checkpoint-{stopped}" / "state.json").exists(), err[-2000:]
    assert f"continue with: conspo train --resume {out}" in err
    run_cli("train", "--resume", str(out), cache_dir=cache_dir)
    assert_same_run(out, uninterrupted)


def test_resume_refuses_the_other_engines_checkpoint(tmp_path):
    import json

    from conspo.errors import ConfigError
    from conspo.run import checkpoint_to_resume

    checkpoint = tmp_path / "run" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.json").write_text(json.dumps({"step": 3, "engine": "trl", "run_id": "a"}))
    assert checkpoint_to_resume(tmp_path / "run", engine="trl") == checkpoint
    with pytest.raises(ConfigError, match="checkpoint-3 was written by --engine trl; resume it with --engine trl"):
        checkpoint_to_resume(tmp_path / "run", engine="native")


def test_resume_exactness_needs_checkpoints_between_generation_batches():
    from conspo.config import TrainConfig
    from conspo.errors import ConfigError

    TrainConfig(engine="trl", updates_per_batch=2, save_every=4).validate()
    with pytest.raises(ConfigError, match="save_every=3 with updates_per_batch=2 on --engine trl: must be a multiple"):
        TrainConfig(engine="trl", updates_per_batch=2, save_every=3).validate()
    with pytest.raises(ConfigError, match="stop_after=5 with updates_per_batch=2"):
        TrainConfig(engine="trl", updates_per_batch=2, stop_after=5).validate()


@pytest.mark.slow
def test_two_processes_stop_and_resume_equal_an_uninterrupted_two_process_run(tmp_path, cache_dir):
    """torchrun --nproc_per_node 2 (gloo): every process saves and restores its own RNG state."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run = [*TRL_RUN, "--steps", "4", "--save-every", "2", "--eval-every", "2", "--cache-dir", cache_dir]

    def torchrun(*args, port):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                "2",
                "--master_port",
                str(port),
                "-m",
                "conspo",
                "train",
                *args,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]

    torchrun(*run, "--output-dir", str(tmp_path / "full"), port=29541)
    torchrun(*run, "--output-dir", str(tmp_path / "run"), "--stop-after", "2", port=29542)
    assert {p.name for p in (tmp_path / "run" / "checkpoint-2").glob("rng_state_*")} == {
        "rng_state_0.safetensors",
        "rng_state_1.safetensors",
    }
    torchrun("--resume", str(tmp_path / "run"), "--threads", "1", "--output-dir", str(tmp_path / "run"), port=29543)
    assert_same_run(tmp_path / "run", tmp_path / "full")
