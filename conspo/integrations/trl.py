"""ConSPO on TRL's ``GRPOTrainer``: change one class, keep accelerate/DeepSpeed/FSDP/vLLM.

    from conspo.integrations.trl import ConSPOConfig, ConSPOTrainer
    trainer = ConSPOTrainer(model=..., reward_funcs=..., args=ConSPOConfig(..., tau=0.3), train_dataset=...)

Why a subclass is needed at all: out of the box TRL shuffles completions before splitting a
generation batch into gradient-accumulation micro-batches, lets a group straddle processes,
and hands the loss neither group ids nor rewards. ConSPO's loss of one completion depends on
its whole group, so this subclass keeps it exact in one of two ways (docs/design.md section 4):

* ``group_mode="whole"``: after TRL generates and shuffles, the local generation batch is
  re-ordered by whole groups (groups in random order, rows of a group together) and split
  again, so every micro-batch holds whole groups; the loss is ``conspo_loss`` in-graph,
  weighted by the micro-batch's share of the valid groups of the optimizer step (counted
  across processes) and by the number of processes (DDP/ZeRO/FSDP average gradients).
  Needs ``per_device_train_batch_size % num_generations == 0``.
* ``group_mode="coefficients"``: at generation time every completion is scored without
  gradient, scores and rewards are gathered from all processes, and dL/ds is computed in
  closed form (``conspo_coefficients``); each micro-batch then back-propagates
  ``sum_i c_i * s_i``. Works for any layout. Exact when each generation batch gets one
  optimizer step; otherwise the coefficients are stale for the later steps, which is
  warned about once and logged as ``conspo/coef_staleness_steps``.

The margin follows ``self.state.global_step``, so it survives checkpoint resume. All math is
imported from ``conspo.objectives``; this file only moves tensors to where they are needed.
Only the methods below are overridden, each wrapping ``super()``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

try:
    import trl
    from trl import GRPOConfig, GRPOTrainer
    from trl.trainer.utils import split_tensor_dict
except ImportError as e:  # pragma: no cover - exercised only without trl
    raise ImportError("conspo.integrations.trl needs TRL: pip install 'conspo[trl]' (trl==1.16.0)") from e

from conspo.objectives import (
    coefficient_surrogate,
    conspo_coefficients_and_metrics,
    conspo_loss,
    count_valid_groups,
    resolve_group_mode,
    sequence_scores,
)
from conspo.schedules import MARGIN_SCHEDULES, margin_curriculum

SUPPORTED_TRL_VERSIONS = ("1.16.",)
if not trl.__version__.startswith(SUPPORTED_TRL_VERSIONS):
    raise ImportError(
        f"conspo.integrations.trl supports TRL {', '.join(v + 'x' for v in SUPPORTED_TRL_VERSIONS)}; found "
        f"{trl.__version__}. It overrides private GRPOTrainer methods whose behaviour changes between releases: "
        "pip install trl==1.16.0"
    )


@dataclass
class ConSPOConfig(GRPOConfig):
    """``GRPOConfig`` plus ConSPO's options (see ``conspo.objectives.conspo_loss``)."""

    tau: float = field(default=0.3, metadata={"help": "ConSPO temperature."})
    margin_schedule: str = field(default="constant", metadata={"help": f"Margin curriculum: {', '.join(MARGIN_SCHEDULES)}."})
    margin_start: float = field(default=0.0, metadata={"help": "Margin at step 0."})
    margin_end: float = field(default=0.0, metadata={"help": "Margin reached at margin_horizon."})
    margin_horizon: int = field(default=0, metadata={"help": "Optimizer steps to reach margin_end; 0: max_steps."})
    positive_threshold: float = field(default=0.5, metadata={"help": "Reward >= this is a positive completion."})
    length_normalized_score: bool = field(default=True, metadata={"help": "Score = mean token log-prob (else sum)."})
    group_mode: str = field(default="auto", metadata={"help": "whole, coefficients, or auto (whole when "
                                                              "per_device_train_batch_size % num_generations == 0)."})

    def __post_init__(self):
        super().__post_init__()
        if not self.tau > 0:
            raise ValueError(f"ConSPOConfig.tau must be > 0, got {self.tau}")
        if self.margin_schedule not in MARGIN_SCHEDULES:
            raise ValueError(f"ConSPOConfig.margin_schedule must be one of {MARGIN_SCHEDULES}, got {self.margin_schedule!r}")
        if self.beta != 0.0:
            raise ValueError("ConSPOTrainer does not add GRPO's KL term; set beta=0.0")
        per_device, G = self.per_device_train_batch_size, self.num_generations
        try:
            resolve_group_mode(self.group_mode, couples_group=True, rows_per_micro_batch=per_device, group_size=G or 1)
        except ValueError as e:
            if self.group_mode != "whole":
                raise ValueError(f"ConSPOConfig.group_mode: {e}") from None
            raise ValueError(
                f"group_mode='whole' keeps each group of num_generations={G} completions inside one micro-batch, so "
                f"per_device_train_batch_size ({per_device}) must be a multiple of {G}: set it to "
                f"{max(G, per_device - per_device % G)} or {per_device + G - per_device % G}, or use "
                "group_mode='coefficients' (exact for any layout when each generation batch gets one optimizer step)."
            ) from None


class ConSPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose policy loss is ConSPO, exact across micro-batches and processes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, ConSPOConfig):
            raise TypeError("ConSPOTrainer needs args=ConSPOConfig(...)")
        G = self.num_generations
        if G < 2:
            raise ValueError("ConSPO contrasts completions of the same prompt: num_generations must be >= 2")
        self.conspo_group_mode = mode = resolve_group_mode(
            self.args.group_mode, couples_group=True, rows_per_micro_batch=self.args.per_device_train_batch_size,
            group_size=G)
        generate_every = self.args.steps_per_generation * self.num_iterations
        self._conspo_exact_coefficients = self.args.gradient_accumulation_steps == generate_every
        if mode == "coefficients" and not self._conspo_exact_coefficients:
            warnings.warn(
                "ConSPO coefficients are computed once per generation batch, but this configuration takes "
                f"{generate_every // self.args.gradient_accumulation_steps or 1}+ optimizer steps per batch "
                "(num_iterations > 1 or steps_per_generation > gradient_accumulation_steps): later steps use stale "
                "coefficients (logged as conspo/coef_staleness_steps). Use group_mode='whole' for exact updates.",
                stacklevel=2,
            )
        self._conspo_regrouped = None
        self._conspo_valid_counts = None
        self._conspo_scored_step = 0

    # ---- margin --------------------------------------------------------------------------

    def conspo_margin(self) -> float:
        args = self.args
        schedule = margin_curriculum(args.margin_schedule, start=args.margin_start, end=args.margin_end,
                                     horizon=args.margin_horizon, total_steps=self.state.max_steps)
        return schedule(int(self.state.global_step))

    # ---- rewards and group ids reach the loss --------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._conspo_rewards_per_func = rewards_per_func  # gathered over all processes, in global row order
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        per_func = self._conspo_rewards_per_func
        rewards = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(per_func).all(dim=1)] = float("nan")  # unscorable: excluded from contrast
        n_local = output["completion_ids"].shape[0]
        start = self.accelerator.process_index * n_local
        rows = torch.arange(start, start + n_local, device=rewards.device)
        output["conspo_rewards"] = rewards[rows]
        output["conspo_row"] = rows  # global row; group id = row // num_generations
        if self.model.training and self.conspo_group_mode == "coefficients":
            output["conspo_coef"] = self._global_coefficients(output, rewards, rows)
        return output

    def _loss_mask(self, inputs) -> torch.Tensor:
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        return mask * torch.isfinite(inputs["conspo_rewards"]).unsqueeze(1).to(mask.dtype)

    @torch.no_grad()
    def _global_coefficients(self, output, all_rewards, rows) -> torch.Tensor:
        logps = output.get("old_per_token_logps")
        if logps is None:
            input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
            attention = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model, input_ids, attention, output["completion_ids"].size(1),
                batch_size=self.args.per_device_train_batch_size)
        mask = self._loss_mask({**output, "conspo_rewards": all_rewards[rows]})
        scores = sequence_scores(logps, mask, normalize_by_length=self.args.length_normalized_score)
        all_scores = self.accelerator.gather(scores)
        all_present = self.accelerator.gather(mask.bool().any(dim=1))
        rewards = torch.nan_to_num(all_rewards, nan=0.0).to(all_scores.dtype)
        coefficients, metrics = conspo_coefficients_and_metrics(
            all_scores, rewards, self.num_generations, present=all_present, margin=self.conspo_margin(),
            tau=self.args.tau, positive_threshold=self.args.positive_threshold)
        for name, value in metrics.items():
            self._metrics["train"][name].append(value)
        self._conspo_scored_step = self.state.global_step
        return coefficients[rows]

    # ---- whole groups per micro-batch ------------------------------------------------------

    def _prepare_inputs(self, generation_batch):
        inputs = super()._prepare_inputs(generation_batch)
        if not self.model.training or self.conspo_group_mode != "whole":
            return inputs
        if self._buffered_inputs is not self._conspo_regrouped:  # TRL just generated (and shuffled) a new batch
            self._buffered_inputs = self._regroup(self._buffered_inputs)
            self._conspo_regrouped = self._buffered_inputs
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    def _regroup(self, slices: list[dict]) -> list[dict]:
        """Undo TRL's row shuffle at group granularity and re-split: every slice holds whole groups."""
        merged = {}
        for key, first in slices[0].items():
            if torch.is_tensor(first) and first.ndim > 0:
                merged[key] = torch.cat([s[key] for s in slices])
            elif isinstance(first, list):
                merged[key] = [x for s in slices for x in s[key]]
            else:
                merged[key] = first
        G = self.num_generations
        rows = merged["conspo_row"]
        unique, group_index = torch.unique(rows // G, return_inverse=True)
        position = torch.empty_like(unique)  # position of each group in a random order
        position[torch.randperm(len(unique), device=unique.device)] = torch.arange(len(unique), device=unique.device)
        order = torch.argsort(position[group_index] * G + rows % G)
        for key, value in merged.items():
            if torch.is_tensor(value) and value.ndim > 0:
                merged[key] = value[order]
            elif isinstance(value, list):
                merged[key] = [value[i] for i in order.tolist()]
        regrouped = split_tensor_dict(merged, self.args.steps_per_generation)
        counts = torch.tensor(
            [count_valid_groups(self._loss_mask(s), torch.nan_to_num(s["conspo_rewards"]), G,
                                positive_threshold=self.args.positive_threshold) for s in regrouped],
            device=merged["conspo_row"].device, dtype=torch.float32)
        self._conspo_valid_counts = self.accelerator.reduce(counts, reduction="sum")
        return regrouped

    # ---- the loss --------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("ConSPOTrainer does not support returning outputs")
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        logps, _, _ = self._get_per_token_logps_and_entropies(model, input_ids, attention, inputs["completion_ids"].size(1))
        mask = self._loss_mask(inputs)
        mode = "train" if self.model.training else "eval"
        world = self.accelerator.num_processes  # DDP / ZeRO / FSDP average gradients over processes
        if mode == "train" and self.conspo_group_mode == "coefficients":
            scores = sequence_scores(logps, mask, normalize_by_length=self.args.length_normalized_score)
            staleness = self.state.global_step - self._conspo_scored_step
            self._metrics[mode]["conspo/coef_staleness_steps"].append(float(staleness))
            return coefficient_surrogate(inputs["conspo_coef"], scores) * world
        rewards = torch.nan_to_num(inputs["conspo_rewards"]).to(logps.dtype)
        if rewards.shape[0] % self.num_generations:  # eval batches are not regrouped: report, do not train
            return logps.sum() * 0.0
        loss, metrics = conspo_loss(logps, mask, rewards, self.num_generations, margin=self.conspo_margin(),
                                    tau=self.args.tau, positive_threshold=self.args.positive_threshold,
                                    normalize_by_length=self.args.length_normalized_score)
        for name, value in metrics.items():
            self._metrics[mode][name].append(value)
        if mode != "train":
            return loss
        # weight = this slice's valid groups / all valid groups of the optimizer step (every process)
        spg, gas = self.args.steps_per_generation, self.current_gradient_accumulation_steps
        k = self._step % spg
        window = self._conspo_valid_counts[(k // gas) * gas : (k // gas) * gas + gas].sum()
        local = count_valid_groups(mask, rewards, self.num_generations, positive_threshold=self.args.positive_threshold)
        return loss * (local * world / window.clamp(min=1.0))
