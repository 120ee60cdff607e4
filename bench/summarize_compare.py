"""Summarise `conspo compare` outputs into one markdown table (and plots), merging runs across folders.

    .venv/bin/python bench/summarize_compare.py runs/chain/sweep
    .venv/bin/python bench/summarize_compare.py runs/chain/sweep/conspo-lr3e-5-* runs/chain/final/conspo-* \
        --plot docs/chain_objectives.png

Every compare.json found under the given folders contributes its runs, and so does every ``conspo train``
run directory (summary.json, metrics.jsonl, config.yaml) that no compare.json lists; runs with the same objective
and the same options (the learning rate, and those in ``ROW_KEYS`` that differ from the task's
defaults, read from each run's config.yaml) form one row, so one seed per folder (as
bench/chain_comparison.sh runs them) and several seeds per folder give the same table. Each row:
final held-out accuracy (mean +- sample std over seeds), the change from the base, steps to a common
target, the sampled completions' length and truncated fraction over the last 10% of steps, wall
time per run.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conspo.compare import late_cell, plot_comparison, plot_generation, run_record, summarise  # noqa: E402
from conspo.config import TrainConfig, task_defaults  # noqa: E402

ROW_KEYS = (
    "tau",
    "margin_schedule",
    "margin_start",
    "margin_end",
    "score",
    "temperature",
    "overlong_buffer",
    "mask_truncated",
    "dynamic_sampling",
    "steps",
)


def options_of(run_dir: Path) -> tuple[float, str]:
    """The run's learning rate and its options that differ from its task's defaults (``key=value, ...``)."""
    config = yaml.safe_load(open(run_dir / "config.yaml"))
    default = TrainConfig(**task_defaults(config["task"]))
    changed = [f"{k}={config[k]}" for k in ROW_KEYS if config.get(k) != getattr(default, k)]
    return float(config["lr"]), ", ".join([f"lr={config['lr']:g}", *changed])


def found_runs(folders: list[str]) -> list[tuple[Path, dict]]:
    """(run directory, run record) for every run of every compare.json under ``folders``, and for every
    ``conspo train`` run directory (summary.json + metrics.jsonl) that no compare.json lists."""
    found = []
    compares = sorted({p for folder in folders for p in Path(folder).glob("**/compare.json")})
    for path in compares:
        for name, runs in json.load(open(path))["runs"].items():
            found += [(path.parent / f"{name}-seed{run['seed']}", run) for run in runs]
    listed = {run_dir.resolve() for run_dir, _ in found}
    summaries = sorted({p for folder in folders for p in Path(folder).glob("**/summary.json")})  # ** includes folder
    for path in summaries:
        if path.parent.resolve() not in listed:
            found.append((path.parent, run_record(path.parent, json.load(open(path)))))
    return found


def collect(folders: list[str]) -> dict[str, list[dict]]:
    """Runs under ``folders`` (see :func:`found_runs`), keyed by ``objective [options]``, sorted by
    objective, then learning rate."""
    found = found_runs(folders)
    if not found:
        sys.exit(f"no compare.json or run directory (summary.json) under {' '.join(folders)}")
    rows: dict[str, list[dict]] = {}
    order: dict[str, tuple] = {}
    for run_dir, run in found:
        name = run["objective"]
        lr, options = options_of(run_dir)
        key = f"{name} [{options}]"
        rows.setdefault(key, []).append(run)
        order[key] = (name, lr, options)
    rows = {key: rows[key] for key in sorted(rows, key=order.get)}
    for key, runs in rows.items():
        seeds = [r["seed"] for r in runs]
        if len(set(seeds)) != len(seeds):
            sys.exit(f"{key}: seed listed twice ({sorted(seeds)}): the folders overlap")
    return rows


#: What bench/chain_comparison.sh adds to make DAPO complete; named as one thing in plot legends.
DAPO_COMPLETE = "overlong_buffer=5, mask_truncated=True, dynamic_sampling=True"


def short_label(key: str, rows: dict) -> str:
    """A legend label: the row's objective and the options not shared by every row."""
    option_sets = [set(k.split(" [", 1)[1].rstrip("]").split(", ")) for k in rows]
    common = set.intersection(*option_sets)
    name, options = key.split(" [", 1)
    options = options.rstrip("]").replace(DAPO_COMPLETE, "complete")
    kept = [o for o in options.split(", ") if o not in common]
    return f"{name} ({', '.join(kept)})" if kept else name


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+")
    ap.add_argument(
        "--plot",
        default="",
        help="plot every row's held-out curve (mean, min-max band) here, and the "
        "sampled length and truncation to <plot>_lengths.png",
    )
    ap.add_argument("--target", type=float, default=None, help="common target accuracy (default: base + 0.10)")
    args = ap.parse_args()
    rows = collect(args.folders)
    befores = [r["heldout_accuracy_before"] for runs in rows.values() for r in runs]
    target = args.target if args.target is not None else round(statistics.mean(befores) + 0.10, 3)
    print(
        f"base held-out accuracy (greedy): {statistics.mean(befores):.1%} (every run starts from the same "
        f"warmed-up base); target for 'steps to target': {target:.1%}\n"
    )
    print(
        "| objective [options] | seeds | accuracy after | change (points) | steps to target (median; reached) | "
        "sample length, last 10% | truncated, last 10% | wall s/run |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in summarise(rows, target):  # the same aggregation `conspo compare` prints
        steps = "never" if row["steps_to_target_median"] is None else f"{row['steps_to_target_median']:.0f}"
        print(
            f"| {row['objective']} | {row['seeds']} | {row['accuracy_after_mean']:.1%} +- "
            f"{row['accuracy_after_std']:.1%} | {100 * row['gain_mean']:+.1f} +- {100 * row['gain_std']:.1f} | "
            f"{steps} ({row['reached_target']}/{row['seeds']}) | {late_cell(row['late_length_mean'], '.1f')} | "
            f"{late_cell(row['late_truncated_mean'], '.1%')} | {row['wall_seconds_mean']:.0f} |"
        )
    if args.plot:
        labelled = {short_label(key, rows): runs for key, runs in rows.items()}
        plot_comparison(labelled, Path(args.plot), target)
        lengths = Path(args.plot).with_name(Path(args.plot).stem + "_lengths.png")
        plot_generation(labelled, lengths)
        print(f"\nplots: {args.plot}, {lengths}")


if __name__ == "__main__":
    main()
