"""``conspo train --engine trl``: the same task, model and options, driven through TRL.

ConSPO runs on ``ConSPOTrainer``; the baselines run on TRL's stock ``GRPOTrainer`` with the
matching ``loss_type``. One generation batch = one optimizer step (``prompts_per_step *
group_size`` rows per device, no gradient accumulation), as in our own trainer. Outputs use
the same layout (metrics.jsonl with our metric names next to TRL's, summary.json, final/).

Both engines score log-probs of logits divided by the sampling temperature (the distribution
the rollouts were drawn from). TRL's generation and sampler RNG differ from ours, so runs are
comparable in distribution, not row for row.

Checkpoints are transformers' with its pickled parts written as safetensors + JSON, and a
``state.json`` written last that marks each complete (``conspo.trl_checkpoint``).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, fields
from pathlib import Path

from transformers import TrainerCallback

from conspo.config import TrainConfig
from conspo.errors import ConfigError, Interrupted
from conspo.heldout import evaluate_greedy
from conspo.models import load_model
from conspo.objective_options import ObjectiveOptions
from conspo.objectives import get_objective
from conspo.precision import compute_dtype, resolve_device_dtype
from conspo.reporting import MetricsWriter
from conspo.rollout import with_bos
from conspo.run import (
    StopRequest,
    checkpoint_to_resume,
    finish_run,
    make_task,
    new_run_id,
    prepare_run_dir,
    resolved_settings,
    write_config,
)
from conspo.tasks import run_rewards
from conspo.trl_checkpoint import CheckpointCallback, with_safetensors_checkpoints

#: TRL's loss_type and options for each baseline objective; clip ranges come from the objective's own
#: defaults in conspo.objectives (one place), overridden by --eps-low / --eps-high.
TRL_LOSS_OPTIONS = {
    "grpo": dict(loss_type="grpo"),
    "dr_grpo": dict(loss_type="dr_grpo", scale_rewards="none"),
    "dapo": dict(loss_type="dapo"),
    "gspo": dict(loss_type="grpo", importance_sampling_level="sequence"),
}


def trl_arguments(cfg: TrainConfig, *, max_new_tokens: int, output_dir: str, use_cpu: bool, dtype=None) -> dict:
    """Keyword arguments of ``ConSPOConfig`` (conspo) or ``GRPOConfig`` (baselines) for this run.

    ``dtype``: the loaded weights' (default float32). TRL's ``bf16`` is on for bfloat16 weights or bf16 compute
    over float32 weights (``compute_dtype``: TRL's mixed precision keeps float32 master weights, as ours).

    One generation batch = one optimizer step: ``prompts_per_step * group_size`` rows per device,
    no gradient accumulation, as in the native trainer.
    """
    import torch

    dtype = dtype or torch.float32
    bf16 = dtype == torch.bfloat16 or compute_dtype(cfg, torch.device("cpu" if use_cpu else "cuda"), dtype) is not None
    args = dict(
        output_dir=output_dir,
        per_device_train_batch_size=cfg.prompts_per_step * cfg.group_size,
        gradient_accumulation_steps=1,
        num_generations=cfg.group_size,
        max_completion_length=max_new_tokens,
        max_steps=cfg.steps,
        learning_rate=cfg.lr,
        warmup_steps=cfg.lr_warmup_steps,
        lr_scheduler_type="constant_with_warmup",
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=cfg.seed,
        logging_steps=1,
        save_strategy="no",
        save_total_limit=None,  # checkpoints are asked for and rotated by CheckpointCallback
        report_to=cfg.reporters() or [],
        use_cpu=use_cpu,
        bf16=bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        disable_tqdm=not cfg.progress,
        num_iterations=cfg.updates_per_batch,
        # vLLM: TRL's own options under the same names; TRL reads each only in its mode (validate() refuses the rest)
        use_vllm=cfg.vllm_mode != "none",
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=cfg.vllm_tensor_parallel_size,
        vllm_server_host=cfg.vllm_server_host,
        vllm_server_port=cfg.vllm_server_port,
        **({"vllm_mode": cfg.vllm_mode} if cfg.vllm_mode != "none" else {}),
        mask_truncated_completions=cfg.mask_truncated,  # the same masking as mask_truncated_rows (tested)
        # TRL sums the reward functions of trl_reward_functions with these weights: the rewards + factor * penalty
        **(
            {"reward_weights": [*reward_weights(cfg), *([cfg.overlong_penalty_factor] if cfg.overlong_buffer else [])]}
            if cfg.overlong_buffer or cfg.reward_weights
            else {}
        ),
    )
    if get_objective(cfg.objective).score_objective:  # ConSPO, DisCO, REAL, your own: ConSPOTrainer
        # the objective options are one declaration (ObjectiveOptions) on both sides: passed through by name
        options = {f.name: getattr(cfg, f.name) for f in fields(ObjectiveOptions)}
        return {**args, **options, "beta": 0.0, "objective": cfg.objective, "group_mode": cfg.group_mode}
    clip = get_objective(cfg.objective).option_defaults
    return {
        **args,
        "beta": cfg.beta,
        **TRL_LOSS_OPTIONS[cfg.objective],
        "epsilon": clip["eps_low"] if cfg.eps_low is None else cfg.eps_low,
        "epsilon_high": clip["eps_high"] if cfg.eps_high is None else cfg.eps_high,
    }


def unwrap(model):
    """The transformers model inside a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def use_conspo_sampler(model, tokenizer, task):
    """Give the model conspo's neutral generation config before TRL reads it; return the model's own and the
    ``StopRule`` (with vLLM, its ids go to vLLM's SamplingParams as ``stop_token_ids``).

    TRL builds its sampler from its own options and lets transformers fill every other field from
    ``model.generation_config`` (a repetition penalty, an n-gram ban, ...), and stops at that config's EOS
    ids plus the tokenizer's: with this config it stops at every id of ``stop_rule`` (chat turn markers
    included) and adds nothing else, like the native engine.
    """
    from transformers import GenerationConfig

    from conspo.rollout import stop_rule

    stop = stop_rule(unwrap(model).generation_config, tokenizer, tuple(getattr(task, "stop_strings", ())))
    if stop.strings:
        raise ConfigError(
            f"--engine trl cannot stop generation at a string ({list(stop.strings)!r}, the prompt template's "
            "end of line without a chat template): use --engine native, or a template that ends at EOS"
        )
    own = unwrap(model).generation_config
    unwrap(model).generation_config = GenerationConfig(
        eos_token_id=list(stop.token_ids), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id
    )
    return own, stop


def reward_weights(cfg: TrainConfig) -> list[float]:
    """The weights of the run's rewards (--reward-weights, else 1 each; the task's verifier alone: [1.0])."""
    return list(cfg.reward_weights) or [1.0] * max(1, len(cfg.reward))


def trl_reward_functions(cfg: TrainConfig, task_reward, *, max_new_tokens: int) -> list:
    """The reward functions TRL sums, weighted by ``trl_arguments``' ``reward_weights``: the task's verifier or the
    user's rewards (``task_reward``: one function or a list, passed unchanged) and, with ``overlong_buffer``, TRL's own
    soft overlong punishment (the formula of ``overlong_penalty``, tested equal)."""
    rewards = list(task_reward) if isinstance(task_reward, (list, tuple)) else [task_reward]
    if not cfg.overlong_buffer:
        return rewards
    from trl.rewards import get_soft_overlong_punishment

    return [
        *rewards,
        get_soft_overlong_punishment(max_completion_len=max_new_tokens, soft_punish_cache=cfg.overlong_buffer),
    ]


def trl_peft_config(cfg: TrainConfig):
    """The peft LoraConfig TRL applies to the policy (``--lora-r`` > 0), else None."""
    if not cfg.lora_r:
        return None
    from conspo.models import lora_config

    return lora_config(
        r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, target_modules=cfg.lora_target_modules
    )


def train_with_trl(cfg: TrainConfig, *, log=print) -> dict:
    """Run (or resume) ``cfg`` (validated; engine=trl; merged with its saved config when resumed)
    through TRL; return the summary dict."""
    started_here = not process_group_exists()  # a group the caller made is the caller's to end
    try:
        return run_trl_training(cfg, log=log)
    finally:
        if started_here:
            end_process_group()


def process_group_exists() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def end_process_group() -> None:
    """Destroy the process group accelerate started under torchrun, if any: the documented way to end
    one (pytorch/pytorch#190489). It does not stop gloo's worker threads while DDP still holds the group,
    so the ``conspo`` command also leaves a worker without interpreter teardown
    (:func:`conspo.cli.leave_without_teardown` says why)."""
    import torch.distributed as dist

    if process_group_exists():
        dist.destroy_process_group()


def run_trl_training(cfg: TrainConfig, *, log=print) -> dict:
    """The body of :func:`train_with_trl` (which also ends the process group however this returns)."""
    import torch

    try:
        from datasets import Dataset
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
        raise ConfigError(
            f"{processes.num_processes} processes: pass --output-dir so that all of them use the same run directory"
        )
    if main:
        run_dir = prepare_run_dir(cfg, log=log)
    processes.wait_for_everyone()
    run_dir = Path(cfg.output_dir)
    torch.manual_seed(cfg.seed)
    task = make_task(cfg)
    rewards = run_rewards(cfg, task) if cfg.reward else None  # the user's: passed to TRL unchanged
    cfg.check_generation_limit(cfg.max_new_tokens or task.max_new_tokens)  # before the model is loaded
    with processes.main_process_first():  # the tiny base's one-time warm-up is built by one process only
        model, tokenizer = load_model(cfg, task, torch.device("cpu"), dtype, log)
    max_new_tokens = cfg.max_new_tokens or task.max_new_tokens
    heldout = task.heldout_problems()[: cfg.eval_size or None]

    def evaluate(policy):  # greedy held-out accuracy, as the native trainer measures it
        return evaluate_greedy(
            policy,
            tokenizer,
            task,
            heldout,
            max_new_tokens=max_new_tokens,
            rewards=rewards,
            positive_threshold=cfg.positive_threshold,
        )[0]

    checkpoint, start_step = None, 0
    run_state = {"run_id": new_run_id(), "heldout_accuracy_before": None, "wall_seconds": 0.0}
    if cfg.resume:
        checkpoint = checkpoint_to_resume(cfg.resume, engine="trl")
        with open(checkpoint / "state.json") as f:
            saved = json.load(f)
        start_step = saved["step"]
        run_state = {k: saved[k] for k in run_state}
        if main:
            log(f"resumed from {checkpoint} at step {start_step}")
    elif main:
        run_state["heldout_accuracy_before"] = evaluate(model).accuracy
    if main:
        write_config(run_dir, cfg, resolved_settings(cfg, model, tokenizer, task, device, dtype, max_new_tokens))
    model_generation_config, stop = use_conspo_sampler(model, tokenizer, task)  # after resolved_settings has read it

    # TRL tokenises prompts without special tokens: the BOS a tokenizer adds (Llama, Gemma) goes into the text
    # (chat messages get theirs from the chat template)
    train = task.train_problems()
    problems = dict(zip(with_bos(tokenizer, [p.prompt for p in train]), train))
    if hasattr(task, "trl_rows"):  # your data: every column reaches the rewards, as in TRL
        rows = task.trl_rows()
        for row in rows:
            if isinstance(row["prompt"], str):
                row["prompt"] = with_bos(tokenizer, [row["prompt"]])[0]
        dataset = Dataset.from_list(rows)
    elif cfg.reward:  # a built-in task's prompts scored by your rewards: its columns are id and answer
        dataset = Dataset.from_dict(
            {
                "prompt": list(problems),
                "id": [p.id for p in problems.values()],
                "answer": [p.answer for p in problems.values()],
            }
        )
    else:
        dataset = Dataset.from_dict({"prompt": list(problems)})

    def task_reward(prompts, completions, **kwargs):
        return task.score([problems[p] for p in prompts], completions)

    reward_funcs = trl_reward_functions(cfg, rewards.funcs if rewards else task_reward, max_new_tokens=max_new_tokens)
    kwargs = trl_arguments(
        cfg, max_new_tokens=max_new_tokens, output_dir=str(run_dir), use_cpu=device.type == "cpu", dtype=dtype
    )
    if cfg.vllm_mode != "none":  # vLLM stops at the model's EOS only: the turn markers too, as with transformers
        kwargs["generation_kwargs"] = {"stop_token_ids": list(stop.token_ids)}

    writer = MetricsWriter(run_dir, [], asdict(cfg), resume_step=start_step if cfg.resume else None) if main else None
    if main and not cfg.resume:
        writer.write(0, {"heldout/accuracy": run_state["heldout_accuracy_before"]})
    renames = {
        "reward": "reward/mean",
        "reward_std": "reward/std",
        "loss": "objective/loss",
        "grad_norm": "objective/grad_norm",
        "step_time": "time/step_s",
        "learning_rate": "train/lr",
        "completions/clipped_ratio": "gen/truncated_frac",
        "completions/mean_length": "gen/completion_len_mean",
    }

    class Mirror(TrainerCallback):
        """Held-out evaluation every eval_every steps, and TRL's logs into our metrics.jsonl."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not main or not logs or "train_runtime" in logs:
                return
            metrics = {renames.get(k, k): v for k, v in logs.items()}
            if cfg.overlong_buffer:  # TRL logs the unweighted penalty; ours is the amount added to the reward
                penalty = logs.get(f"rewards/{reward_funcs[-1].__name__}/mean")
                if penalty is not None:
                    metrics["reward/overlong_penalty_mean"] = penalty * cfg.overlong_penalty_factor
            if cfg.mask_truncated and "gen/truncated_frac" in metrics:  # TRL masks the rows it counts as clipped
                metrics["gen/masked_truncated_frac"] = metrics["gen/truncated_frac"]
            step = state.global_step
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                result = evaluate(trainer.model)
                metrics.update({"heldout/accuracy": result.accuracy, **result.reward_metrics})
            writer.write(step, metrics)

    class Progress(TrainerCallback):
        """Our progress bar (reward, held-out accuracy) instead of TRL's per-step dict of ~27 metrics."""

        def on_train_begin(self, args, state, control, **kwargs):
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=cfg.steps,
                desc=f"{cfg.objective} (trl)",
                unit="step",
                disable=not (cfg.progress and main),
                dynamic_ncols=True,
            )

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
        args, trainer_class = (
            (ConSPOConfig(**kwargs), ConSPOTrainer)
            if get_objective(cfg.objective).score_objective
            else (GRPOConfig(**kwargs), GRPOTrainer)
        )
        with StopRequest(log) as stop:  # Ctrl-C: finish the step, checkpoint, stop
            checkpoints = CheckpointCallback(cfg, run_dir, main=main, start_step=start_step, stop=stop, state=run_state)
            trainer = with_safetensors_checkpoints(trainer_class)(
                model=model,
                reward_funcs=reward_funcs,
                args=args,
                processing_class=tokenizer,
                train_dataset=dataset,
                callbacks=[Mirror(), Progress(), checkpoints],
                peft_config=trl_peft_config(cfg),
            )
            for printer in (PrinterCallback, ProgressCallback):  # they print every log dict; Progress replaces them
                trainer.remove_callback(printer)
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    wall = run_state["wall_seconds"] + time.time() - checkpoints.started
    if main:
        writer.close()
    if checkpoints.stopped_at is not None:
        where = (
            f"step {checkpoints.stopped_at} of {cfg.steps}; checkpoint-{checkpoints.stopped_at} saved; "
            f"continue with: conspo train --resume {run_dir}"
        )
        if stop.requested:
            raise Interrupted(f"interrupted after {where}")
        if main:
            log(f"stopped after {where}")
        return {"objective": cfg.objective, "steps": checkpoints.stopped_at, "stopped_early": True}
    if not main:
        return {"objective": cfg.objective, "steps": cfg.steps, "main_process": False}
    for m in {trainer.model, unwrap(trainer.model)}:  # final/ keeps the model's own generation config
        m.generation_config = model_generation_config
    return finish_run(
        cfg,
        run_dir,
        trainer.model,
        tokenizer,
        accuracy_before=run_state["heldout_accuracy_before"],
        wall=wall,
        skipped_steps=0,
        engine="trl",
        log=log,
        run_id=run_state["run_id"],
    )
