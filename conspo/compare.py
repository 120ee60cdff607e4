"""``conspo compare``: the same task and budget for several objectives and seeds.

Each (objective, seed) is a full ``train`` run in ``<output_dir>/<objective>-seed<seed>``;
the table reports final held-out accuracy (mean +- sample std over seeds), steps to a
target accuracy and wall time, and one plot shows each objective's curve with its spread.
Results are what they are: nothing here favours any objective.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from conspo.config import TrainConfig
from conspo.errors import ConfigError
from conspo.reporting import read_metrics


def compare(base: TrainConfig, *, objectives: list[str], seeds: int, target_accuracy: float | None = None, log=print,
            train_fn=None) -> dict:
    """Train every (objective, seed) with ``train_fn(cfg, log=...)`` (default: the native trainer); table and plot.

    Seeds are ``base.seed, base.seed + 1, ..., base.seed + seeds - 1``.
    """
    from tqdm.auto import tqdm

    if train_fn is None:
        from conspo.train import train as train_fn
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: must be >= 1 (the number of seeds per objective)")
    for option in ("resume", "stop_after"):  # per-run options: a comparison runs every run to its end
        if getattr(base, option):
            raise ConfigError(f"--{option.replace('_', '-')} is an option of conspo train, not of compare: every "
                              "compared run trains to --steps (resume one run with conspo train --resume RUN_DIR)")
    root = Path(base.output_dir or f"runs/compare-{datetime.now():%Y%m%d-%H%M%S}")
    for name in objectives:  # fail before hours of training, not after
        replace(base, objective=name).validate()
    runs: dict[str, list[dict]] = {}
    for name in objectives:
        for seed in range(base.seed, base.seed + seeds):  # --seed S --seeds N: seeds S..S+N-1
            cfg = replace(base, objective=name, seed=seed, output_dir=str(root / f"{name}-seed{seed}"), resume="")
            summary = train_fn(cfg, log=tqdm.write)
            runs.setdefault(name, []).append(run_record(Path(cfg.output_dir), summary))
    if target_accuracy is None:
        befores = [r["heldout_accuracy_before"] for rs in runs.values() for r in rs]
        target_accuracy = round(statistics.mean(befores) + 0.10, 3)
    table = summarise(runs, target_accuracy)
    text = format_table(table, target_accuracy, base.steps)
    plot_comparison(runs, root / "compare.png", target_accuracy)
    plot_generation(runs, root / "compare_lengths.png")
    with open(root / "compare.json", "w") as f:
        json.dump({"target_accuracy": target_accuracy, "table": table, "runs": runs}, f, indent=1)
    log(text + f"\n\nplots: {root / 'compare.png'}, {root / 'compare_lengths.png'}  data: {root / 'compare.json'}")
    return {"table": table, "runs": runs, "target_accuracy": target_accuracy}


def run_record(run_dir: Path, summary: dict) -> dict:
    """One finished run as compare.json keeps it: its summary, held-out curve and generation curve."""
    metrics = read_metrics(Path(run_dir) / "metrics.jsonl")
    curve = [(m["step"], m["heldout/accuracy"]) for m in metrics if "heldout/accuracy" in m]
    return {**summary, "curve": curve, "generation": generation_curve(metrics)}


def generation_curve(metrics: list[dict]) -> list[tuple[int, float, float]]:
    """(step, mean completion length, truncated fraction) of the sampled groups at every logged step."""
    return [(m["step"], m["gen/completion_len_mean"], m["gen/truncated_frac"]) for m in metrics
            if "gen/completion_len_mean" in m]


def late_generation(run: dict, fraction: float = 0.1) -> tuple[float, float] | None:
    """Mean completion length and truncated fraction over the last ``fraction`` of a run's steps (None if unlogged)."""
    rows = run.get("generation") or []
    if not rows:
        return None
    last = rows[-max(1, round(len(rows) * fraction)):]
    return statistics.mean(r[1] for r in last), statistics.mean(r[2] for r in last)


def steps_to_target(curve: list[tuple[int, float]], target: float) -> int | None:
    """First evaluated step whose held-out accuracy is >= target (None if never)."""
    return next((step for step, acc in curve if acc >= target), None)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: dict[str, list[dict]], target: float) -> list[dict]:
    rows = []
    for name, rs in runs.items():
        after_mean, after_std = _mean_std([r["heldout_accuracy_after"] for r in rs])
        gain_mean, gain_std = _mean_std([r["heldout_accuracy_after"] - r["heldout_accuracy_before"] for r in rs])
        reached = [s for s in (steps_to_target(r["curve"], target) for r in rs) if s is not None]
        late = [g for g in (late_generation(r) for r in rs) if g is not None]
        rows.append({
            "objective": name,
            "seeds": len(rs),
            "accuracy_after_mean": after_mean,
            "accuracy_after_std": after_std,
            "gain_mean": gain_mean,
            "gain_std": gain_std,
            "reached_target": len(reached),
            "steps_to_target_median": statistics.median(reached) if reached else None,
            "wall_seconds_mean": statistics.mean(r["wall_seconds"] for r in rs),
            # the sampled completions over the last 10% of steps (the likelihood-alignment argument is about them)
            "late_length_mean": statistics.mean(g[0] for g in late) if late else None,
            "late_truncated_mean": statistics.mean(g[1] for g in late) if late else None,
        })
    return rows


def format_table(rows: list[dict], target: float, steps: int) -> str:
    lines = [f"| objective | seeds | held-out accuracy after | change (points) | steps to {target:.0%} (median, reached/seeds) | "
             "sample length, last 10% | truncated, last 10% | wall s/run |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reach = "never" if r["steps_to_target_median"] is None else f"{r['steps_to_target_median']:.0f}"
        lines.append(f"| {r['objective']} | {r['seeds']} | {r['accuracy_after_mean']:.1%} +- {r['accuracy_after_std']:.1%} | "
                     f"{r['gain_mean'] * 100:+.1f} +- {r['gain_std'] * 100:.1f} | {reach} ({r['reached_target']}/{r['seeds']}) | "
                     f"{late_cell(r['late_length_mean'], '.1f')} | {late_cell(r['late_truncated_mean'], '.1%')} | "
                     f"{r['wall_seconds_mean']:.0f} |")
    return "\n".join(lines) + f"\n(budget: {steps} optimizer steps per run; +- is the sample std over seeds)"


def late_cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def plot_comparison(runs: dict[str, list[dict]], out_png: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, rs in runs.items():
        steps = [s for s, _ in rs[0]["curve"]]
        accs = np.array([[a for _, a in r["curve"]] for r in rs if len(r["curve"]) == len(steps)])
        mean = accs.mean(0)
        ax.plot(steps, mean, marker="o", ms=3, label=f"{name} (n={len(accs)})")
        if len(accs) > 1:
            ax.fill_between(steps, accs.min(0), accs.max(0), alpha=0.2)
    ax.axhline(target, ls=":", c="gray", lw=1)
    ax.set(xlabel="optimizer step", ylabel="held-out accuracy (greedy)", title="mean over seeds; band: min-max")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def plot_generation(runs: dict[str, list[dict]], out_png: Path, window: int = 20) -> None:
    """Sampled completion length and truncated fraction over training, per objective (mean over seeds,
    a moving average over ``window`` steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax_len, ax_trunc) = plt.subplots(1, 2, figsize=(10, 3.6))
    kernel = np.ones(window) / window
    for name, rs in runs.items():
        rows = [r.get("generation") or [] for r in rs]
        width = min(len(g) for g in rows)
        if width == 0:
            continue
        steps = np.array([g[0] for g in rows[0][:width]])
        for column, ax in ((1, ax_len), (2, ax_trunc)):
            mean = np.array([[g[column] for g in run[:width]] for run in rows]).mean(0)
            if width >= window:  # smooth: per-step values of 128 samples are noisy
                mean, shown = np.convolve(mean, kernel, mode="valid"), steps[window - 1:]
            else:
                shown = steps
            ax.plot(shown, mean, label=f"{name} (n={len(rows)})")
    ax_len.set(xlabel="optimizer step", ylabel="sampled completion length (tokens)")
    ax_trunc.set(xlabel="optimizer step", ylabel="truncated fraction of samples")
    ax_len.legend(fontsize=8)
    fig.suptitle(f"mean over seeds, moving average over {window} steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
