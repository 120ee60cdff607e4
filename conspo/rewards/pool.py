"""A process pool with a hard, per-task time limit that works from any thread.

Why not ``concurrent.futures.ProcessPoolExecutor``: it cannot stop one task. A task stuck in
sympy (``9^{9^{9^{9}}}``) keeps its worker busy forever, and ``cancel()`` only works on tasks
that have not started. Why not ``signal.alarm`` (what math-verify uses): it only works in the
main thread of the main interpreter, and trainers call rewards from threads.

Here every worker is a separate process with its own pair of pipes; the parent hands each
worker one task at a time, and when a task runs past its deadline the worker is killed
(SIGKILL) and a fresh one is started in its place. The caller gets a "timeout" outcome for
that task and the rest of the batch carries on.

Workers are fresh interpreters started with ``subprocess`` (``python -m conspo.rewards._worker``,
i.e. fork+exec, which is safe from a multi-threaded parent such as a PyTorch trainer) that
import only the task function's module. Unlike multiprocessing's "spawn"/"forkserver", they
never re-import the caller's ``__main__``: a script without an ``if __name__ == "__main__"``
guard works, and a trainer's torch import is not repeated in every worker. POSIX only (the
pipes are plain file descriptors).

Why not ``pebble`` (a process pool with per-task timeouts, considered for issue 11): its
workers come from ``multiprocessing`` (fork, or spawn/forkserver). Fork is unsafe in a
multi-threaded trainer, and spawn/forkserver re-import the caller's ``__main__`` in every
worker, which loses two guarantees this module keeps (no ``__main__`` guard needed, no torch
import per worker). It would also add a dependency for about the same amount of code here.

The task function is named by import path ("package.module:function") and receives plain
picklable arguments. Workers ignore SIGINT so that Ctrl-C in the parent does not print one
traceback per worker; the parent kills them on ``close()``.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as _wait_connections
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["HardTimeoutPool", "TaskOutcome", "available_cpus", "cgroup_cpu_limit", "default_num_workers"]

#: How long a freshly started worker may take to import its modules before the pool gives up.
WORKER_START_TIMEOUT_S = 120.0
#: Environment variable that sets the number of workers of every pool built without ``num_workers``.
WORKERS_ENV = "CONSPO_REWARD_WORKERS"
#: Most workers a pool starts by default (per process). Verification is a fast path in the trainer plus short
#: symbolic checks: about 1,000 completions/s with 2 workers (BENCHMARKS.md section 4), so 8 workers verify a
#: 1,024-completion batch in a fraction of a second, while each worker is its own interpreter with sympy loaded and
#: the parent hands tasks out from one thread. More cores than that are better left to the trainer's data loading
#: and tokenisation; set CONSPO_REWARD_WORKERS (or num_workers) to go beyond.
DEFAULT_MAX_WORKERS = 8
#: The directory that holds the ``conspo`` package, put on the workers' PYTHONPATH.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass(frozen=True)
class TaskOutcome:
    """What happened to one task.

    status: "ok" (``value`` is the function's return value), "timeout" (the worker ran past
    the hard limit and was killed; ``value`` is None) or "error" (the function raised, or the
    worker died; ``value`` is a short description).
    """

    status: str
    value: Any = None


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this container in cores (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``), None if none."""
    try:
        quota, period = Path(root, "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path(root, "cpu", "cpu.cfs_quota_us").read_text())
        period = int(Path(root, "cpu", "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may use: its CPU affinity (``taskset``, Slurm, ...), lowered to a cgroup CPU quota (a
    container's ``--cpus``) when one is set. ``os.cpu_count()`` counts the whole machine."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cpus = min(cpus, max(1, int(quota)))
    return max(1, cpus)


def default_num_workers() -> int:
    """Workers for a pool built without ``num_workers``: ``CONSPO_REWARD_WORKERS`` when set; else this process's
    share of the CPUs it may use (``available_cpus()`` divided by the processes of the job on this machine,
    ``LOCAL_WORLD_SIZE`` as torchrun/accelerate set it), at least 1 and at most ``DEFAULT_MAX_WORKERS``."""
    value = os.environ.get(WORKERS_ENV, "").strip()
    if value:
        try:
            workers = int(value)
        except ValueError:
            workers = 0
        if workers < 1:
            raise ValueError(f"{WORKERS_ENV}={value!r} must be a positive number of reward worker processes")
        return workers
    try:
        local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_processes = 1
    return max(1, min(DEFAULT_MAX_WORKERS, available_cpus() // local_processes))


def _resolve(path: str) -> Callable:
    module, _, name = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _function_path(fn: Callable | str) -> str:
    if isinstance(fn, str):
        return fn
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        raise ValueError(f"{fn!r} must be a module-level function of an importable module (workers import it by name)")
    return f"{module}:{qualname}"


def worker_main(argv: list[str]) -> None:
    """Body of a worker process (``python -m conspo.rewards._worker FN INITIALIZER MAX_MEMORY_MB``)."""
    fn_path, init_path, max_memory_mb = argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Messages travel on the original stdout; anything a library prints goes to stderr instead.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    reader = Connection(0, writable=False)
    writer = Connection(out_fd, readable=False)
    if max_memory_mb != "none":
        try:
            import resource

            limit = int(max_memory_mb) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):  # not on this platform / not allowed: run without
            pass
    _start_orphan_watchdog()
    fn = _resolve(fn_path)
    if init_path != "none":
        _resolve(init_path)()
    writer.send(("ready", os.getpid()))
    while True:
        try:
            msg = reader.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        task_id, args = msg
        try:
            result = ("ok", fn(*args))
        except BaseException as exc:  # noqa: BLE001 - MemoryError, RecursionError, ... all become "error"
            result = ("error", f"{type(exc).__name__}: {str(exc)[:300]}")
        try:
            writer.send((task_id, *result))
        except (BrokenPipeError, OSError):
            return
        except Exception as exc:  # noqa: BLE001 - the result could not be pickled
            writer.send((task_id, "error", f"unpicklable result: {type(exc).__name__}: {exc}"[:300]))


def _start_orphan_watchdog(interval_s: float = 1.0) -> None:
    """Exit this worker if its parent dies while a task is running (an idle worker sees EOF).

    Checked once a second from a thread, so it cannot interrupt a computation that holds the GIL
    throughout (one huge integer power); such an orphan ends when that computation does, or at
    the memory limit.
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="orphan-watchdog", daemon=True).start()


class _Worker:
    """One worker process, its pipes, and the task it is running (if any)."""

    def __init__(self, fn_path: str, init_path: str | None, max_memory_mb: int | None):
        p2c_r, p2c_w = os.pipe()  # parent -> child (the child's stdin)
        c2p_r, c2p_w = os.pipe()  # child -> parent (the child's stdout)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        cmd = [
            sys.executable,
            "-m",
            "conspo.rewards._worker",
            fn_path,
            init_path or "none",
            "none" if max_memory_mb is None else str(int(max_memory_mb)),
        ]
        try:
            self.process = subprocess.Popen(cmd, stdin=p2c_r, stdout=c2p_w, env=env, close_fds=True)
        finally:
            os.close(p2c_r)
            os.close(c2p_w)
        self.reader = Connection(c2p_r, writable=False)
        self.writer = Connection(p2c_w, readable=False)
        self.started_at = time.monotonic()
        self.ready = False
        self.task_id: Any = None
        self.deadline = 0.0

    @property
    def busy(self) -> bool:
        return self.task_id is not None

    def kill(self) -> None:
        try:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for conn in (self.reader, self.writer):
            try:
                conn.close()
            except OSError:
                pass


class HardTimeoutPool:
    """Run ``fn(*args)`` for many argument tuples in worker processes, each under a hard time limit.

    Args:
        fn: a module-level function of an importable module, or its path "package.module:function".
        num_workers: number of worker processes (default: ``default_num_workers()``: ``CONSPO_REWARD_WORKERS``,
            else the CPUs this process may use divided by the local processes of the job, capped at
            ``DEFAULT_MAX_WORKERS``).
        timeout_s: hard limit per task, in seconds of wall-clock time from the moment the task
            is handed to a worker (queueing time does not count).
        max_memory_mb: address-space limit per worker (RLIMIT_AS), so that a runaway computation
            raises MemoryError in its worker instead of exhausting the machine. None: no limit.
        initializer: optional module-level function run once in each worker before it accepts
            tasks (e.g. to import heavy modules so the first task's clock is not spent importing).

    Workers start on the first ``run``. Thread-safe: concurrent ``run`` calls are serialised.
    """

    def __init__(
        self,
        fn: Callable | str,
        *,
        num_workers: int | None = None,
        timeout_s: float = 5.0,
        max_memory_mb: int | None = 4096,
        initializer: Callable | str | None = None,
    ):
        if os.name != "posix":
            raise OSError("HardTimeoutPool needs a POSIX system (Linux, macOS)")
        if num_workers is None:
            num_workers = default_num_workers()
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1:
            raise ValueError(f"num_workers must be a positive int or None, got {num_workers!r}")
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        self.fn_path = _function_path(fn)
        self.init_path = None if initializer is None else _function_path(initializer)
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self.max_memory_mb = max_memory_mb
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        #: Workers killed for running past the limit, since the pool was created.
        self.n_killed = 0

    # ----------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        return _Worker(self.fn_path, self.init_path, self.max_memory_mb)

    def _replace(self, i: int) -> None:
        self._workers[i].kill()
        self._workers[i] = self._spawn()

    def start(self) -> None:
        """Start the workers now instead of on the first ``run`` (they import in the background)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("HardTimeoutPool.start() called after close()")
            while len(self._workers) < self.num_workers:
                self._workers.append(self._spawn())

    def run(self, tasks: Sequence[tuple], *, timeout_s: float | None = None) -> list[TaskOutcome]:
        """Run ``fn(*args)`` for every ``args`` in ``tasks``; return one outcome per task, in order."""
        limit = self.timeout_s if timeout_s is None else float(timeout_s)
        if not limit > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        tasks = list(tasks)
        if not tasks:
            return []
        self.start()
        with self._lock:
            if self._closed:
                raise RuntimeError("HardTimeoutPool.run() called after close()")
            return self._run_locked(tasks, limit)

    def _run_locked(self, tasks: list[tuple], limit: float) -> list[TaskOutcome]:
        outcomes: list[TaskOutcome | None] = [None] * len(tasks)
        queue = deque(range(len(tasks)))
        start_failures = 0
        while queue or any(w.busy for w in self._workers):
            now = time.monotonic()
            for i, w in enumerate(self._workers):
                if w.ready and not w.busy and queue:
                    tid = queue.popleft()
                    try:
                        w.writer.send((tid, tuple(tasks[tid])))
                    except (OSError, ValueError):  # died while idle: put the task back, restart it
                        queue.appendleft(tid)
                        self._replace(i)
                        continue
                    w.task_id, w.deadline = tid, now + limit

            # Wait for a result, a worker becoming ready, or the earliest deadline.
            waits = [w.deadline - now for w in self._workers if w.busy]
            starting = [w for w in self._workers if not w.ready]
            if starting:
                waits.append(min(w.started_at + WORKER_START_TIMEOUT_S for w in starting) - now)
            wait_s = max(0.0, min(waits)) if waits else 0.05
            by_conn = {w.reader: i for i, w in enumerate(self._workers)}
            for conn in _wait_connections(list(by_conn), timeout=wait_s):
                i = by_conn[conn]
                w = self._workers[i]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):  # the worker died (crash, OOM killer, import error)
                    if w.busy:
                        outcomes[w.task_id] = TaskOutcome("error", f"worker exited with code {w.process.poll()}")
                    elif not w.ready:
                        start_failures += 1
                        if start_failures > 2 * self.num_workers:
                            code = w.process.poll()
                            self._close_locked()
                            raise RuntimeError(
                                f"verification workers keep dying at start-up (exit code {code}); see their "
                                f"stderr above, or run `{sys.executable} -m conspo.rewards._worker {self.fn_path} "
                                f"{self.init_path or 'none'} none`"
                            ) from None
                    self._replace(i)
                    continue
                if msg[0] == "ready":
                    w.ready = True
                    continue
                tid, status, value = msg
                if tid == w.task_id:
                    outcomes[tid] = TaskOutcome(status, value)
                    w.task_id = None

            now = time.monotonic()
            for i, w in enumerate(self._workers):
                if w.busy and now >= w.deadline:
                    outcomes[w.task_id] = TaskOutcome("timeout", None)
                    self.n_killed += 1
                    self._replace(i)
                elif not w.ready and now >= w.started_at + WORKER_START_TIMEOUT_S:
                    self._close_locked()
                    raise RuntimeError(f"a verification worker did not start within {WORKER_START_TIMEOUT_S:.0f} s")
        return [o if o is not None else TaskOutcome("error", "lost task") for o in outcomes]

    def _close_locked(self) -> None:
        self._closed = True
        workers, self._workers = self._workers, []
        for w in workers:
            try:
                w.writer.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 1.0
        for w in workers:
            try:
                w.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            w.kill()

    def close(self) -> None:
        """Stop all workers (idempotent). Call it from outside ``run``; running tasks are abandoned."""
        with self._lock:
            self._close_locked()

    def __enter__(self) -> "HardTimeoutPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._close_locked()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
