"""Where metrics go: ``metrics.jsonl`` (always), TensorBoard and W&B (optional), PNG plots."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

REPORTERS = ("none", "tensorboard", "wandb")


class MetricsWriter:
    """Appends one JSON line per step to ``metrics.jsonl`` and mirrors it to the chosen reporters.

    On resume, lines for steps after the checkpoint are dropped first (they belong to the
    part of the run that is being redone), so the file equals an uninterrupted run's.
    """

    def __init__(self, run_dir: Path, report_to: list[str], config: dict, resume_step: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None:
            truncate_metrics(self.path, resume_step)
        self._file = open(self.path, "a")
        self._tb = self._wandb = None
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError(
                    "--report-to tensorboard needs the tensorboard package: pip install tensorboard"
                ) from e
            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if "wandb" in report_to:
            try:
                import wandb
            except ImportError as e:
                raise RuntimeError("--report-to wandb needs the wandb package: pip install wandb") from e
            self._wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "conspo"), config=config, dir=str(run_dir), resume="allow"
            )

    def write(self, step: int, metrics: dict) -> None:
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep it visible instead of silently dropping it
    return value


def read_metrics(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only records with step <= last_step (and drop a torn last line from a crash)."""
    if not path.exists():
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", -1) <= last_step:
                kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def plot_run(metrics: list[dict], out_png: Path, title: str) -> None:
    """Reward (sampled) and held-out accuracy (greedy) against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [m["step"] for m in metrics if "reward/mean" in m]
    rewards = [m["reward/mean"] for m in metrics if "reward/mean" in m]
    axes[0].plot(steps, rewards, lw=0.8, alpha=0.5, label="per step")
    if len(rewards) >= 10:
        w = max(len(rewards) // 20, 5)
        smooth = [
            sum(rewards[max(0, i - w + 1) : i + 1]) / len(rewards[max(0, i - w + 1) : i + 1])
            for i in range(len(rewards))
        ]
        axes[0].plot(steps, smooth, lw=1.8, label=f"mean of last {w}")
    axes[0].set(xlabel="optimizer step", ylabel="mean reward (sampled)", title="training reward")
    axes[0].legend()
    evals = [(m["step"], m["heldout/accuracy"]) for m in metrics if "heldout/accuracy" in m]
    if evals:
        axes[1].plot(*zip(*evals), marker="o")
    axes[1].set(xlabel="optimizer step", ylabel="accuracy (greedy)", title="held-out accuracy")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
