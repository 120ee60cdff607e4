"""Forward+backward cost of the policy objectives on identical random tensors.

For every (B rollouts, T tokens) size, one set of float32 tensors is built (token_logps with
requires_grad, old_token_logps = token_logps + N(0, 0.05) noise, a ragged mask laid out like
the trainer's int64 completion mask, binary rewards, groups of G=8) and each objective runs
``loss, metrics = f(...); loss.backward()`` on it. ``conspo`` is ``conspo_loss`` and ``grpo`` is
``grpo_loss``, called directly; ``dr_grpo``, ``dapo`` and ``gspo`` go through
``conspo.objectives.get_objective(name).loss``. The timed call includes the metrics each
objective computes (float conversions included), exactly as the trainer calls it.

Timing: time.perf_counter, explicit torch thread count, warm-up calls first, then repetitions
interleaved over the objectives (the order rotates every repetition so no objective always runs
first). Reported: median ms per call, the ratio of medians conspo/grpo with the 25-75%
range of the per-repetition paired ratios, time per million tokens (the slope, so linearity
is visible), and a least-squares fit ms = a + b * (B*T) per objective. Target stated in the
issue: ConSPO <= 1.05x GRPO.

    .venv/bin/python bench/bench_objectives.py            # full sizes, B, T in {256, 1024, 4096}
    .venv/bin/python bench/bench_objectives.py --quick    # smoke check, < 30 s
"""

from __future__ import annotations

import argparse
import gc
import math
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from conspo.objectives import conspo_loss, get_objective, grpo_loss  # noqa: E402

OBJECTIVES = ("grpo", "conspo", "dr_grpo", "dapo", "gspo")
TARGET = 1.05


from machine import busy_note, header_line  # noqa: E402  (bench/ is on sys.path when run as a script)

# ---- inputs and one timed call --------------------------------------------------------------


def make_inputs(batch: int, width: int, group_size: int, seed: int, dtype: torch.dtype):
    """Random tensors with the trainer's layout and dtypes (mask int64, like rollout.completion_mask)."""
    gen = torch.Generator().manual_seed(seed)
    logps = -(torch.rand(batch, width, generator=gen, dtype=dtype) * 4 + 0.01)  # log-probs < 0
    old = logps + 0.05 * torch.randn(batch, width, generator=gen, dtype=dtype)
    lengths = torch.randint(1, width + 1, (batch,), generator=gen)  # ragged, every row non-empty
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    rewards = (torch.rand(batch, generator=gen) < 0.4).to(torch.float32)  # binary
    return logps.requires_grad_(True), old, mask, rewards


def make_calls(logps, old, mask, rewards, group_size):
    calls = {
        "grpo": lambda: grpo_loss(logps, old, mask, rewards, group_size),
        "conspo": lambda: conspo_loss(logps, mask, rewards, group_size),
    }
    for name in ("dr_grpo", "dapo", "gspo"):
        objective = get_objective(name)
        calls[name] = lambda objective=objective: objective.loss(logps, old, mask, rewards, group_size)
    return calls


def timed(call, logps) -> float:
    logps.grad = None
    t0 = time.perf_counter()
    loss, _ = call()
    loss.backward()
    return time.perf_counter() - t0


def estimated_bytes(batch: int, width: int, dtype: torch.dtype) -> int:
    """Rough peak of one call: inputs (logps, old, grad, int64 mask) plus ~10 (B, T) temporaries."""
    item = torch.tensor([], dtype=dtype).element_size()
    return batch * width * (item * 13 + 8)


def measure(batch, width, args, dtype, names):
    logps, old, mask, rewards = make_inputs(batch, width, args.group_size, args.seed, dtype)
    calls = make_calls(logps, old, mask, rewards, args.group_size)
    for _ in range(args.warmup):
        for name in names:
            timed(calls[name], logps)
    # Repetitions: enough to fill --seconds-per-size, at least --min-reps, at most --max-reps.
    one_round = sum(timed(calls[name], logps) for name in names)
    reps = max(args.min_reps, min(args.max_reps, math.ceil(args.seconds_per_size / max(one_round, 1e-9))))
    times = {name: [] for name in names}
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            times[name].append(timed(calls[name], logps))
    del logps, old, mask, rewards, calls
    gc.collect()
    return times, reps


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x; returns (a, b)."""
    if len(xs) < 2:
        return float("nan"), ys[0] / xs[0] if xs else float("nan")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else float("nan")
    return my - b * mx, b


def quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    pos = q * (len(values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (B in {64, 256}, T in {64, 256}), < 30 s")
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="rollouts B (default 256 1024 4096)")
    ap.add_argument("--tokens", type=int, nargs="+", default=None, help="tokens T per rollout (default 256 1024 4096)")
    ap.add_argument("--group-size", type=int, default=8, help="G, rollouts per group (default 8)")
    ap.add_argument(
        "--objectives",
        nargs="+",
        default=list(OBJECTIVES),
        choices=OBJECTIVES,
        help="objectives to time (default: all; grpo and conspo are needed for the ratio)",
    )
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float64"), help="tensor dtype")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per objective and size first (default 2)")
    ap.add_argument("--min-reps", type=int, default=7, help="timed calls per objective and size, at least (default 7)")
    ap.add_argument("--max-reps", type=int, default=40, help="timed calls per objective and size, at most (default 40)")
    ap.add_argument(
        "--seconds-per-size",
        type=float,
        default=4.0,
        help="aim for this much timed work per size before --min/--max-reps (default 4)",
    )
    ap.add_argument(
        "--max-gb", type=float, default=2.0, help="skip sizes whose estimated tensors exceed this many GB (default 2)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.batch = args.batch or [64, 256]
        args.tokens = args.tokens or [64, 256]
        args.min_reps, args.seconds_per_size, args.warmup = 5, 2.0, 1
    args.batch = args.batch or [256, 1024, 4096]
    args.tokens = args.tokens or [256, 1024, 4096]
    if any(b % args.group_size for b in args.batch):
        ap.error(f"every --batch must be a multiple of --group-size={args.group_size}")

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    names = [n for n in OBJECTIVES if n in args.objectives]
    header, busy = header_line(args.threads), busy_note()
    started = time.perf_counter()

    rows, skipped = [], []
    for batch in args.batch:
        for width in args.tokens:
            need = estimated_bytes(batch, width, dtype)
            if need > args.max_gb * 1e9:
                skipped.append((batch, width, need))
                continue
            print(f"  measuring B={batch} T={width} ...", file=sys.stderr, flush=True)
            times, reps = measure(batch, width, args, dtype, names)
            rows.append((batch, width, times, reps))

    print("## Objective cost: forward + backward on identical random tensors\n")
    print(header + "\n")
    print(busy, end="")
    print(
        f"- tensors: {args.dtype}, token_logps requires_grad, old = logps + N(0, 0.05), ragged int64 mask "
        f"(lengths uniform in 1..T), binary rewards (P(1) = 0.4), G = {args.group_size}; call = "
        "`loss, metrics = f(...); loss.backward()` (metrics included)"
    )
    print(
        f"- per size: {args.warmup} warm-up call(s) per objective, then the timed repetitions (column `reps`), "
        "objectives interleaved in a rotating order; medians of time.perf_counter"
    )
    print(
        f"- conspo/grpo: ratio of the medians; [p25-p75] of the per-repetition paired ratios. "
        f"Target: ConSPO <= {TARGET:.2f}x GRPO"
    )
    if skipped:
        print(
            "- skipped (estimated tensors > --max-gb "
            f"{args.max_gb:g} GB): " + ", ".join(f"B={b} T={t} (~{n / 1e9:.1f} GB)" for b, t, n in skipped)
        )
    else:
        print(f"- skipped: none (largest estimate under --max-gb {args.max_gb:g} GB)")
    print()

    have_ratio = "grpo" in names and "conspo" in names
    head = (
        ["B", "T", "B*T"]
        + [f"{n} ms" for n in names]
        + (["conspo/grpo", "paired p25-p75", "target met"] if have_ratio else [])
        + ["reps"]
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---:|" * len(head))
    verdicts = []
    for batch, width, times, reps in rows:
        med = {n: statistics.median(times[n]) * 1e3 for n in names}
        cells = [str(batch), str(width), f"{batch * width:,}"] + [f"{med[n]:.2f}" for n in names]
        if have_ratio:
            ratio = med["conspo"] / med["grpo"]
            paired = [c / g for c, g in zip(times["conspo"], times["grpo"])]
            verdicts.append(ratio <= TARGET)
            cells += [
                f"{ratio:.3f}",
                f"{quantile(paired, 0.25):.3f}-{quantile(paired, 0.75):.3f}",
                "yes" if ratio <= TARGET else "no",
            ]
        cells.append(str(reps))
        print("| " + " | ".join(cells) + " |")

    print("\nTime per million tokens (median ms / (B*T / 1e6)); constant down the column = linear in B*T:\n")
    by_size = sorted(rows, key=lambda r: (r[0] * r[1], r[0]))
    head = ["B*T", "B", "T"] + [f"{n} ms/Mtok" for n in names]
    print("| " + " | ".join(head) + " |")
    print("|" + "---:|" * len(head))
    for batch, width, times, _ in by_size:
        mtok = batch * width / 1e6
        cells = [f"{batch * width:,}", str(batch), str(width)] + [
            f"{statistics.median(times[n]) * 1e3 / mtok:.1f}" for n in names
        ]
        print("| " + " | ".join(cells) + " |")

    print("\nLeast-squares fit over all sizes, median ms = a + b * (B*T / 1e6):\n")
    print("| objective | a (fixed ms per call) | b (ms per million tokens) | b / b_grpo |")
    print("|---|---:|---:|---:|")
    fits = {}
    for n in names:
        xs = [b * t / 1e6 for b, t, _, _ in rows]
        ys = [statistics.median(times[n]) * 1e3 for _, _, times, _ in rows]
        fits[n] = fit_line(xs, ys)
    for n in names:
        a, b = fits[n]
        rel = f"{b / fits['grpo'][1]:.3f}" if "grpo" in fits and fits["grpo"][1] else "-"
        print(f"| {n} | {a:.2f} | {b:.1f} | {rel} |")

    if have_ratio and verdicts:
        print(f"\nConSPO <= {TARGET:.2f}x GRPO at {sum(verdicts)} of {len(verdicts)} sizes.")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"Wall time {time.perf_counter() - started:.0f} s; peak RSS of this process {peak:.0f} MB.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
