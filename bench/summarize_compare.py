"""Summarise `conspo compare` outputs (compare.json under a folder) into one markdown table and a plot.

    .venv/bin/python bench/summarize_compare.py runs/bench [--plot docs/compare_objectives.png]

Each row: one objective in one compare folder (objectives, or an ablation of ConSPO's options),
with the options that differ from the defaults, final held-out accuracy (mean +- sample std over
seeds), the change from the shared base, steps to a common target and wall time per run.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conspo.compare import late_cell, plot_comparison, plot_generation, summarise  # noqa: E402
from conspo.config import TrainConfig  # noqa: E402

ABLATION_KEYS = ("tau", "margin_schedule", "margin_start", "margin_end", "score", "temperature", "lr")


def options_of(run_dir: Path) -> str:
    config = yaml.safe_load(open(run_dir / "config.yaml"))
    default = TrainConfig()
    changed = [f"{k}={config[k]}" for k in ABLATION_KEYS if config.get(k) != getattr(default, k)]
    return ", ".join(changed) or "defaults"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--plot", default="", help="write a plot of the objectives' curves (mean, min-max band) here")
    ap.add_argument("--target", type=float, default=None, help="common target accuracy (default: base + 0.10)")
    args = ap.parse_args()
    found = sorted(Path(args.folder).glob("*/compare.json"))
    if not found:
        sys.exit(f"no compare.json under {args.folder}")
    data = {p.parent.name: json.load(open(p)) for p in found}
    befores = [r["heldout_accuracy_before"] for d in data.values() for rs in d["runs"].values() for r in rs]
    target = args.target if args.target is not None else round(statistics.mean(befores) + 0.10, 3)
    print(f"base held-out accuracy (greedy, 500 problems): {statistics.mean(befores):.1%} (all runs start from the same "
          f"warmed-up base); target for 'steps to target': {target:.1%}\n")
    print("| folder | objective | options | seeds | accuracy after | change (points) | steps to target (median; reached) | "
          "sample length, last 10% | truncated, last 10% | wall s/run |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    objectives = {}
    for folder, d in data.items():
        for row in summarise(d["runs"], target):  # the same aggregation `conspo compare` prints
            name = row["objective"]
            steps = "never" if row["steps_to_target_median"] is None else f"{row['steps_to_target_median']:.0f}"
            opts = options_of(Path(args.folder) / folder / f"{name}-seed0")
            print(f"| {folder} | {name} | {opts} | {row['seeds']} | {row['accuracy_after_mean']:.1%} +- "
                  f"{row['accuracy_after_std']:.1%} | {100 * row['gain_mean']:+.1f} +- {100 * row['gain_std']:.1f} | "
                  f"{steps} ({row['reached_target']}/{row['seeds']}) | {late_cell(row['late_length_mean'], '.1f')} | "
                  f"{late_cell(row['late_truncated_mean'], '.1%')} | {row['wall_seconds_mean']:.0f} |")
            if folder.startswith("objectives"):
                objectives[name] = d["runs"][name]
    if args.plot and objectives:
        plot_comparison(objectives, Path(args.plot), target)
        lengths = Path(args.plot).with_name(Path(args.plot).stem + "_lengths.png")
        plot_generation(objectives, lengths)
        print(f"\nplots: {args.plot}, {lengths}")


if __name__ == "__main__":
    main()
