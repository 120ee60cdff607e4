"""``conspo train --engine trl``: the same task, model and options, driven through TRL.

ConSPO runs on ``ConSPOTrainer``; the baselines run on TRL's stock ``GRPOTrainer`` with the
matching ``loss_type``. One generation batch = one optimizer step (``prompts_per_step *
group_size`` rows per device, no gradient accumulation), as in our own trainer. Outputs use
the same layout (metrics.jsonl with our metric names next to TRL's, summary.json, final/).

Differences to keep in mind when comparing with ``--engine native``: TRL divides logits by the
sampling temperature when it computes log-probs, so ConSPO's scores are tempered there; its
generation and sampler RNG differ from ours, so runs are comparable in distribution, not row
for row.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml


def train_with_trl(cfg, *, log=print) -> dict:
    from dataclasses import asdict

    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from conspo.evaluate import evaluate_greedy
    from conspo.integrations.trl import ConSPOConfig, ConSPOTrainer
    from conspo.models import save_pretrained
    from conspo.reporting import MetricsWriter, plot_run, read_metrics
    from conspo.train import _load_model, _prepare_run_dir, _resolve_device_dtype, format_summary, make_task

    if cfg.resume:
        raise NotImplementedError("--resume with --engine trl: use TRL's own resume_from_checkpoint for now")
    run_dir = _prepare_run_dir(cfg)
    device, dtype = _resolve_device_dtype(cfg)
    torch.manual_seed(cfg.seed)
    task = make_task(cfg)
    model, tokenizer = _load_model(cfg, task, torch.device("cpu"), dtype, log)
    if hasattr(task, "set_tokenizer"):
        task.set_tokenizer(tokenizer)
    max_new_tokens = cfg.max_new_tokens or task.max_new_tokens
    heldout = task.heldout_problems()[: cfg.eval_size or None]
    before, _ = evaluate_greedy(model, tokenizer, task, heldout, max_new_tokens=max_new_tokens)
    with open(run_dir / "config.yaml", "w") as f:
        yaml.safe_dump(asdict(cfg), f, sort_keys=False)

    problems = {p.prompt: p for p in task.train_problems()}
    dataset = Dataset.from_dict({"prompt": list(problems)})

    def task_reward(prompts, completions, **kwargs):
        return task.score([problems[p] for p in prompts], completions)

    common = dict(
        output_dir=str(run_dir / "trl"), per_device_train_batch_size=cfg.prompts_per_step * cfg.group_size,
        gradient_accumulation_steps=1, num_generations=cfg.group_size, max_completion_length=max_new_tokens,
        max_steps=cfg.steps, learning_rate=cfg.lr, warmup_steps=cfg.lr_warmup_steps,
        lr_scheduler_type="constant_with_warmup", weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, logging_steps=1, save_strategy="no",
        report_to=cfg.reporters() or [], use_cpu=device.type == "cpu", bf16=dtype == torch.bfloat16,
        gradient_checkpointing=False, disable_tqdm=not cfg.progress, num_iterations=cfg.updates_per_batch,
    )
    if cfg.objective == "conspo":
        args = ConSPOConfig(**common, beta=0.0, tau=cfg.tau, margin_schedule=cfg.margin_schedule,
                            margin_start=cfg.margin_start, margin_end=cfg.margin_end, margin_horizon=cfg.margin_horizon,
                            positive_threshold=cfg.positive_threshold, length_normalized_score=cfg.score == "mean",
                            group_mode=cfg.group_mode)
        trainer_class = ConSPOTrainer
    else:
        loss = {"grpo": dict(loss_type="grpo"), "dr_grpo": dict(loss_type="dr_grpo", scale_rewards="none"),
                "dapo": dict(loss_type="dapo", epsilon_high=0.28),
                "gspo": dict(loss_type="grpo", importance_sampling_level="sequence", epsilon=3e-4, epsilon_high=4e-4)}
        options = loss[cfg.objective]
        if cfg.eps_low is not None:
            options["epsilon"] = cfg.eps_low
        if cfg.eps_high is not None:
            options["epsilon_high"] = cfg.eps_high
        args = GRPOConfig(**common, beta=cfg.beta, **options)
        trainer_class = GRPOTrainer

    writer = MetricsWriter(run_dir, [], asdict(cfg))
    writer.write(0, {"heldout/accuracy": before.accuracy})
    renames = {"reward": "reward/mean", "reward_std": "reward/std", "loss": "objective/loss", "grad_norm": "objective/grad_norm",
               "step_time": "time/step_s", "learning_rate": "train/lr", "completions/clipped_ratio": "gen/truncated_frac",
               "completions/mean_length": "gen/completion_len_mean"}

    class Mirror(TrainerCallback):
        """Held-out evaluation every eval_every steps, and TRL's logs into our metrics.jsonl."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "train_runtime" in logs:
                return
            metrics = {renames.get(k, k): v for k, v in logs.items()}
            step = state.global_step
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                result, _ = evaluate_greedy(trainer.model, tokenizer, task, heldout, max_new_tokens=max_new_tokens)
                metrics["heldout/accuracy"] = result.accuracy
            writer.write(step, metrics)

    trainer = trainer_class(model=model, reward_funcs=task_reward, args=args, processing_class=tokenizer,
                            train_dataset=dataset, callbacks=[Mirror()])
    started = time.time()
    trainer.train()
    wall = time.time() - started
    writer.close()
    metrics = read_metrics(run_dir / "metrics.jsonl")
    accuracy_after = [m["heldout/accuracy"] for m in metrics if "heldout/accuracy" in m][-1]
    rewards = [m["reward/mean"] for m in metrics if "reward/mean" in m]
    tail = max(len(rewards) // 10, 1)
    summary = {"objective": cfg.objective, "engine": "trl", "model": cfg.model, "task": cfg.task, "seed": cfg.seed,
               "steps": cfg.steps, "heldout_accuracy_before": before.accuracy, "heldout_accuracy_after": accuracy_after,
               "reward_mean_first_10pct": sum(rewards[:tail]) / tail, "reward_mean_last_10pct": sum(rewards[-tail:]) / tail,
               "skipped_steps": 0, "wall_seconds": round(wall, 1)}
    save_pretrained(trainer.model, tokenizer, run_dir / "final", tiny=cfg.model == "tiny")
    with open(run_dir / "summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    plot_run(metrics, Path(run_dir) / "curves.png", f"{cfg.objective} on {cfg.task} via TRL (seed {cfg.seed})")
    log(format_summary(summary, run_dir))
    return summary
