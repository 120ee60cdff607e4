"""Helpers shared by the test modules (one place; no test module imports another's helpers).

* ``make_batch``: random objective inputs in the package's row layout.
* ``TINY``, ``run_cli``, ``read_jsonl``, ``comparable``: subprocess runs of the real CLI at toy size.
* ``make_trainer``, ``reference_gradient``, ...: a tiny ConSPOTrainer for the TRL plug-in tests (TRL imported on use).
"""

import copy
import json
import os
import subprocess
import sys

import torch
from transformers import TrainerCallback

from conspo.models import build_char_tokenizer, build_tiny_model
from conspo.objectives import conspo_loss, count_valid_groups


def make_batch(n_groups, G, T, *, seed=0, binary=True, zero_length_rows=0, dtype=torch.float64, logp_scale=1.0):
    """Random (token_logps, old_token_logps, mask, rewards) in the package's row layout.

    Masks are ragged (each row has a random length, padding on the right); the first
    `zero_length_rows` rows have empty completions. Old log-probs are the current ones
    plus noise so that importance ratios spread across the clip range.
    """
    gen = torch.Generator().manual_seed(seed)
    B = n_groups * G
    token_logps = -torch.rand(B, T, generator=gen, dtype=dtype) * 3 * logp_scale
    old = token_logps + 0.3 * torch.randn(B, T, generator=gen, dtype=dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[:zero_length_rows] = 0
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.int64)
    if binary:
        rewards = torch.randint(0, 2, (B,), generator=gen).to(dtype)
    else:
        rewards = torch.rand(B, generator=gen, dtype=dtype)
    return token_logps, old, mask, rewards


# --- the real CLI at toy size ---------------------------------------------------------

TINY = [
    "--sft-steps",
    "3",
    "--prompts-per-step",
    "4",
    "--group-size",
    "4",
    "--eval-size",
    "40",
    "--no-progress",
    "--lr-warmup-steps",
    "2",
]


def run_cli(*args, cache_dir, check=True):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "conspo", *args, "--cache-dir", cache_dir],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def pause_before(marker, at_most: float) -> None:
    """Sleep a random time of up to ``at_most`` seconds, but return as soon as ``marker`` (a path) exists:
    a kill test signals its run somewhere after one checkpoint and at the latest when a later one is
    complete, however fast the machine (an idle one finished the whole run within a fixed delay)."""
    import random
    import time

    until = time.time() + random.uniform(0.0, at_most)
    while time.time() < until and not marker.exists():
        time.sleep(0.002)


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def comparable(metrics):
    return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in metrics]


# --- TRL plug-in -----------------------------------------------------------------------

PROMPTS = ["12+34=", "5+6=", "99+1=", "7+70=", "40+2=", "3+3=", "8+80=", "11+11="]


def parity_reward(prompts, completions, **kwargs):
    """Deterministic and mixed within groups: 1 for an odd-length completion."""
    return [float(len(c) % 2) for c in completions]


class GradCapture(TrainerCallback):
    """Keeps the gradients of the first optimizer step (before clipping and the update)."""

    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def make_trainer(
    tmp_dir,
    *,
    per_device,
    G,
    gas,
    seed=0,
    model=None,
    reward_funcs=parity_reward,
    eval_prompts=None,
    peft_config=None,
    **config,
):
    """A ConSPOTrainer on a tiny policy (or ``model``; with ``peft_config`` TRL wraps it in a LoRA adapter) that
    records every generation batch (``recorded``), the inputs of every compute_loss call (``loss_inputs``) and the
    gradient of step 1."""
    from datasets import Dataset

    from conspo.integrations.trl import ConSPOConfig, ConSPOTrainer

    class RecordingTrainer(ConSPOTrainer):
        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            self.recorded = getattr(self, "recorded", []) + [{k: v for k, v in output.items() if torch.is_tensor(v)}]
            return output

        def compute_loss(self, model, inputs, *args, **kwargs):
            self.loss_inputs = getattr(self, "loss_inputs", []) + [
                {k: v for k, v in inputs.items() if torch.is_tensor(v)}
            ]
            return super().compute_loss(model, inputs, *args, **kwargs)

    torch.manual_seed(seed)
    tokenizer = build_char_tokenizer()
    if model is None:
        model = build_tiny_model(len(tokenizer), hidden=32, layers=2, ffn=64, heads=2, seed=seed)
    initial = copy.deepcopy(model)
    args = ConSPOConfig(
        **{
            **dict(
                output_dir=str(tmp_dir),
                per_device_train_batch_size=per_device,
                num_generations=G,
                gradient_accumulation_steps=gas,
                max_completion_length=5,
                max_steps=1,
                learning_rate=1e-3,
                use_cpu=True,
                bf16=False,
                report_to=[],
                logging_steps=1,
                save_strategy="no",
                seed=seed,
                max_grad_norm=0.0,
                temperature=1.0,
                beta=0.0,
                tau=0.5,
                margin_start=0.1,
            ),
            **config,
        }
    )
    capture = GradCapture()
    eval_dataset = None if eval_prompts is None else Dataset.from_dict({"prompt": eval_prompts})
    trainer = RecordingTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        eval_dataset=eval_dataset,
        callbacks=[capture],
        peft_config=peft_config,
    )
    if peft_config is not None:  # the adapter is created (and initialised) by the trainer: start from its weights
        initial = copy.deepcopy(trainer.model)
    return trainer, capture, initial


def reference_gradient(trainer, initial, batch, G, *, tau=0.5, margin=0.1, objective="conspo", **loss_options):
    """Gradient of conspo_loss (or ``objective``'s in-graph loss, at its defaults, on-policy) on the whole recorded
    generation batch, in one graph, at the initial weights.

    The trainer's own model object is reset to the initial weights (TRL patches its forward to return
    log-probs) and scored with TRL's own log-prob function, so only the grouping and weighting differ.
    """
    model = trainer.model
    model.load_state_dict(initial.state_dict())
    model.zero_grad(set_to_none=True)
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    logps, _, _ = trainer._get_per_token_logps_and_entropies(
        model, input_ids, attention, batch["completion_ids"].size(1)
    )
    order = torch.argsort(batch["conspo_row"])  # global group layout
    if objective != "conspo":
        from conspo.objectives import get_objective

        x = logps[order]
        loss, metrics = get_objective(objective).loss(
            x,
            x.detach(),
            batch["completion_mask"][order],
            batch["conspo_rewards"][order].to(x.dtype),
            G,
            **loss_options,
        )
        loss.backward()
        return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}, metrics
    loss, metrics = conspo_loss(
        logps[order],
        batch["completion_mask"][order],
        batch["conspo_rewards"][order],
        G,
        margin=margin,
        tau=tau,
        **loss_options,
    )
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}, metrics


def reference_gradient_of_union(trainer, initial, batches, G, *, tau=0.5, margin=0.1):
    """Gradient, at the initial weights, of the ConSPO loss of the union of ``batches`` (each whole groups):
    L = (1/|V|) sum over all valid groups = sum_b |V_b| L_b / sum_b |V_b|, every L_b in-graph."""
    model = trainer.model
    model.load_state_dict(initial.state_dict())
    model.zero_grad(set_to_none=True)
    total, n_valid = 0.0, 0.0
    for batch in batches:
        order = torch.argsort(batch["conspo_row"])
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)[order]
        attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)[order]
        mask, rewards = batch["completion_mask"][order], batch["conspo_rewards"][order]
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            model, input_ids, attention, batch["completion_ids"].size(1)
        )
        loss, _ = conspo_loss(logps, mask, rewards.to(logps.dtype), G, margin=margin, tau=tau)
        valid = count_valid_groups(mask, rewards, G)
        total, n_valid = total + loss * valid, n_valid + valid
    assert n_valid > 0, "no valid group: the test would be vacuous"
    (total / n_valid).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
