"""Torch CPU threads for the tiny default: 1 vs 2 (or --threads-list), alone and under load.

Each measurement is a fresh ``conspo train`` process (the default job's settings, --steps N,
no held-out evaluation after the first) with ``--threads T``; the time is the sum of its
``time/step_s`` (generation + update of every RL step; the warm-up is cached beforehand).
"Under load": --load-procs busy-looping Python processes run beside it for the whole
measurement, as a second job on a shared laptop would. Rows alternate thread counts, and
each configuration runs --repeats times; the table shows medians.

    .venv/bin/python bench/bench_threads.py                      # 30 steps, 1 vs 2 threads, alone and with 1 and 2 busy processes
    .venv/bin/python bench/bench_threads.py --steps 10 --repeats 1   # quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import header_line  # noqa: E402

BUSY = "import time\nwhile True:\n    sum(i * i for i in range(10000))\n"


def one_run(threads: int, steps: int, cache: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "conspo",
                "train",
                "--steps",
                str(steps),
                "--threads",
                str(threads),
                "--eval-every",
                "0",
                "--eval-size",
                "20",
                "--no-progress",
                "--save-every",
                "0",
                "--output-dir",
                str(out),
                "--cache-dir",
                cache,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
        return sum(r.get("time/step_s", 0.0) for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads-list", default="1,2")
    parser.add_argument("--loads", default="0,1,2", help="numbers of busy processes beside the run")
    parser.add_argument("--cache-dir", default=str(Path("~/.cache/conspo").expanduser()))
    args = parser.parse_args()
    threads_list = [int(t) for t in args.threads_list.split(",")]
    print("## Torch threads for the tiny default job\n")
    print(header_line(0))
    print(
        f"\n- {args.steps} RL steps of the default job per process (`conspo train --threads T`), "
        f"seconds = sum of time/step_s; medians of {args.repeats}; fresh process each\n"
    )
    one_run(1, 1, args.cache_dir)  # the cached warm-up exists before anything is timed
    print("| busy processes beside it | " + " | ".join(f"{t} thread(s) s" for t in threads_list) + " | ratio 1/2 |")
    print("|---:|" + "---:|" * len(threads_list) + "---:|")
    for load in [int(x) for x in args.loads.split(",")]:
        busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(load)]
        try:
            time.sleep(1)
            times = {t: [] for t in threads_list}
            for _ in range(args.repeats):
                for t in threads_list:
                    times[t].append(one_run(t, args.steps, args.cache_dir))
        finally:
            for p in busy:
                p.kill()
        med = {t: statistics.median(v) for t, v in times.items()}
        ratio = f"{med[1] / med[2]:.2f}" if 1 in med and 2 in med else "-"
        print(f"| {load} | " + " | ".join(f"{med[t]:.1f}" for t in threads_list) + f" | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
