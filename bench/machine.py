"""The header every bench script prints: date, machine, torch, load average and the command line."""

import datetime as _dt
import os
import platform
import shlex
import sys
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _nproc() -> int:
    """What `nproc` prints: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _ram_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB RAM"
    except OSError:
        pass
    return "RAM unknown"


def header_line(threads: int) -> str:
    argv = getattr(sys, "orig_argv", [sys.executable, *sys.argv])
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"date: {_dt.datetime.now().astimezone().isoformat(timespec='seconds')} | machine: {_nproc()} cores "
        f"(nproc), {cpu_model()}, {_ram_gib()} | torch {torch.__version__} ({threads} threads), Python "
        f"{platform.python_version()} | load avg 1/5/15 min before: {load} | command: `{shlex.join(argv)}`"
    )


def busy_note() -> str:
    """A warning line when other processes were using the CPU as the run started ('' if quiet)."""
    if not hasattr(os, "getloadavg"):
        return ""
    load, cores = os.getloadavg()[0], _nproc()
    if load <= 0.5 * cores:
        return ""
    return (
        f"- WARNING: load average {load:.2f} on {cores} cores when the run started: other processes compete for "
        "the CPU and the timings are unreliable (torch threads stall badly when a core they need is busy). "
        "Rerun on a quiet machine.\n"
    )


def run_fresh(
    script: str,
    flag: str,
    payload,
    *,
    threads: int,
    timeout: float,
    label: str,
    expect: int = 1,
    check_exit: bool = False,
) -> list:
    """Run ``python script flag <payload as JSON>`` in a new process (one measurement per process: no memory or
    cache carried over), with ``threads`` torch threads and the libraries' progress bars, telemetry and warnings
    off; return the ``RESULT <json>`` lines it printed. Fewer than ``expect`` of them (or, with ``check_exit``, a
    non-zero exit) raises with the worker's output tail and ``label``."""
    import json
    import subprocess

    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TRANSFORMERS_VERBOSITY": "error",
        "TOKENIZERS_PARALLELISM": "false",
        "TQDM_DISABLE": "1",
        "WANDB_DISABLED": "true",
        "PYTHONWARNINGS": "ignore",
    }
    proc = subprocess.run(
        [sys.executable, str(Path(script).resolve()), flag, json.dumps(payload)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[1],
    )
    results = [json.loads(line[len("RESULT ") :]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if len(results) < expect or (check_exit and proc.returncode != 0):
        raise RuntimeError(
            f"worker {label} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return results
