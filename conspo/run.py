"""What both engines share around the training loop: the run directory, the task and model a
config names, resume-config merging, checkpoint saving with clear errors, and the summary.

``conspo.train`` (native loop) and ``conspo.integrations.trl_engine`` (TRL) both build on this,
so a run looks the same whichever engine trained it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path

import torch

from conspo.checkpoint import find_checkpoint, list_checkpoints, save_checkpoint
from conspo.config import TrainConfig
from conspo.errors import ConfigError, RunError


def prepare_run_dir(cfg: TrainConfig) -> Path:
    """Create (or check) the run directory; refuse to write into another run without --overwrite/--resume."""
    if not cfg.output_dir:
        cfg.output_dir = f"runs/{cfg.objective}-seed{cfg.seed}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(cfg.output_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not cfg.resume and not cfg.overwrite:
        raise ConfigError(f"output_dir {run_dir} exists and is not empty: pass --resume {run_dir} to continue it, "
                          "--overwrite to replace it, or another --output-dir")
    if cfg.overwrite and not cfg.resume and run_dir.exists():
        for name in ("metrics.jsonl", "samples.jsonl", "summary.json"):
            (run_dir / name).unlink(missing_ok=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output_dir {run_dir} is not writable: {e}") from e
    return run_dir


def resolve_device_dtype(cfg: TrainConfig) -> tuple[torch.device, torch.dtype]:
    """``auto`` device: CUDA when available; ``auto`` dtype: bfloat16 on a GPU that supports it, else float32."""
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    if cfg.dtype == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return device, torch.bfloat16 if bf16 else torch.float32
    return device, getattr(torch, cfg.dtype)


def make_task(cfg: TrainConfig):
    """The task the config names (prompts, held-out problems, verifier)."""
    from conspo.tasks import get_task

    if cfg.task == "math":
        return get_task("math", train=cfg.train_data, heldout=cfg.eval_data, data_dir=cfg.data_dir or None,
                        template=cfg.prompt_template, answer_extraction=cfg.answer_extraction)
    return get_task(cfg.task)


def load_model(cfg: TrainConfig, task, device, dtype, log):
    """(model, tokenizer): the cached tiny base for ``model=tiny``, else a transformers causal LM."""
    from conspo.models import load_policy, load_tokenizer
    from conspo.warmup import tiny_base

    if cfg.model == "tiny":
        model, tokenizer, _ = tiny_base(task, steps=cfg.sft_steps, lr=cfg.sft_lr, batch_size=cfg.sft_batch_size,
                                        seed=cfg.sft_seed, cache_dir=cfg.cache_dir, log=log)
        return model.to(device=device, dtype=dtype), tokenizer
    return load_policy(cfg.model, dtype=dtype, device=device), load_tokenizer(cfg.model)


def prepare_for_training(model, cfg: TrainConfig):
    """Activation checkpointing and LoRA as the config asks; returns the model to train."""
    if cfg.gradient_checkpointing:
        # non-reentrant: works with frozen inputs (LoRA) without enable_input_require_grads
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora_r:
        from peft import get_peft_model

        from conspo.models import lora_config

        model = get_peft_model(model, lora_config(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                                  target_modules=cfg.lora_target_modules))
    return model


def precision(cfg: TrainConfig, device: torch.device):
    """The autocast context of every forward pass: bfloat16 compute over float32 weights with
    ``mixed_precision=bf16``, else a no-op."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16")


def merge_resumed_config(cfg: TrainConfig, explicit: set[str]) -> TrainConfig:
    """The resumed run's saved config, with the options given explicitly now on top."""
    checkpoint = find_checkpoint(cfg.resume)
    with open(checkpoint / "state.json") as f:
        saved = json.load(f)["config"]
    merged = TrainConfig(**{k: v for k, v in saved.items() if k in {f.name for f in fields(TrainConfig)}})
    for name in explicit | {"resume", "stop_after"}:
        setattr(merged, name, getattr(cfg, name))
    if "output_dir" not in explicit:
        merged.output_dir = str(checkpoint.parent if checkpoint.name.startswith("checkpoint-") else checkpoint)
    return merged


def save_run_checkpoint(run_dir: Path, step: int, model, optimizer, py_rng, cfg: TrainConfig, **state) -> None:
    """An atomic checkpoint holding the config and ``state``; a failed write says what is intact."""
    try:
        save_checkpoint(run_dir, step, model, optimizer, py_rng, keep=cfg.keep_checkpoints,
                        extra={"config": asdict(cfg), **state})
    except OSError as e:
        raise RunError(f"could not write checkpoint-{step} in {run_dir}: {e}. {what_is_intact(run_dir)}") from e


def what_is_intact(run_dir: Path) -> str:
    kept = [p.name for p in list_checkpoints(run_dir)]
    return (f"Earlier checkpoints are intact ({', '.join(kept) or 'none yet'}); free space and continue with "
            f"--resume {run_dir}")


def write_config(run_dir: Path, cfg: TrainConfig) -> None:
    import yaml

    with open(run_dir / "config.yaml", "w") as f:
        yaml.safe_dump(asdict(cfg), f, sort_keys=False)


def finish_run(cfg: TrainConfig, run_dir: Path, model, tokenizer, *, accuracy_before: float, wall: float,
               skipped_steps: int, engine: str, log) -> dict:
    """Write final/ (model), summary.json and curves.png from metrics.jsonl; log the summary table."""
    from conspo.models import save_final
    from conspo.reporting import plot_run, read_metrics

    metrics = read_metrics(run_dir / "metrics.jsonl")
    accuracy_after = [m["heldout/accuracy"] for m in metrics if "heldout/accuracy" in m][-1]
    rewards = [m["reward/mean"] for m in metrics if "reward/mean" in m]
    tail = max(len(rewards) // 10, 1)
    summary = {
        "objective": cfg.objective,
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
    save_final(model, tokenizer, run_dir / "final", tiny=cfg.model == "tiny", lora_save=cfg.lora_save)
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
        ("mean reward, first -> last 10% of steps", f"{s['reward_mean_first_10pct']:.3f} -> {s['reward_mean_last_10pct']:.3f}"),
        ("wall time", f"{s['wall_seconds']:.0f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'':<{width}} | result |", f"|{'-' * (width + 2)}|--------|"]
    lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
    outputs = [n for n in ("metrics.jsonl", "samples.jsonl", "curves.png", "summary.json") if (run_dir / n).exists()]
    lines.append(f"\noutputs in {run_dir}: {', '.join(outputs)}, final/ (model)")
    return "\n".join(lines)
