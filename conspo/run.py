"""What both engines share around the training loop: the run directory, the task a config names,
resume-config merging, checkpoint saving with clear errors, the config record and the summary (the
model is loaded by ``conspo.models.load_model``, its dtypes chosen by ``conspo.precision``).

``conspo.train`` (native loop) and ``conspo.integrations.trl_engine`` (TRL) both build on this,
so a run looks the same whichever engine trained it.
"""

from __future__ import annotations

import json
import signal
import threading
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path

from conspo.checkpoint import find_checkpoint, list_checkpoints, save_checkpoint
from conspo.config import TrainConfig
from conspo.errors import ConfigError, RunError
from conspo.precision import precision_summary
from conspo.rollout import ignored_generation_settings

# What a run writes into its directory; --overwrite deletes exactly these (and nothing else).
RUN_FILES = ("metrics.jsonl", "samples.jsonl", "summary.json", "curves.png", "config.yaml")
RUN_DIRS = ("final", "tensorboard", "wandb", "trl")


def prepare_run_dir(cfg: TrainConfig, log=print) -> Path:
    """Create (or check) the run directory: one directory holds one run.

    Refuses to write into another run without --resume/--overwrite; --overwrite deletes the
    earlier run's files first, so its checkpoints can neither outlive nor be mixed with the new run's.
    """
    if not cfg.output_dir:
        cfg.output_dir = f"runs/{cfg.objective}-seed{cfg.seed}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(cfg.output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output_dir {run_dir} is a file, not a directory: choose another --output-dir")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not cfg.resume and not cfg.overwrite:
        if list_checkpoints(run_dir):
            raise ConfigError(
                f"output_dir {run_dir} holds a run: pass --resume {run_dir} to continue it, "
                "--overwrite to delete it and start over, or another --output-dir"
            )
        raise ConfigError(
            f"output_dir {run_dir} is not empty and holds no checkpoint to resume (a run stopped "
            "before its first save?): pass --overwrite to start over there, or another --output-dir"
        )
    if cfg.overwrite and not cfg.resume and run_dir.is_dir():
        removed = clear_run(run_dir)
        if removed:
            log(f"--overwrite: deleted the earlier run in {run_dir} ({', '.join(removed)})")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output_dir {run_dir} is not writable: {e}") from e
    return run_dir


def clear_run(run_dir: Path) -> list[str]:
    """Delete what a run wrote into ``run_dir`` (checkpoints, final/, logs, summary); return the names."""
    import shutil

    doomed = [
        p
        for p in run_dir.iterdir()
        if p.name in RUN_FILES or p.name in RUN_DIRS or p.name.startswith(("checkpoint-", ".tmp-checkpoint-"))
    ]
    for path in sorted(doomed):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return sorted(p.name for p in doomed)


def new_run_id() -> str:
    """A fresh id for a run; every checkpoint of the run carries it (``run_id`` in state.json)."""
    import uuid

    return uuid.uuid4().hex[:12]


def checkpoint_to_resume(path: str | Path, engine: str | None = None) -> Path:
    """The checkpoint ``--resume path`` continues from, after checking it belongs to one run
    (and, given ``engine``, that this engine wrote it: the two engines' checkpoints differ).

    A run directory whose checkpoints carry different run ids (copied together by hand, or
    left by a version without run ids next to a new run) is refused rather than guessed at.
    """
    try:
        checkpoint = find_checkpoint(path)
    except FileNotFoundError as e:
        raise ConfigError(
            f"{e}; a run stopped before its first checkpoint cannot be resumed: start it again "
            "with the same options and --overwrite"
        ) from None
    if engine is not None:
        with open(checkpoint / "state.json") as f:
            written_by = json.load(f).get("engine", "native")
        if written_by != engine:
            raise ConfigError(
                f"--resume {path}: {checkpoint.name} was written by --engine {written_by}; "
                f"resume it with --engine {written_by}"
            )
    if (Path(path) / "state.json").exists():  # a checkpoint named directly: the user chose it
        return checkpoint
    siblings = list_checkpoints(checkpoint.parent) if checkpoint.name.startswith("checkpoint-") else [checkpoint]
    ids = {}
    for sibling in siblings:
        with open(sibling / "state.json") as f:
            ids[sibling.name] = json.load(f).get("run_id")
    if len(set(ids.values())) > 1:
        listing = ", ".join(f"{name} (run {run_id})" for name, run_id in ids.items())
        raise ConfigError(
            f"--resume {path}: checkpoints of different runs in {checkpoint.parent}: {listing}; "
            "move the other run's checkpoints away or resume a checkpoint-<step> directory directly"
        )
    return checkpoint


class StopRequest:
    """Ctrl-C during training: the first one lets the current step finish, then the trainer saves
    a checkpoint and stops (``requested`` turns True); a second one stops at once.

    Why not stop at once: SIGINT lands between any two Python operations, e.g. halfway through
    the optimizer's update of the parameters, and a checkpoint of that state would be corrupt.
    """

    def __init__(self, log=print):
        self.requested, self._log, self._previous = False, log, None

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self._log(
            "Ctrl-C: finishing this step, then saving a checkpoint and stopping "
            "(Ctrl-C again stops at once and loses the steps since the last checkpoint)"
        )
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> "StopRequest":
        # only in the main thread (signals can only be caught there), and not when SIGINT is ignored
        # (a job started with nohup or in the background of a non-interactive shell)
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def remove_if_empty(run_dir: Path) -> None:
    """Remove a run directory that a failed start left empty (0-byte files count as empty)."""
    if not run_dir.is_dir() or any(p.is_dir() or p.stat().st_size for p in run_dir.iterdir()):
        return
    for p in run_dir.iterdir():
        p.unlink()
    run_dir.rmdir()


def make_task(cfg: TrainConfig):
    """The task the config names (prompts, held-out problems, verifier); bad data is a ConfigError."""
    from conspo.tasks import task_from_config

    return task_from_config(cfg)


def merge_resumed_config(cfg: TrainConfig, explicit: set[str]) -> TrainConfig:
    """The resumed run's saved config, with the options given explicitly now on top."""
    checkpoint = checkpoint_to_resume(cfg.resume)
    with open(checkpoint / "state.json") as f:
        saved = json.load(f)["config"]
    from conspo.config import task_defaults, upgrade_saved_options

    saved = upgrade_saved_options(saved)
    merged = TrainConfig(**{k: v for k, v in saved.items() if k in {f.name for f in fields(TrainConfig)}})
    from conspo.options import without_ineffective

    without_ineffective(merged, asdict(TrainConfig()), task_defaults(merged.task))  # saved by older versions
    for name in explicit | {"resume", "stop_after"}:
        setattr(merged, name, getattr(cfg, name))
    if "output_dir" not in explicit:
        merged.output_dir = str(checkpoint.parent if checkpoint.name.startswith("checkpoint-") else checkpoint)
    return merged


def save_run_checkpoint(run_dir: Path, step: int, model, optimizer, py_rng, cfg: TrainConfig, **state) -> None:
    """An atomic checkpoint holding the config and ``state``; a failed write says what is intact."""
    try:
        save_checkpoint(
            run_dir, step, model, optimizer, py_rng, keep=cfg.keep_checkpoints, extra={"config": asdict(cfg), **state}
        )
    except OSError as e:
        raise RunError(f"could not write checkpoint-{step} in {run_dir}: {e}. {what_is_intact(run_dir)}") from e


def what_is_intact(run_dir: Path) -> str:
    kept = [p.name for p in list_checkpoints(run_dir)]
    return (
        f"Earlier checkpoints are intact ({', '.join(kept) or 'none yet'}); free space and continue with "
        f"--resume {run_dir}"
    )


def write_config(run_dir: Path, cfg: TrainConfig, resolved: dict | None = None) -> None:
    """config.yaml: every option, then under ``resolved`` what the run derived from them and the model
    (sampler, stop tokens, precision): a record, ignored when the file is passed back as --config."""
    import yaml

    with open(run_dir / "config.yaml", "w") as f:
        yaml.safe_dump({**asdict(cfg), **({"resolved": resolved} if resolved else {})}, f, sort_keys=False)


def resolved_settings(cfg: TrainConfig, model, tokenizer, task, device, dtype, max_new_tokens: int) -> dict:
    """What the run samples and trains with, beyond its options: the sampler's whole generation config (nothing
    comes from the model's own), its stop ids and strings, and the precision."""
    from conspo.rollout import sampler_settings, stop_rule

    stop = stop_rule(model.generation_config, tokenizer, tuple(getattr(task, "stop_strings", ())))
    return {
        "sampler": sampler_settings(
            stop, greedy=False, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=max_new_tokens
        ),
        "stop_tokens": tokenizer.convert_ids_to_tokens(list(stop.token_ids)),
        "ignored_model_generation_settings": {
            k: repr(v) for k, v in ignored_generation_settings(model.generation_config).items()
        },
        "precision": precision_summary(cfg, device, dtype),
    }


def finish_run(
    cfg: TrainConfig,
    run_dir: Path,
    model,
    tokenizer,
    *,
    accuracy_before: float,
    wall: float,
    skipped_steps: int,
    engine: str,
    log,
    run_id: str | None = None,
) -> dict:
    """Write final/ (model), summary.json and curves.png from metrics.jsonl; log the summary table."""
    from conspo.models import save_final
    from conspo.reporting import plot_run, read_metrics

    metrics = read_metrics(run_dir / "metrics.jsonl")
    accuracy_after = [m["heldout/accuracy"] for m in metrics if "heldout/accuracy" in m][-1]
    rewards = [m["reward/mean"] for m in metrics if "reward/mean" in m]
    tail = max(len(rewards) // 10, 1)
    summary = {
        "objective": cfg.objective,
        "run_id": run_id,
        "engine": engine,
        "model": cfg.model,
        "task": cfg.task,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "heldout_accuracy_before": accuracy_before,
        "heldout_accuracy_after": accuracy_after,
        "reward_mean_first_10pct": sum(rewards[:tail]) / tail,
        "reward_mean_last_10pct": sum(rewards[-tail:]) / tail,
        "skipped_steps": skipped_steps,
        "wall_seconds": round(wall, 1),
    }
    save_final(
        model, tokenizer, run_dir / "final", tiny_task=cfg.task if cfg.model == "tiny" else "", lora_save=cfg.lora_save
    )
    with open(run_dir / "summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    via = "" if engine == "native" else f" via {engine.upper()}"
    plot_run(metrics, run_dir / "curves.png", f"{cfg.objective} on {cfg.task}{via} (seed {cfg.seed})")
    log(format_summary(summary, run_dir))
    return summary


def format_summary(s: dict, run_dir: Path) -> str:
    gain = s["heldout_accuracy_after"] - s["heldout_accuracy_before"]
    rows = [
        ("objective", s["objective"]),
        ("steps", s["steps"]),
        ("held-out accuracy before (greedy)", f"{s['heldout_accuracy_before']:.1%}"),
        ("held-out accuracy after (greedy)", f"{s['heldout_accuracy_after']:.1%}"),
        ("change", f"{gain * 100:+.1f} points"),
        (
            "mean reward, first -> last 10% of steps",
            f"{s['reward_mean_first_10pct']:.3f} -> {s['reward_mean_last_10pct']:.3f}",
        ),
        ("wall time", f"{s['wall_seconds']:.0f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'':<{width}} | result |", f"|{'-' * (width + 2)}|--------|"]
    lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
    outputs = [n for n in ("metrics.jsonl", "samples.jsonl", "curves.png", "summary.json") if (run_dir / n).exists()]
    lines.append(f"\noutputs in {run_dir}: {', '.join(outputs)}, final/ (model)")
    return "\n".join(lines)
