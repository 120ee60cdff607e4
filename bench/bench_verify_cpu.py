"""CPU time of the math reward's two halves, the current code against an earlier revision, in one
process with alternating passes (best of N). ``time.process_time`` counts this process's CPU only,
so on a shared machine it moves far less with other processes' load than bench_verify.py's wall
clock does.

  trainer side: extract_answer + normalize_answer + the fast key / number path, for the 1000
                completions bench_verify.py builds (200 MATH-500 problems x 5 kinds)
  worker side:  check_answer (the symbolic step) on the completions the trainer side leaves for a
                worker, golds already parsed (as when problems recur across RL steps)

    .venv/bin/python bench/bench_verify_cpu.py --baseline-rev c59e749 --repeat 7
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_verify import build_batch  # noqa: E402
from verify_baseline import DEFAULT_BASELINE_REV, load_baseline  # noqa: E402

import conspo.rewards.math as now  # noqa: E402
from conspo.tasks.math_data import load_benchmark  # noqa: E402


def trainer_side(m, comps, refs):
    m._normalize_cached.cache_clear()
    pending = []
    for c, g in zip(comps, refs):
        gold_norm, gold_key = m._normalize_gold(g)
        ans = m.extract_answer(c)
        if ans is None:
            continue
        pred = m.normalize_answer(ans)
        if m._fast_key(pred) == gold_key or m._number_verdict(pred, gold_norm) is not None:
            continue
        pending.append((pred, gold_norm))
    return pending


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-rev", default=DEFAULT_BASELINE_REV)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--n-problems", type=int, default=200)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args(argv)
    base, why = load_baseline(args.baseline_rev)
    if base is None:
        print(f"no baseline: {why}")
        return 1
    old = sys.modules["conspo_baseline.rewards.math"]
    golds = [e.answer for e in load_benchmark("math500", args.data_dir)][: args.n_problems]
    comps, refs, _ = build_batch(golds)
    impls = {f"before ({args.baseline_rev})": old, "now": now}
    pending = {k: trainer_side(m, comps, refs) for k, m in impls.items()}
    for k, m in impls.items():  # import sympy, parse the golds
        [m.check_answer(p, g) for p, g in pending[k]]
    times = {k: ([], []) for k in impls}
    for _ in range(args.repeat):
        for k, m in impls.items():
            t = time.process_time()
            trainer_side(m, comps, refs)
            times[k][0].append(time.process_time() - t)
            t = time.process_time()
            [m.check_answer(p, g) for p, g in pending[k]]
            times[k][1].append(time.process_time() - t)
    print(
        f"- date: {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}; best of {args.repeat}, "
        f"CPU seconds of this process\n"
    )
    print("| code | trainer side: ms / completions/s | worker side: checks | ms | checks/s |")
    print("|---|---:|---:|---:|---:|")
    for k in impls:
        tr, wk = min(times[k][0]), min(times[k][1])
        print(
            f"| {k} | {tr * 1000:.0f} ms / {len(comps) / tr:.0f} | {len(pending[k])} | {wk * 1000:.0f} | "
            f"{len(pending[k]) / wk:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
