"""One full RL step (generate, verify, objective, optimizer) of our trainer vs TRL's GRPOTrainer.

Same tiny model (the cached warmed-up base of ``conspo.warmup.tiny_base``: the default
1.05M-parameter Qwen2 + character tokenizer), same task (``addition``), 16 prompts x G=8,
<= 6 new tokens, temperature 0.7, float32 on CPU, no evaluation during the run, no
checkpoints but the final one, no progress bars. Four runs:

  ours-conspo   conspo.train.train(TrainConfig(objective="conspo"))
  ours-grpo     conspo.train.train(TrainConfig(objective="grpo"))
  trl-grpo      the same config with engine="trl": TRL's stock GRPOTrainer, loss_type="grpo",
                use_cpu=True, bf16=False, gradient_checkpointing=False (conspo.integrations.trl_engine)
  trl-conspo    engine="trl", objective="conspo": conspo.integrations.trl.ConSPOTrainer

Each run is a fresh process (``--no-isolate`` runs them all in one); the runs are interleaved
round by round (rotating order). Per step we read metrics.jsonl:

  wall step     time between this step's metrics line and the previous one (time.perf_counter
                stamped when the line is written), the same clock for both engines: everything
                a step costs, optimizer and logging included. steps/s = 1 / median wall step.
  ours          time/step_s = time/generate_s (sampling + verification) + time/train_s
                (log-prob forward, objective, backward, clipping, optimizer step, metrics)
  TRL           time/step_s mirrors TRL's ``step_time``, which times ``training_step`` only:
                generation, rewards, forward and backward, but NOT clipping, the optimizer
                step, the scheduler or logging. It is shown, but the ratios use wall step.

The first --skip steps of each run and its last step (which holds the final held-out
evaluation) are dropped; medians pool the remaining steps of all rounds. Targets stated in
the issue: ours/TRL >= 1.25x steps/s, ConSPO/GRPO inside our trainer <= 1.05x step time.

    .venv/bin/python bench/bench_trainer_step.py           # 3 rounds x 4 runs x 20 steps
    .venv/bin/python bench/bench_trainer_step.py --quick   # smoke check, < 30 s (short runs, one process)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = {  # name: (engine, objective)
    "ours-conspo": ("native", "conspo"),
    "ours-grpo": ("native", "grpo"),
    "trl-grpo": ("trl", "grpo"),
    "trl-conspo": ("trl", "conspo"),
}
TARGET_SPEEDUP, TARGET_RATIO = 1.25, 1.05


from machine import busy_note, header_line, run_fresh  # noqa: E402  (bench/ is on sys.path when run as a script)

# ---- the runs ---------------------------------------------------------------------------------


def make_config(spec: dict):
    from conspo.config import TrainConfig

    engine, objective = RUNS[spec["run"]]
    return TrainConfig(
        objective=objective,
        engine=engine,
        model="tiny",
        task="addition",
        seed=spec["seed"],
        output_dir=spec["output_dir"],
        overwrite=True,
        steps=spec["steps"],
        prompts_per_step=spec["prompts"],
        group_size=spec["group_size"],
        max_new_tokens=spec["max_new_tokens"],
        eval_every=0,
        eval_size=spec["eval_size"],
        log_samples_every=0,
        save_every=0,
        device="cpu",
        dtype="float32",
        threads=spec["threads"],
        progress=False,
        sft_steps=spec["sft_steps"],
        cache_dir=spec["cache_dir"],
    )


def worker(specs: list[dict]) -> None:
    """Run each spec (one training run) in this process; print one RESULT line per run."""
    import warnings

    import torch
    from transformers.utils import logging as hf_logging

    from conspo import reporting
    from conspo.train import train

    warnings.filterwarnings("ignore")
    hf_logging.disable_progress_bar()
    original_write = reporting.MetricsWriter.write

    def stamped_write(self, step, metrics):  # the same wall clock for both engines
        original_write(self, step, {**metrics, "bench/perf_counter": time.perf_counter()})

    reporting.MetricsWriter.write = stamped_write
    for spec in specs:
        torch.set_num_threads(spec["threads"])
        shutil.rmtree(spec["output_dir"], ignore_errors=True)
        started = time.perf_counter()
        train(make_config(spec), log=lambda *a, **k: None)
        wall = time.perf_counter() - started
        with open(Path(spec["output_dir"]) / "metrics.jsonl") as f:
            records = [json.loads(line) for line in f if line.strip()]
        print(
            "RESULT "
            + json.dumps(
                {"spec": spec, "records": records, "run_wall_s": wall, "torch_threads": torch.get_num_threads()}
            ),
            flush=True,
        )
        if not spec.get("keep"):
            shutil.rmtree(spec["output_dir"], ignore_errors=True)


def run_workers(specs: list[dict], threads: int, timeout: float) -> list[dict]:
    label = str([s["run"] for s in specs])
    return run_fresh(
        __file__, "--_worker", specs, threads=threads, timeout=timeout, label=label, expect=len(specs), check_exit=True
    )


def step_rows(result: dict, skip: int) -> list[dict]:
    """Per-step timings of one run: steps skip+1 .. N-1 (the last holds the final evaluation)."""
    records = sorted((r for r in result["records"] if r.get("step", 0) >= 1), key=lambda r: r["step"])
    stamps = {r["step"]: r["bench/perf_counter"] for r in result["records"]}
    n = result["spec"]["steps"]
    rows = []
    for r in records:
        k = r["step"]
        if k <= skip or k >= n or (k - 1) not in stamps:
            continue
        rows.append(
            {
                "wall": stamps[k] - stamps[k - 1],
                "reported": r.get("time/step_s"),
                "generate": r.get("time/generate_s"),
                "train": r.get("time/train_s"),
                "length": r.get("gen/completion_len_mean"),
                "reward": r.get("reward/mean"),
                "mixed": r["groups/mixed_frac"]
                if "groups/mixed_frac" in r
                else (1 - r["frac_reward_zero_std"] if "frac_reward_zero_std" in r else None),
            }
        )
    return rows


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec=".3f"):
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--_worker":
        worker(json.loads(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: 1 round, 5 steps per run, all runs in one process, a 10-step base in /tmp",
    )
    ap.add_argument(
        "--runs", nargs="+", default=list(RUNS), choices=list(RUNS), help="runs to compare (default: all four)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="rounds of all runs, interleaved (default 3)")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per run (default 20)")
    ap.add_argument("--skip", type=int, default=3, help="first steps of each run not measured (default 3)")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step (default 16)")
    ap.add_argument("--group-size", type=int, default=8, help="G, completions per prompt (default 8)")
    ap.add_argument("--max-new-tokens", type=int, default=6, help="generation limit (default 6, the task's)")
    ap.add_argument(
        "--eval-size",
        type=int,
        default=16,
        help="held-out problems in the before/after evaluations, outside the timed steps (default 16)",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--sft-steps",
        type=int,
        default=200,
        help="warm-up steps of the tiny base (default 200 = the trainer's default base, cached)",
    )
    ap.add_argument(
        "--cache-dir", default="~/.cache/conspo", help="where the tiny base is cached (default ~/.cache/conspo)"
    )
    ap.add_argument("--out", default="/tmp/conspo-bench-trainer-step", help="run directories go here (removed after)")
    ap.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="each run in a fresh process (default: yes; --quick: no)",
    )
    ap.add_argument("--timeout", type=float, default=600, help="seconds per worker process (default 600)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.skip = 1, 5, 1
        args.sft_steps = 10 if args.sft_steps == 200 else args.sft_steps
        args.cache_dir = "/tmp/conspo-bench-cache" if args.cache_dir == "~/.cache/conspo" else args.cache_dir
        args.isolate = False if args.isolate is None else args.isolate
    if args.isolate is None:
        args.isolate = True
    if args.steps < args.skip + 3:
        ap.error("--steps must be at least --skip + 3 (the last step holds the final evaluation)")

    import torch

    torch.set_num_threads(args.threads)
    header, busy = header_line(args.threads), busy_note()
    started = time.perf_counter()

    # The base is built (or found in the cache) once, before any timed run.
    from transformers.utils import logging as hf_logging

    from conspo.config import TrainConfig
    from conspo.tasks import get_task
    from conspo.warmup import tiny_base

    hf_logging.disable_progress_bar()
    defaults = TrainConfig()
    t0 = time.perf_counter()
    messages = []
    _, _, base_path = tiny_base(
        get_task("addition"),
        steps=args.sft_steps,
        lr=defaults.sft_lr,
        batch_size=defaults.sft_batch_size,
        seed=defaults.sft_seed,
        cache_dir=args.cache_dir,
        log=messages.append,
    )
    base_note = f"{base_path} ({'built in %.0f s' % (time.perf_counter() - t0) if 'warm-up took' in ' '.join(messages) else 'cached'})"

    out = Path(args.out)
    specs = []
    for rnd in range(args.rounds):
        order = args.runs[rnd % len(args.runs) :] + args.runs[: rnd % len(args.runs)]
        for run in order:
            specs.append(
                dict(
                    run=run,
                    round=rnd,
                    seed=args.seed,
                    output_dir=str(out / f"{run}-r{rnd}"),
                    steps=args.steps,
                    prompts=args.prompts,
                    group_size=args.group_size,
                    max_new_tokens=args.max_new_tokens,
                    eval_size=args.eval_size,
                    threads=args.threads,
                    sft_steps=args.sft_steps,
                    cache_dir=args.cache_dir,
                )
            )
    results = []
    if args.isolate:
        for spec in specs:
            print(f"  round {spec['round'] + 1}/{args.rounds}: {spec['run']} ...", file=sys.stderr, flush=True)
            results += run_workers([spec], args.threads, args.timeout)
    else:
        print(f"  {len(specs)} runs in one process ...", file=sys.stderr, flush=True)
        results = run_workers(specs, args.threads, args.timeout * len(specs))

    per_run = {run: [] for run in args.runs}
    round_medians = {run: [] for run in args.runs}
    run_walls = {run: [] for run in args.runs}
    for result in results:
        run = result["spec"]["run"]
        rows = step_rows(result, args.skip)
        per_run[run] += rows
        round_medians[run].append(med([r["wall"] for r in rows]))
        run_walls[run].append(result["run_wall_s"])
    summary = {}
    for run, rows in per_run.items():
        summary[run] = {
            key: med([r[key] for r in rows])
            for key in ("wall", "reported", "generate", "train", "length", "reward", "mixed")
        }
        summary[run]["n"] = len(rows)

    print("## One RL step: our trainer vs TRL GRPOTrainer (tiny Qwen2, addition, CPU)\n")
    print(header + "\n")
    print(busy, end="")
    print(
        f"- workload: {args.prompts} prompts x G={args.group_size}, <= {args.max_new_tokens} new tokens, temperature "
        f"0.7, float32, lr 3e-5 (30-step warm-up), max_grad_norm 1; base {base_note}"
    )
    print(
        f"- {args.rounds} round(s) x {len(args.runs)} runs x {args.steps} steps, interleaved, rotating order; "
        f"{'a fresh process per run' if args.isolate else 'all runs in one process'}; steps 1..{args.skip} and "
        f"step {args.steps} (final evaluation) of every run dropped; medians over the remaining steps of all rounds"
    )
    print(
        "- wall step: time between consecutive metrics lines (same clock for both engines, everything included). "
        "reported: ours `time/step_s` (generate + train); TRL `step_time` (generation + rewards + forward/backward, "
        "no optimizer step)\n"
    )
    head = [
        "run",
        "steps measured",
        "wall step s",
        "steps/s",
        "per-round wall medians s",
        "reported time/step_s",
        "generate s",
        "train s",
        "other s (wall - reported)",
        "completion len",
        "reward mean",
        "mixed groups",
        "run wall s",
    ]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for run in args.runs:
        s = summary[run]
        other = s["wall"] - s["reported"] if s["wall"] is not None and s["reported"] is not None else None
        cells = [
            run,
            str(s["n"]),
            fmt(s["wall"]),
            fmt(1 / s["wall"] if s["wall"] else None, ".2f"),
            ", ".join(fmt(m) for m in round_medians[run]),
            fmt(s["reported"]),
            fmt(s["generate"]),
            fmt(s["train"]),
            fmt(other),
            fmt(s["length"], ".2f"),
            fmt(s["reward"], ".3f"),
            fmt(s["mixed"], ".2f"),
            ", ".join(f"{w:.1f}" for w in run_walls[run]),
        ]
        print("| " + " | ".join(cells) + " |")

    def wall(run):
        return summary.get(run, {}).get("wall")

    print("\n| comparison | value | target | met |")
    print("|---|---:|---:|---|")
    for ours, trl in (("ours-grpo", "trl-grpo"), ("ours-conspo", "trl-conspo")):
        if wall(ours) and wall(trl):
            speedup = wall(trl) / wall(ours)
            print(
                f"| steps/s {ours} / {trl} (wall) | {speedup:.2f}x | >= {TARGET_SPEEDUP}x | "
                f"{'yes' if speedup >= TARGET_SPEEDUP else 'no'} |"
            )
    if wall("ours-conspo") and wall("ours-grpo"):
        c, g = summary["ours-conspo"], summary["ours-grpo"]
        ratio = c["wall"] / g["wall"]
        print(
            f"| step time ours-conspo / ours-grpo (wall) | {ratio:.3f}x | <= {TARGET_RATIO}x | "
            f"{'yes' if ratio <= TARGET_RATIO else 'no'} |"
        )
        print(
            f"| step time ours-conspo / ours-grpo (time/step_s) | {c['reported'] / g['reported']:.3f}x | <= {TARGET_RATIO}x | "
            f"{'yes' if c['reported'] / g['reported'] <= TARGET_RATIO else 'no'} |"
        )
        print(f"| train time ours-conspo / ours-grpo (time/train_s) | {c['train'] / g['train']:.3f}x | - | - |")
    if wall("trl-conspo") and wall("trl-grpo"):
        print(f"| step time trl-conspo / trl-grpo (wall) | {wall('trl-conspo') / wall('trl-grpo'):.3f}x | - | - |")
    print("\nBreakdown of our trainer's step (medians; shares of generate + train):\n")
    print(
        "| run | generation + verification s | share | log-probs + objective + backward + clip + optimizer s | share "
        "| logging and the rest s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for run in ("ours-conspo", "ours-grpo"):
        s = summary.get(run)
        if s and s["generate"] is not None and s["train"] is not None:
            both = s["generate"] + s["train"]
            print(
                f"| {run} | {s['generate']:.3f} | {s['generate'] / both:.0%} | {s['train']:.3f} | {s['train'] / both:.0%} "
                f"| {s['wall'] - s['reported']:.3f} |"
            )
    if any((summary.get(r) or {}).get("mixed") == 0 for r in args.runs):
        print(
            "\nNOTE: no group had both correct and wrong completions in some run (mixed groups 0): ConSPO then skips "
            "its backward pass entirely, so its step is not comparable. Use a competent base (the default "
            "--sft-steps 200), not the --quick one."
        )
    print(f"Wall time {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
