"""What both engines share around the training loop: the run directory, the task and model a
config names, resume-config merging, checkpoint saving with clear errors, and the summary.

``conspo.train`` (native loop) and ``conspo.integrations.trl_engine`` (TRL) both build on this,
so a run looks the same whichever engine trained it.
"""

from __future__ import annotations

import json
import signal
import threading
import warnings
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path

import torch

from conspo.checkpoint import find_checkpoint, list_checkpoints, save_checkpoint
from conspo.config import TrainConfig
from conspo.errors import ConfigError, RunError
from conspo.rollout import ignored_generation_settings, ignored_settings_note

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


def resolve_device_dtype(cfg: TrainConfig) -> tuple[torch.device, torch.dtype]:
    """``auto`` device: CUDA when available. The weight dtype: ``auto`` is float32 everywhere (master weights and
    AdamW state; on a GPU the compute runs in bfloat16 under autocast: ``compute_dtype``)."""
    device = torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    return device, torch.float32 if cfg.dtype == "auto" else getattr(torch, cfg.dtype)


def compute_dtype(cfg: TrainConfig, device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    """bfloat16 when forward and backward run under bf16 autocast (``mixed_precision`` bf16, or auto on a CUDA GPU
    with bf16 and float32 weights), else None (compute in the weights' dtype)."""
    if cfg.mixed_precision == "bf16":
        return torch.bfloat16
    if (
        cfg.mixed_precision == "auto"
        and dtype == torch.float32
        and device.type == "cuda"
        and torch.cuda.is_bf16_supported()
    ):
        return torch.bfloat16
    return None


def precision_summary(cfg: TrainConfig, device: torch.device, dtype: torch.dtype) -> str:
    """One line for the run header: weights, compute and optimizer-state dtypes."""
    name = lambda d: str(d).removeprefix("torch.")  # noqa: E731
    compute = compute_dtype(cfg, device, dtype)
    trainable = "LoRA adapter float32 over a frozen " + name(dtype) + " base" if cfg.lora_r else name(dtype)
    return (
        f"weights {trainable}, compute {name(compute) + ' (autocast)' if compute else name(dtype)}, "
        f"AdamW state {'float32' if cfg.lora_r else name(dtype)}"
    )


def updates_lost_fraction(parameters, lr: float) -> float:
    """Share of the weights that an update of size ``lr`` (AdamW's step size per weight, roughly) leaves
    unchanged in their own dtype: ``w + lr`` rounds back to ``w``. 0 for float32 weights at any usual lr."""
    lost = total = 0
    for p in parameters:
        w = p.detach()
        lost += int(((w.float() + lr).to(w.dtype) == w).sum())
        total += w.numel()
    return lost / max(total, 1)


def make_task(cfg: TrainConfig):
    """The task the config names (prompts, held-out problems, verifier); bad data is a ConfigError."""
    from conspo.tasks import task_from_config

    return task_from_config(cfg)


def load_model(cfg: TrainConfig, task, device, dtype, log):
    """(model, tokenizer), with the task's prompts rendered for the tokenizer: the cached tiny base for
    ``model=tiny``, else a transformers causal LM.

    A model that cannot be found, whose positions cannot hold the longest prompt plus the generation limit,
    or whose weights, gradients and AdamW state alone would not fit in the device's free memory, is refused
    before any weight is loaded.
    """
    from conspo.models import check_positions, load_model_config, load_policy, load_tokenizer
    from conspo.warmup import tiny_base

    if cfg.model == "tiny":
        model, tokenizer, _ = tiny_base(
            task,
            steps=cfg.sft_steps,
            lr=cfg.sft_lr,
            batch_size=cfg.sft_batch_size,
            seed=cfg.sft_seed,
            cache_dir=cfg.cache_dir,
            decay_steps=cfg.sft_decay_steps,
            stop_accuracy=cfg.sft_stop_accuracy,
            log=log,
        )
        if hasattr(task, "set_tokenizer"):
            task.set_tokenizer(tokenizer)
        return model.to(device=device, dtype=dtype), tokenizer
    config = load_model_config(cfg.model)
    try:
        tokenizer = load_tokenizer(cfg.model)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--model {cfg.model}: could not load its tokenizer: {str(e).splitlines()[0]}") from None
    if hasattr(task, "set_tokenizer"):
        task.set_tokenizer(tokenizer)
    prompts = [p.prompt for p in task.train_problems()] + [
        p.prompt for p in task.heldout_problems()[: cfg.eval_size or None]
    ]
    check_positions(cfg.model, config, tokenizer, prompts, cfg.max_new_tokens or task.max_new_tokens)
    check_memory(cfg, config, device, dtype)
    try:
        model = load_policy(cfg.model, dtype=dtype, device=device)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--model {cfg.model}: could not load it: {str(e).splitlines()[0]}") from None
    ignored = ignored_generation_settings(model.generation_config)
    if ignored:
        log(ignored_settings_note(ignored, "config.yaml, `resolved`"))
    return model, tokenizer


def check_memory(cfg: TrainConfig, config, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse a model whose weights + gradients + AdamW state exceed the device's free memory.

    The floor counted (bytes): P*w for the weights (w bytes per parameter in ``dtype``), T*(w + 8)
    for the trainable parameters' gradients and AdamW's two float32 moments (T = P, or ~0 with
    LoRA), and P*w more for a frozen reference copy when beta > 0 without LoRA. Activations,
    logits and the KV cache come on top, so passing this check does not promise the run fits;
    failing it proves it cannot. P comes from the model's ``config`` on the meta device (no weights read).
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    width = torch.finfo(dtype).bits // 8
    trainable = 0 if cfg.lora_r else n_params
    needed = n_params * width + trainable * (width + 8) + (n_params * width if cfg.beta and not cfg.lora_r else 0)
    free = free_memory_bytes(device)
    if free is not None and needed > free:
        gib = 2**30
        raise ConfigError(
            f"--model {cfg.model}: {n_params / 1e9:.2f}B parameters need at least {needed / gib:.1f} GiB for weights, "
            f"gradients and AdamW state in {str(dtype).removeprefix('torch.')} (activations come on top), but "
            f"{device} has {free / gib:.1f} GiB free. Use LoRA (--lora-r 16), a smaller model, or a GPU"
        )


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` (CUDA: mem_get_info; CPU: MemAvailable of /proc/meminfo), None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def prepare_for_training(model, cfg: TrainConfig):
    """Activation checkpointing and LoRA as the config asks; returns the model to train."""
    if cfg.gradient_checkpointing:
        # non-reentrant: works with frozen inputs (LoRA) without enable_input_require_grads
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora_r:
        from peft import get_peft_model

        from conspo.models import lora_config

        with (
            warnings.catch_warnings()
        ):  # peft 0.21 calls a transformers method deprecated in 5.x: not the user's concern
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(
                model,
                lora_config(
                    r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, target_modules=cfg.lora_target_modules
                ),
            )
    return model


def precision(cfg: TrainConfig, device: torch.device, dtype: torch.dtype = torch.float32):
    """The autocast context of every forward pass: bfloat16 compute over the weights when ``compute_dtype``
    says so, else a no-op."""
    compute = compute_dtype(cfg, device, dtype)
    return torch.autocast(device_type=device.type, dtype=compute or torch.bfloat16, enabled=compute is not None)


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


def warn_low_precision(cfg: TrainConfig, model, dtype: torch.dtype, log) -> None:
    """With --low-precision-weights: say how much of an AdamW step of size lr this model's weights would lose."""
    if not cfg.low_precision_weights:
        return
    lost = updates_lost_fraction((p for p in model.parameters() if p.requires_grad), cfg.lr)
    log(
        f"WARNING --low-precision-weights: AdamW updates {str(dtype).removeprefix('torch.')} weights directly; "
        "an update "
        f"of size lr={cfg.lr:g} leaves {lost:.1%} of this model's weights unchanged (rounded away). --dtype auto keeps "
        "float32 weights and loses none"
    )


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
