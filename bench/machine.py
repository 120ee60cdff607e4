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
