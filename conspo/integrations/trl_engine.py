"""``conspo train --engine trl``: the same task, model and options, driven through TRL.

ConSPO runs on ``ConSPOTrainer``; the baselines run on TRL's stock ``GRPOTrainer`` with the
matching ``loss_type``. One generation batch = one optimizer step (``prompts_per_step *
group_size`` rows per device, no gradient accumulation), as in our own trainer. Outputs use
the same layout (metrics.jsonl with our metric names next to TRL's, summary.json, final/).

Both engines score log-probs of logits divided by the sampling temperature (the distribution
the rollouts were drawn from). TRL's generation and sampler RNG differ from ours, so runs are
comparable in distribution, not row for row.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from conspo.config import TrainConfig
from conspo.errors import ConfigError
from conspo.heldout import evaluate_greedy
from conspo.objectives import get_objective
from conspo.reporting import MetricsWriter
from conspo.run import (
    finish_run,
    load_model,
    make_task,
    prepare_run_dir,
    remove_if_empty,
    resolve_device_dtype,
    write_config,
)


#: TRL's loss_type and options for each baseline objective; clip ranges come from the objective's own
#: defaults in conspo.objectives (one place), overridden by --eps-low / --eps-high.
TRL_LOSS_OPTIONS = {
    "grpo": dict(loss_type="grpo"),
    "dr_grpo": dict(loss_type="dr_grpo", scale_rewards="none"),
    "dapo": dict(loss_type="dapo"),
    "gspo": dict(loss_type="grpo", importance_sampling_level="sequence"),
}


def trl_arguments(cfg: TrainConfig, *, max_new_tokens: int, output_dir: str, use_cpu: bool, bf16: bool) -> dict:
    """Keyword arguments of ``ConSPOConfig`` (conspo) or ``GRPOConfig`` (baselines) for this run.

    One generation batch = one optimizer step: ``prompts_per_step * group_size`` rows per device,
    no gradient accumulation, as in the native trainer.
    """
    args = dict(
        output_dir=output_dir, per_device_train_batch_size=cfg.prompts_per_step * cfg.group_size,
        gradient_accumulation_steps=1, num_generations=cfg.group_size, max_completion_length=max_new_tokens,
        max_steps=cfg.steps, learning_rate=cfg.lr, warmup_steps=cfg.lr_warmup_steps,
        lr_scheduler_type="constant_with_warmup", weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, logging_steps=1, save_strategy="no",
        report_to=cfg.reporters() or [], use_cpu=use_cpu, bf16=bf16 or cfg.mixed_precision == "bf16",
        gradient_checkpointing=cfg.gradient_checkpointing, disable_tqdm=not cfg.progress,
        num_iterations=cfg.updates_per_batch,
        # vLLM: TRL's own options under the same names; TRL reads each only in its mode (validate() refuses the rest)
        use_vllm=cfg.vllm_mode != "none", vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=cfg.vllm_tensor_parallel_size, vllm_server_host=cfg.vllm_server_host,
        vllm_server_port=cfg.vllm_server_port,
        **({"vllm_mode": cfg.vllm_mode} if cfg.vllm_mode != "none" else {}),
        mask_truncated_completions=cfg.mask_truncated,  # the same masking as mask_truncated_rows (tested)
        # TRL sums the reward functions of trl_reward_functions with these weights: task + factor * penalty
        **({"reward_weights": [1.0, cfg.overlong_penalty_factor]} if cfg.overlong_buffer else {}),
    )
    if cfg.objective == "conspo":
        return {**args, "beta": 0.0, "tau": cfg.tau, "margin_schedule": cfg.margin_schedule,
                "margin_start": cfg.margin_start, "margin_end": cfg.margin_end, "margin_horizon": cfg.margin_horizon,
                "positive_threshold": cfg.positive_threshold, "positive_rule": cfg.positive_rule,
                "length_normalized_score": cfg.score == "mean",
                "group_mode": cfg.group_mode}
    clip = get_objective(cfg.objective).option_defaults
    return {**args, "beta": cfg.beta, **TRL_LOSS_OPTIONS[cfg.objective],
            "epsilon": clip["eps_low"] if cfg.eps_low is None else cfg.eps_low,
            "epsilon_high": clip["eps_high"] if cfg.eps_high is None else cfg.eps_high}


def trl_reward_functions(cfg: TrainConfig, task_reward, *, max_new_tokens: int) -> list:
    """The reward functions TRL sums, weighted by ``trl_arguments``' ``reward_weights``: the task's verifier and,
    with ``overlong_buffer``, TRL's own soft overlong punishment (the formula of ``overlong_penalty``, tested equal)."""
    if not cfg.overlong_buffer:
        return [task_reward]
    from trl.rewards import get_soft_overlong_punishment

    return [task_reward, get_soft_overlong_punishment(max_completion_len=max_new_tokens,
                                                      soft_punish_cache=cfg.overlong_buffer)]


def trl_peft_config(cfg: TrainConfig):
    """The peft LoraConfig TRL applies to the policy (``--lora-r`` > 0), else None."""
    if not cfg.lora_r:
        return None
    from conspo.models import lora_config

    return lora_config(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                       target_modules=cfg.lora_target_modules)


def train_with_trl(cfg: TrainConfig, *, log=print) -> dict:
    """Run ``cfg`` (validated; engine=trl) through TRL; return the summary dict."""
    from dataclasses import asdict

    import torch

    try:
        from datasets import Dataset
        from transformers import TrainerCallback
        from transformers.trainer_callback import PrinterCallback, ProgressCallback
        from trl import GRPOConfig, GRPOTrainer

        from conspo.integrations.trl import ConSPOConfig, ConSPOTrainer
    except ImportError as e:
        raise ConfigError(f"--engine trl needs TRL and datasets ({e}): pip install 'conspo[trl]'") from e

    # Launched by torchrun/accelerate with several processes, every process trains, and only the main one
    # owns the run directory: it writes config, metrics, held-out evaluations, final/ and the summary.
    from accelerate import PartialState

    device, dtype = resolve_device_dtype(cfg)
    processes = PartialState(cpu=device.type == "cpu")  # the same choice as TRL's use_cpu below
    main = processes.is_main_process
    if processes.num_processes > 1 and not cfg.output_dir:
        raise ConfigError(f"{processes.num_processes} processes: pass --output-dir so that all of them use the same run directory")
    if main:
        run_dir = prepare_run_dir(cfg, log=log)
    processes.wait_for_everyone()
    run_dir = Path(cfg.output_dir)
    torch.manual_seed(cfg.seed)
    task = make_task(cfg)
    cfg.check_generation_limit(cfg.max_new_tokens or task.max_new_tokens)  # before the model is loaded
    with processes.main_process_first():  # the tiny base's one-time warm-up is built by one process only
        model, tokenizer = load_model(cfg, task, torch.device("cpu"), dtype, log)
    if hasattr(task, "set_tokenizer"):
        task.set_tokenizer(tokenizer)
    max_new_tokens = cfg.max_new_tokens or task.max_new_tokens
    heldout = task.heldout_problems()[: cfg.eval_size or None]
    if main:
        before, _ = evaluate_greedy(model, tokenizer, task, heldout, max_new_tokens=max_new_tokens)
        write_config(run_dir, cfg)

    problems = {p.prompt: p for p in task.train_problems()}
    dataset = Dataset.from_dict({"prompt": list(problems)})

    def task_reward(prompts, completions, **kwargs):
        return task.score([problems[p] for p in prompts], completions)

    reward_funcs = trl_reward_functions(cfg, task_reward, max_new_tokens=max_new_tokens)
    kwargs = trl_arguments(cfg, max_new_tokens=max_new_tokens, output_dir=str(run_dir / "trl"),
                           use_cpu=device.type == "cpu", bf16=dtype == torch.bfloat16)
    args, trainer_class = ((ConSPOConfig(**kwargs), ConSPOTrainer) if cfg.objective == "conspo" else
                           (GRPOConfig(**kwargs), GRPOTrainer))

    writer = MetricsWriter(run_dir, [], asdict(cfg)) if main else None
    if main:
        writer.write(0, {"heldout/accuracy": before.accuracy})
    renames = {"reward": "reward/mean", "reward_std": "reward/std", "loss": "objective/loss", "grad_norm": "objective/grad_norm",
               "step_time": "time/step_s", "learning_rate": "train/lr", "completions/clipped_ratio": "gen/truncated_frac",
               "completions/mean_length": "gen/completion_len_mean"}

    class Mirror(TrainerCallback):
        """Held-out evaluation every eval_every steps, and TRL's logs into our metrics.jsonl."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not main or not logs or "train_runtime" in logs:
                return
            metrics = {renames.get(k, k): v for k, v in logs.items()}
            if cfg.overlong_buffer:  # TRL logs the unweighted penalty; ours is the amount added to the reward
                penalty = logs.get(f"rewards/{reward_funcs[1].__name__}/mean")
                if penalty is not None:
                    metrics["reward/overlong_penalty_mean"] = penalty * cfg.overlong_penalty_factor
            if cfg.mask_truncated and "gen/truncated_frac" in metrics:  # TRL masks the rows it counts as clipped
                metrics["gen/masked_truncated_frac"] = metrics["gen/truncated_frac"]
            step = state.global_step
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                result, _ = evaluate_greedy(trainer.model, tokenizer, task, heldout, max_new_tokens=max_new_tokens)
                metrics["heldout/accuracy"] = result.accuracy
            writer.write(step, metrics)

    class Progress(TrainerCallback):
        """Our progress bar (reward, held-out accuracy) instead of TRL's per-step dict of ~27 metrics."""

        def on_train_begin(self, args, state, control, **kwargs):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.steps, desc=f"{cfg.objective} (trl)", unit="step",
                            disable=not (cfg.progress and main), dynamic_ncols=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                self.bar.set_postfix(reward=f"{logs['reward']:.2f}", refresh=False)
                self.bar.update(state.global_step - self.bar.n)

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    with warnings.catch_warnings():
        # TRL/transformers deprecation notices about options this adapter sets on the user's behalf
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        trainer = trainer_class(model=model, reward_funcs=reward_funcs, args=args, processing_class=tokenizer,
                                train_dataset=dataset, callbacks=[Mirror(), Progress()], peft_config=trl_peft_config(cfg))
        for printer in (PrinterCallback, ProgressCallback):  # they print every log dict; Progress replaces them
            trainer.remove_callback(printer)
        started = time.time()
        trainer.train()
    wall = time.time() - started
    if not main:
        return {"objective": cfg.objective, "steps": cfg.steps, "main_process": False}
    writer.close()
    remove_if_empty(run_dir / "trl")  # TRL's output_dir; nothing is saved there unless a reporter writes logs
    return finish_run(cfg, run_dir, trainer.model, tokenizer, accuracy_before=before.accuracy, wall=wall,
                      skipped_steps=0, engine="trl", log=log)
