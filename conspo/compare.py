"""``conspo compare``: the same task and budget for several objectives and seeds.

Each (objective, seed) is a full ``train`` run in ``<output_dir>/<objective>-seed<seed>``;
the table reports held-out accuracy at the last step and at the best evaluated step (the best is
chosen on the evaluation set itself, so it is optimistic), each as mean +- sample std over seeds,
steps to a target accuracy and wall time; a second table gives each objective's paired per-seed
difference to a reference objective with a 95% Student-t confidence interval
(``conspo.paired_stats``). One plot shows each objective's curve with its spread. ``report``
builds the same tables from runs already on disk. Results are what they are: nothing here
favours any objective.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from conspo.config import TrainConfig
from conspo.errors import ConfigError
from conspo.paired_stats import paired_difference
from conspo.reporting import read_metrics


def compare(
    base: TrainConfig,
    *,
    objectives: list[str],
    seeds: int,
    target_accuracy: float | None = None,
    log=print,
    train_fn=None,
    reference: str | None = None,
) -> dict:
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
            raise ConfigError(
                f"--{option.replace('_', '-')} is an option of conspo train, not of compare: every "
                "compared run trains to --steps (resume one run with conspo train --resume RUN_DIR)"
            )
    reference = check_reference(reference, objectives)
    root = Path(base.output_dir or f"runs/compare-{datetime.now():%Y%m%d-%H%M%S}")
    for name in objectives:  # fail before hours of training, not after
        replace(base, objective=name).validate()
    runs: dict[str, list[dict]] = {}
    for name in objectives:
        for seed in range(base.seed, base.seed + seeds):  # --seed S --seeds N: seeds S..S+N-1
            cfg = replace(base, objective=name, seed=seed, output_dir=str(root / f"{name}-seed{seed}"), resume="")
            summary = train_fn(cfg, log=tqdm.write)
            runs.setdefault(name, []).append(run_record(Path(cfg.output_dir), {**summary, "seed": seed}))
    return write_report(runs, root, target_accuracy=target_accuracy, reference=reference, steps=base.steps, log=log)


def check_reference(reference: str | None, objectives: list[str]) -> str:
    """The reference objective of the paired differences: ``reference``, else conspo when compared, else the first."""
    if reference is None:
        return "conspo" if "conspo" in objectives else objectives[0]
    if reference not in objectives:
        raise ConfigError(f"--reference {reference}: not among the compared objectives ({', '.join(objectives)})")
    return reference


def report(root: Path, *, reference: str | None = None, target_accuracy: float | None = None, log=print) -> dict:
    """The tables and plots of ``compare`` from finished runs already under ``root`` (``<objective>-seed<seed>`` folders
    holding summary.json and metrics.jsonl, at any depth; grouped by the summary's objective), without training."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(Path(root).rglob("*-seed*/summary.json")):  # also one compare per run (bench scripts)
        run_dir = path.parent
        name, _, seed = run_dir.name.rpartition("-seed")
        if not seed.isdigit():
            continue
        with open(path) as f:
            summary = json.load(f)
        runs.setdefault(summary.get("objective", name), []).append(run_record(run_dir, {**summary, "seed": int(seed)}))
    if not runs:
        raise ConfigError(f"--from-runs {root}: no finished runs (<objective>-seed<seed>/summary.json) there")
    for rs in runs.values():
        rs.sort(key=lambda r: r["seed"])
    steps = max(int(r.get("steps", 0)) for rs in runs.values() for r in rs)
    return write_report(
        runs,
        Path(root),
        target_accuracy=target_accuracy,
        reference=check_reference(reference, list(runs)),
        steps=steps,
        log=log,
    )


def write_report(
    runs: dict[str, list[dict]], root: Path, *, target_accuracy: float | None, reference: str, steps: int, log=print
) -> dict:
    """Tables (printed), plots and compare.json of finished runs."""
    if target_accuracy is None:
        befores = [r["heldout_accuracy_before"] for rs in runs.values() for r in rs]
        target_accuracy = round(statistics.mean(befores) + 0.10, 3)
    table = summarise(runs, target_accuracy)
    paired = paired_table(runs, reference)
    text = format_table(table, target_accuracy, steps) + "\n\n" + format_paired(paired, reference)
    plot_comparison(runs, root / "compare.png", target_accuracy)
    plot_generation(runs, root / "compare_lengths.png")
    with open(root / "compare.json", "w") as f:
        json.dump(
            {
                "target_accuracy": target_accuracy,
                "table": table,
                "reference": reference,
                "paired": paired,
                "runs": runs,
            },
            f,
            indent=1,
        )
    log(text + f"\n\nplots: {root / 'compare.png'}, {root / 'compare_lengths.png'}  data: {root / 'compare.json'}")
    return {"table": table, "paired": paired, "reference": reference, "runs": runs, "target_accuracy": target_accuracy}


def run_record(run_dir: Path, summary: dict) -> dict:
    """One finished run as compare.json keeps it: its summary, held-out curve and generation curve."""
    metrics = read_metrics(Path(run_dir) / "metrics.jsonl")
    curve = [(m["step"], m["heldout/accuracy"]) for m in metrics if "heldout/accuracy" in m]
    return {**summary, "curve": curve, "generation": generation_curve(metrics)}


def generation_curve(metrics: list[dict]) -> list[tuple[int, float, float]]:
    """(step, mean completion length, truncated fraction) of the sampled groups at every logged step."""
    return [
        (m["step"], m["gen/completion_len_mean"], m["gen/truncated_frac"])
        for m in metrics
        if "gen/completion_len_mean" in m
    ]


def late_generation(run: dict, fraction: float = 0.1) -> tuple[float, float] | None:
    """Mean completion length and truncated fraction over the last ``fraction`` of a run's steps (None if unlogged)."""
    rows = run.get("generation") or []
    if not rows:
        return None
    last = rows[-max(1, round(len(rows) * fraction)) :]
    return statistics.mean(r[1] for r in last), statistics.mean(r[2] for r in last)


def best_accuracy(run: dict) -> float:
    """Highest held-out accuracy over the run's evaluated steps (chosen on the evaluation set: optimistic)."""
    return max([a for _, a in run["curve"]] or [run["heldout_accuracy_after"]])


def paired_table(runs: dict[str, list[dict]], reference: str) -> list[dict]:
    """Per objective other than ``reference``: paired per-seed differences of last-step and best-step accuracy."""

    def by_seed(rs, value):
        return {r.get("seed", i): value(r) for i, r in enumerate(rs)}

    rows = []
    for name, rs in runs.items():
        if name == reference:
            continue
        rows.append(
            {
                "objective": name,
                "last": paired_difference(
                    by_seed(rs, lambda r: r["heldout_accuracy_after"]),
                    by_seed(runs[reference], lambda r: r["heldout_accuracy_after"]),
                ),
                "best": paired_difference(by_seed(rs, best_accuracy), by_seed(runs[reference], best_accuracy)),
            }
        )
    return rows


def format_paired(rows: list[dict], reference: str) -> str:
    def cell(d):
        if d["mean"] is None:
            return "no common seed"
        ci = "(CI needs >= 2 seeds)" if d["low"] is None else f"[{d['low'] * 100:+.1f}, {d['high'] * 100:+.1f}]"
        return f"{d['mean'] * 100:+.1f} {ci}"

    lines = [
        f"| objective - {reference} | paired seeds | last step: difference (points), 95% CI | "
        "best step (chosen on the eval set): difference, 95% CI |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['objective']} | {r['last']['seeds']} | {cell(r['last'])} | {cell(r['best'])} |")
    return "\n".join(lines) + (
        "\n(paired by seed: the same seed's run of each objective; CI = mean +- t(0.975, n-1) "
        "* sd / sqrt(n), Student's t)"
    )


def steps_to_target(curve: list[tuple[int, float]], target: float) -> int | None:
    """First evaluated step whose held-out accuracy is >= target (None if never)."""
    return next((step for step, acc in curve if acc >= target), None)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: dict[str, list[dict]], target: float) -> list[dict]:
    rows = []
    for name, rs in runs.items():
        after_mean, after_std = _mean_std([r["heldout_accuracy_after"] for r in rs])
        best_mean, best_std = _mean_std([best_accuracy(r) for r in rs])
        gain_mean, gain_std = _mean_std([r["heldout_accuracy_after"] - r["heldout_accuracy_before"] for r in rs])
        reached = [s for s in (steps_to_target(r["curve"], target) for r in rs) if s is not None]
        late = [g for g in (late_generation(r) for r in rs) if g is not None]
        rows.append(
            {
                "objective": name,
                "seeds": len(rs),
                "accuracy_after_mean": after_mean,
                "accuracy_after_std": after_std,
                "accuracy_best_mean": best_mean,
                "accuracy_best_std": best_std,
                "gain_mean": gain_mean,
                "gain_std": gain_std,
                "reached_target": len(reached),
                "steps_to_target_median": statistics.median(reached) if reached else None,
                "wall_seconds_mean": statistics.mean(r["wall_seconds"] for r in rs),
                # the sampled completions over the last 10% of steps (the likelihood-alignment argument is about them)
                "late_length_mean": statistics.mean(g[0] for g in late) if late else None,
                "late_truncated_mean": statistics.mean(g[1] for g in late) if late else None,
            }
        )
    return rows


def format_table(rows: list[dict], target: float, steps: int) -> str:
    lines = [
        f"| objective | seeds | held-out accuracy, last step | best step (chosen on the eval set) | change (points) | "
        f"steps to {target:.0%} (median, reached/seeds) | sample length, last 10% | truncated, last 10% | wall s/run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        reach = "never" if r["steps_to_target_median"] is None else f"{r['steps_to_target_median']:.0f}"
        lines.append(
            f"| {r['objective']} | {r['seeds']} | {r['accuracy_after_mean']:.1%} +- {r['accuracy_after_std']:.1%} | "
            f"{r['accuracy_best_mean']:.1%} +- {r['accuracy_best_std']:.1%} | "
            f"{r['gain_mean'] * 100:+.1f} +- {r['gain_std'] * 100:.1f} | "
            f"{reach} ({r['reached_target']}/{r['seeds']}) | "
            f"{late_cell(r['late_length_mean'], '.1f')} | {late_cell(r['late_truncated_mean'], '.1%')} | "
            f"{r['wall_seconds_mean']:.0f} |"
        )
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
                mean, shown = np.convolve(mean, kernel, mode="valid"), steps[window - 1 :]
            else:
                shown = steps
            ax.plot(shown, mean, label=f"{name} (n={len(rows)})")
    ax_len.set(xlabel="optimizer step", ylabel="sampled completion length (tokens)")
    ax_trunc.set(xlabel="optimizer step", ylabel="truncated fraction of samples")
    if ax_len.lines:
        ax_len.legend(fontsize=8)
    fig.suptitle(f"mean over seeds, moving average over {window} steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
