"""Throughput of the math reward (conspo.rewards.MathVerifier) on realistic completions, side by side
with the reward code of an earlier revision (default: before issue 11) in the same run.

Completions are built from MATH-500 gold answers (../shared/data/math500/test.jsonl), five per
problem, so the mix resembles an RL batch:

  exact    long-ish reasoning ending in \\boxed{gold}                  (decided by the fast path)
  reform   the gold rewritten (\\dfrac, "x = ", \\left( \\right), $...$)  (needs the symbolic check)
  wrong    another problem's gold answer, boxed                      (symbolic check, mostly 0)
  nobox    reasoning that never states a final answer                 (no answer, 0; with lenient
           extraction its last number is read and checked: a symbolic check or the number path)
  long     ~3 KB of reasoning with many $...$ and a boxed, reformatted gold

For each worker count, every implementation gets a fresh verifier (result cache off, normalised
predictions forgotten before every pass), started and warmed before the clock runs; then the passes alternate between the implementations (before, now,
before, now, ...) so that load from other processes on the machine hits both alike. Prints a
markdown report.

    .venv/bin/python bench/bench_verify.py                 # 200 problems, 1 and 2 workers, before vs now
    .venv/bin/python bench/bench_verify.py --n-problems 500 --workers 1 2 4 --no-baseline
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import random
import re
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_model  # noqa: E402  (bench/ is on sys.path when run as a script)
from verify_baseline import DEFAULT_BASELINE_REV, load_baseline  # noqa: E402

from conspo.rewards import MathVerifier  # noqa: E402
from conspo.tasks.math_data import load_benchmark  # noqa: E402

FILLER = (
    "We first rewrite the condition. Let $a_n$ denote the $n$-th term, so $a_{n+1} = 2a_n + 1$ "
    "and $a_1 = 1$. By induction $a_n = 2^n - 1$, since $2(2^n - 1) + 1 = 2^{n+1} - 1$. "
    "Checking small cases: $a_2 = 3$, $a_3 = 7$, $a_4 = 15$, which agrees. "
)


def reformulate(gold: str) -> str:
    """An equivalent spelling of a gold answer that string comparison does not catch."""
    g = gold.replace("\\frac", "\\dfrac")
    if re.fullmatch(r"-?\d+", g):
        return f"{g}.0" if len(g) < 6 else f"x = {g}"
    if g.startswith("(") and g.endswith(")"):
        return "\\left" + g[:-1] + "\\right)"
    return f"x = {g}" if "=" not in g and "," not in g else g + "\\,"


def build_batch(golds: list[str], seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    rng = random.Random(seed)
    completions, refs, kinds = [], [], []
    n = len(golds)
    for i, gold in enumerate(golds):
        other = golds[(i + 1 + rng.randrange(n - 1)) % n]
        items = {
            "exact": FILLER + f"Therefore the answer is $\\boxed{{{gold}}}$.",
            "reform": FILLER + f"So we get $\\boxed{{{reformulate(gold)}}}$.",
            "wrong": FILLER + f"Hence the answer is $\\boxed{{{other}}}$.",
            "nobox": FILLER * 3 + "\nI am not sure how to finish this computation.",
            "long": (FILLER * 12) + f"\n\n**Final Answer**\n\\[\\boxed{{{reformulate(gold)}}}\\]",
        }
        for kind, text in items.items():
            completions.append(text)
            refs.append(gold)
            kinds.append(kind)
    return completions, refs, kinds


def clear_prediction_caches() -> None:
    """Forget normalised predictions (a pass must do its work again; gold caches stay, as in RL)."""
    for name, mod in list(sys.modules.items()):
        if name.endswith("rewards.math") and hasattr(mod, "_normalize_cached"):
            mod._normalize_cached.cache_clear()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-problems", type=int, default=200, help="MATH-500 problems used (5 completions each)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    ap.add_argument("--timeout", type=float, default=5.0, help="per-answer time limit, seconds")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes over the batch per worker count")
    ap.add_argument("--data-dir", default=None, help="folder holding math500/test.jsonl (default ../shared/data)")
    ap.add_argument(
        "--baseline-rev",
        default=DEFAULT_BASELINE_REV,
        help="git revision of conspo/rewards measured next to the current code",
    )
    ap.add_argument("--no-baseline", action="store_true", help="measure the current code only")
    ap.add_argument("--strict", action="store_true", help="also measure the current code with lenient=False")
    args = ap.parse_args(argv)

    examples = load_benchmark("math500", args.data_dir)[: args.n_problems]
    golds = [e.answer for e in examples]
    completions, refs, kinds = build_batch(golds)
    expected = {"exact": 1.0, "reform": 1.0, "wrong": 0.0, "nobox": 0.0, "long": 1.0}

    impls: list[tuple[str, object]] = []
    baseline_note = ""
    if not args.no_baseline:
        mod, why = load_baseline(args.baseline_rev)
        if mod is None:
            baseline_note = f"(no 'before' rows: {why})"
        else:
            impls.append(
                (
                    f"before ({args.baseline_rev})",
                    lambda w: mod.MathVerifier(num_workers=w, timeout_s=args.timeout, cache_size=0),
                )
            )
    impls.append(("now", lambda w: MathVerifier(num_workers=w, timeout_s=args.timeout, cache_size=0)))
    if args.strict:
        impls.append(
            ("now, strict", lambda w: MathVerifier(num_workers=w, timeout_s=args.timeout, cache_size=0, lenient=False))
        )

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = []
    agreement: dict[str, dict] = {}
    for workers in args.workers:
        verifiers = [(name, make(workers)) for name, make in impls]
        try:
            for _, v in verifiers:
                v.pool.start()
                v.score([r"\boxed{0.5}"] * workers * 2, [r"\frac12"] * workers * 2)  # workers up and warm
            times: dict[str, list[float]] = {name: [] for name, _ in verifiers}
            results: dict[str, object] = {}
            for _ in range(args.repeat):
                for name, v in verifiers:  # alternate: contention from other jobs hits every row alike
                    clear_prediction_caches()
                    t0 = time.perf_counter()
                    results[name] = v.score(completions, refs)
                    times[name].append(time.perf_counter() - t0)
        finally:
            for _, v in verifiers:
                v.close()
        for name, _ in verifiers:
            r = results[name]
            n_pool = len(completions) - r.fast_path - r.no_answer
            rows.append((name, workers, len(completions), n_pool, times[name][0], min(times[name]), r))
            if name not in agreement:
                per_kind = {}
                for k, sc in zip(kinds, r.scores):
                    agree, total = per_kind.get(k, (0, 0))
                    per_kind[k] = (agree + (sc == expected[k]), total + 1)
                agreement[name] = per_kind

    cmd = " ".join(shlex.quote(a) for a in [sys.executable.replace(os.getcwd() + "/", ""), *sys.argv])
    print("## Math reward verification throughput\n")
    print(f"- date: {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"- command: `{cmd}`")
    print(
        f"- machine: {os.cpu_count()} cores (nproc), {cpu_model()}; Python {platform.python_version()}, "
        f"math-verify {metadata.version('math-verify')}, sympy {metadata.version('sympy')}"
    )
    if load_before is not None:
        print(
            f"- load average before the run (1/5/15 min): {load_before[0]:.2f} / {load_before[1]:.2f} / "
            f"{load_before[2]:.2f} (other processes competing for the {os.cpu_count()} cores lower the figures)"
        )
    print(
        f"- batch: {args.n_problems} MATH-500 problems x 5 completions = {len(completions)} "
        f"(exact / reform / wrong / nobox / long); per-answer limit {args.timeout:g} s; result cache off; "
        f"best of {args.repeat} pass(es), workers started and warm before timing; passes alternate "
        f"between the implementations {baseline_note}\n"
    )
    print("First pass: every gold answer is new to the workers (parsed, then cached). Best: the best of the")
    print("passes, golds already parsed (as when problems recur across RL steps). 'worker checks': completions")
    print("sent to a worker (neither decided in the trainer process nor without an answer).\n")
    print(
        "| code | workers | completions | worker checks | first pass s | first pass completions/s | best s "
        "| best completions/s | fast path | no answer | timeouts | errors |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, workers, n, n_pool, first, best, r in rows:
        print(
            f"| {name} | {workers} | {n} | {n_pool} | {first:.2f} | {n / first:.0f} | {best:.2f} | {n / best:.0f} | "
            f"{r.fast_path} | {r.no_answer} | {r.timeouts} | {r.errors} |"
        )
    # Dispatch check, independent of free CPU: sleeping tasks overlap only if the workers run in parallel.
    from conspo.rewards.pool import HardTimeoutPool

    print("\nDispatch check (40 tasks of `time.sleep(0.025)`, no CPU needed): ", end="")
    parts = []
    for workers in args.workers:
        with HardTimeoutPool("time:sleep", num_workers=workers, max_memory_mb=None) as pool:
            pool.run([(0,)] * workers * 2)
            t0 = time.perf_counter()
            pool.run([(0.025,)] * 40)
            parts.append(f"{workers} worker(s) {time.perf_counter() - t0:.2f} s")
    print(", ".join(parts) + " (ideal: 1.00 s / number of workers).")
    print(
        "\nAgreement with how each completion was built (a sanity check, not an accuracy estimate; "
        "a 'wrong' answer can coincide with the gold):\n"
    )
    names = list(agreement)
    print("| kind | expected score | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for k in expected:
        cells = [f"{agreement[n][k][0]}/{agreement[n][k][1]}" for n in names]
        print(f"| {k} | {expected[k]:g} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
