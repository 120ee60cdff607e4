"""ConSPO, and any sequence-score objective, on TRL's ``GRPOTrainer``: change one class, keep
accelerate/DeepSpeed/FSDP/vLLM.

    from conspo.integrations.trl import ConSPOConfig, ConSPOTrainer
    trainer = ConSPOTrainer(model=..., reward_funcs=..., args=ConSPOConfig(..., tau=0.3), train_dataset=...)

``ScoreObjectiveTrainer`` / ``ScoreObjectiveConfig`` are the same classes under the family's name:
``ScoreObjectiveConfig(..., objective="disco")`` (or ``disco_ratio``, ``real``, or a score objective
registered with ``conspo.score_objectives.register_score_objective``) trains that objective by the
coefficient route below, with its own options (``score_tau``); ConSPO's own options must then keep
their defaults.

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
  ``sum_i c_i * s_i``. Works for any layout. Exact when no optimizer step ends inside a
  generation batch (gradient_accumulation_steps a multiple of steps_per_generation *
  num_iterations); otherwise the coefficients are stale for the later micro-batches, which is
  warned about once and logged as ``conspo/coef_staleness_steps``.

When an optimizer step spans several generation batches, its valid groups are not all known
before its first backward pass: each micro-batch then back-propagates its sum over valid groups
and ``training_step`` divides the step's gradient by the step's valid groups after its last
micro-batch (refused under DeepSpeed, which steps inside that backward pass). Image inputs
(``MULTIMODAL_KEYS``) reach every log-prob call, as in GRPOTrainer.

The margin follows ``self.state.global_step``, so it survives checkpoint resume. All math is
imported from ``conspo.objectives``; this file only moves tensors to where they are needed.
Only the methods below are overridden, each wrapping ``super()``.

Drop-in rules (docs/design.md section 4): every GRPOConfig option either works as in
``GRPOTrainer`` (generation, vLLM, rewards and ``reward_weights``, ``num_iterations``,
``mask_truncated_completions`` (a truncated completion then takes part in nothing), the MoE
load-balancing loss, ``num_generations_eval``, ...) or, when it only shapes GRPO's own loss, is
refused by ``ConSPOConfig`` when set away from its default (``GRPO_ONLY_OPTIONS``).
"""

from __future__ import annotations

import math
import warnings

import torch

try:
    from trl import GRPOTrainer
    from trl.trainer.utils import (
        get_config_model_id,
        split_pixel_values_by_grid,
        split_tensor_dict,
        unsplit_pixel_values_by_grid,
    )
except ImportError as e:  # pragma: no cover - exercised only without trl
    raise ImportError("conspo.integrations.trl needs TRL: pip install 'conspo[trl]' (trl==1.16.0)") from e

from conspo.integrations.trl_config import (  # noqa: F401 (importable from here, where users have always found them)
    GRPO_ONLY_OPTIONS,
    SUPPORTED_TRL_VERSIONS,
    ConSPOConfig,
)
from conspo.objectives import (
    coefficient_surrogate,
    conspo_loss,
    contrastive_sets,
    count_valid_groups,
)
from conspo.rewards.base import SilentRewardWatch
from conspo.score_objectives import get_score_objective, score_coefficients, sequence_score
from conspo.update import resolve_group_mode

#: The batch keys that GRPOTrainer's own loss (``_compute_loss``) hands to ``_get_per_token_logps_and_entropies``
#: besides the token ids: image inputs and their per-sample counts. Every log-prob call here forwards them too, or a
#: vision-language model would be scored on its text alone.
MULTIMODAL_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


class ConSPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose policy loss is ConSPO (or ``args.objective``, any sequence-score objective), exact
    across micro-batches and processes.

    Same constructor as ``GRPOTrainer``. ``args=None`` builds a default ``ConSPOConfig`` (as GRPOTrainer builds a
    default GRPOConfig); a plain ``GRPOConfig`` is refused, since its GRPO-only options would be silently ignored.
    """

    def __init__(self, model, reward_funcs=None, args=None, *more, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = ConSPOConfig(f"{name.split('/')[-1]}-ConSPO")
        elif not isinstance(args, ConSPOConfig):
            # Refused before anything is built. Not converted: a GRPOConfig carries GRPO-only settings (loss_type,
            # epsilon, ...) that would either be refused field by field or silently mean nothing.
            raise TypeError(
                f"ConSPOTrainer needs args=ConSPOConfig(...), got {type(args).__name__}. ConSPOConfig takes every "
                "GRPOConfig option plus ConSPO's (tau, margin_*, positive_rule, group_mode, ...): build it with the "
                "same keyword arguments, e.g. ConSPOConfig(output_dir=..., num_generations=8, tau=0.3)."
            )
        super().__init__(model, reward_funcs, args, *more, **kwargs)
        G = self.num_generations
        if G < 2:
            raise ValueError("ConSPO contrasts completions of the same prompt: num_generations must be >= 2")
        self.score_objective = get_score_objective(self.args.objective)
        self.conspo_group_mode = mode = resolve_group_mode(
            self.args.group_mode,
            couples_group=True,
            rows_per_micro_batch=self.args.per_device_train_batch_size,
            group_size=G,
            in_graph=self.args.objective == "conspo",
        )
        gas = self.args.gradient_accumulation_steps
        generate_every = self.args.steps_per_generation * self.num_iterations  # micro-batches per generation batch
        # A generation batch is used at the weights it was scored at iff no optimizer step ends strictly inside it:
        # every multiple of gas is a multiple of generate_every.
        self._conspo_exact_coefficients = gas % generate_every == 0
        # The valid groups of an optimizer step are all known before its first micro-batch is back-propagated iff the
        # step draws on a single generation batch. Otherwise each micro-batch back-propagates its unnormalised sum
        # over valid groups and the step's gradient is divided by the step's valid groups after its last micro-batch
        # (training_step). Coefficient mode does so only where its coefficients are fresh.
        if mode == "whole":
            self._conspo_deferred_normaliser = generate_every % gas != 0
        else:
            self._conspo_deferred_normaliser = self._conspo_exact_coefficients and gas > generate_every
        if self._conspo_deferred_normaliser and self.args.objective != "conspo":
            raise ValueError(
                f"ConSPOTrainer: objective={self.args.objective!r} with gradient_accumulation_steps={gas} and "
                f"steps_per_generation * num_iterations={generate_every}: an optimizer step would span several "
                "generation batches, whose joint normaliser only ConSPO's route knows: set steps_per_generation * "
                "num_iterations to a multiple of gradient_accumulation_steps (TRL's default)."
            )
        if self._conspo_deferred_normaliser and self.is_deepspeed_enabled:
            raise ValueError(
                f"ConSPOTrainer: with gradient_accumulation_steps={gas} and steps_per_generation * num_iterations="
                f"{generate_every} an optimizer step spans several generation batches, so its valid groups are known "
                "only after its last micro-batch, and DeepSpeed steps the optimizer inside that backward pass: set "
                "steps_per_generation * num_iterations to a multiple of gradient_accumulation_steps (TRL's default "
                "steps_per_generation is gradient_accumulation_steps)."
            )
        if mode == "coefficients" and not self._conspo_exact_coefficients:
            warnings.warn(
                "ConSPO coefficients are computed once per generation batch (every steps_per_generation * "
                f"num_iterations = {generate_every} micro-batches), but an optimizer step ends every "
                f"gradient_accumulation_steps = {gas} micro-batches, so some micro-batches use stale coefficients, "
                "scored before the last update (logged as conspo/coef_staleness_steps). Use group_mode='whole' for "
                "exact updates, or make gradient_accumulation_steps a multiple of steps_per_generation * "
                "num_iterations.",
                stacklevel=2,
            )
        self._conspo_step_valid = 0.0  # valid groups (all processes) of the optimizer step so far, deferred mode
        self._conspo_step_loss = None
        self._conspo_regrouped = None
        self._conspo_valid_counts = None
        self._conspo_scored_step = 0
        self._conspo_no_signal = _NoSignalWatch(self.args)
        self._conspo_silent_rewards = None  # per reward: SilentRewardWatch, built at the first batch

    # ---- margin --------------------------------------------------------------------------

    def conspo_margin(self) -> float:
        return self.args.margin_at(self.state.global_step, self.state.max_steps)

    def _group_rule(self) -> dict:
        return dict(positive_threshold=self.args.positive_threshold, positive_rule=self.args.positive_rule)

    def _score_options(self) -> dict:
        """The score objective's keyword options at this step (ConSPO's margin follows its schedule)."""
        return self.args.loss_options(self.args.objective, self.conspo_margin())

    def _scores(self, logps, mask, old_logps=None) -> torch.Tensor:
        """(b,) scores of the objective's kind; ratio scores against ``old_logps`` (None: the current policy's,
        detached: the policy that sampled, when the coefficients are fresh)."""
        kind = self.score_objective.score_kind(self._score_options())
        return sequence_score(kind, logps, logps.detach() if old_logps is None else old_logps, mask)

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
        output["conspo_row"] = rows  # global row; group id = row // group size (num_generations[_eval])
        if self.model.training:
            all_present = self.accelerator.gather(self._loss_mask(output).bool().any(dim=1))
            self._watch_for_no_signal(rewards, all_present)
            if self.conspo_group_mode == "coefficients":
                output["conspo_coef"] = self._global_coefficients(output, rewards, rows, all_present)
        return output

    def _loss_mask(self, inputs) -> torch.Tensor:
        # completion_mask is already zero for truncated completions under mask_truncated_completions (TRL), so such
        # a completion is empty here and takes part in nothing, as the option asks.
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        return mask * torch.isfinite(inputs["conspo_rewards"]).unsqueeze(1).to(mask.dtype)

    def _watch_for_no_signal(self, all_rewards, all_present) -> None:
        """Count optimizer steps in a row whose generation batch had no valid group, and warn after the limit."""
        valid = contrastive_sets(
            torch.nan_to_num(all_rewards), all_present, self.num_generations, **self._group_rule()
        )[2]
        generate_every = self.args.steps_per_generation * self.num_iterations
        steps = generate_every / self.args.gradient_accumulation_steps  # optimizer steps this batch feeds (or a part)
        message = self._conspo_no_signal.update(bool(valid.any()), all_rewards, steps)
        if message and self.accelerator.is_main_process:  # every process sees the same global batch: warn once
            warnings.warn(message, stacklevel=2)
        if len(self.reward_funcs) > 1:  # one reward: the warning above is that reward's
            if self._conspo_silent_rewards is None:
                self._conspo_silent_rewards = SilentRewardWatch(
                    self.reward_func_names, after=self.args.no_valid_group_warn_steps
                )
            for message in self._conspo_silent_rewards.update(
                self._conspo_rewards_per_func.double().cpu(),
                all_present.cpu(),
                self.num_generations,
                weights=self.reward_weights.double().cpu(),
                **self._group_rule(),
            ):
                if self.accelerator.is_main_process:
                    warnings.warn(
                        f"ConSPO: {message.removeprefix('WARNING ')} (this warning: no_valid_group_warn_steps)",
                        stacklevel=2,
                    )

    @torch.no_grad()
    def _global_coefficients(self, output, all_rewards, rows, all_present) -> torch.Tensor:
        logps = output.get("old_per_token_logps")
        if logps is None:
            input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
            attention = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model,
                input_ids,
                attention,
                output["completion_ids"].size(1),
                batch_size=self.args.per_device_train_batch_size,
                **self._multimodal_inputs(output),
            )
        mask = self._loss_mask(output)
        scores = self._scores(logps, mask)  # scored at the sampling weights: ratio scores are at 0 (or 1) here
        all_scores = self.accelerator.gather(scores)
        rewards = torch.nan_to_num(all_rewards, nan=0.0).to(all_scores.dtype)
        coefficients, metrics = score_coefficients(
            self.score_objective, all_scores, rewards, all_present, self.num_generations, **self._score_options()
        )
        for name, value in metrics.items():
            self._metrics["train"][name].append(value)
        self._conspo_scored_step = self.state.global_step
        if self._conspo_deferred_normaliser:  # the step's other generation batches are not drawn yet: unnormalise
            valid = count_valid_groups(all_present.unsqueeze(1), rewards, self.num_generations, **self._group_rule())
            self._conspo_step_valid += valid
            coefficients = coefficients * valid
        return coefficients[rows]

    @staticmethod
    def _multimodal_inputs(inputs) -> dict:
        """The image inputs of a batch, as GRPOTrainer passes them to every log-prob call (None when absent)."""
        return {key: inputs.get(key) for key in MULTIMODAL_KEYS}

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
        """Undo TRL's row shuffle at group granularity and re-split: every slice holds whole groups.

        Image inputs are indexed by image or patch, not by row: as in TRL's own shuffle, they are split into one entry
        per row first and merged back per slice at the end.
        """
        slices = [split_pixel_values_by_grid(s) for s in slices]
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
        regrouped = [unsplit_pixel_values_by_grid(s) for s in split_tensor_dict(merged, self.args.steps_per_generation)]
        counts = torch.tensor(
            [
                count_valid_groups(self._loss_mask(s), torch.nan_to_num(s["conspo_rewards"]), G, **self._group_rule())
                for s in regrouped
            ],
            device=merged["conspo_row"].device,
            dtype=torch.float32,
        )
        self._conspo_valid_counts = self.accelerator.reduce(counts, reduction="sum")
        return regrouped

    # ---- the loss --------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """ConSPO's loss of this micro-batch (training: weighted so the optimizer step sums to the full-batch loss),
        plus ``router_aux_loss_coef * aux_loss`` for MoE models exactly as GRPOTrainer adds it."""
        if return_outputs:
            raise ValueError("ConSPOTrainer does not support returning outputs")
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        # aux_loss_enabled / router_aux_loss_coef are resolved by GRPOTrainer from the model and router_aux_loss_coef
        logps, _, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention,
            inputs["completion_ids"].size(1),
            compute_aux_loss=self.aux_loss_enabled,
            **self._multimodal_inputs(inputs),
        )
        mask = self._loss_mask(inputs)
        mode = "train" if self.model.training else "eval"
        loss = self._train_loss(logps, mask, inputs) if mode == "train" else self._eval_loss(logps, mask, inputs)
        if self.aux_loss_enabled:
            # The loss returned here is already scaled for gradient accumulation (GRPOTrainer.loss_is_scaled_for_ga),
            # so the load-balancing term is divided by the accumulation steps, as GRPOTrainer does: over an optimizer
            # step it adds coef * (mean aux loss of its micro-batches). Eval has no accumulation.
            accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())
        return loss

    def _train_loss(self, logps, mask, inputs) -> torch.Tensor:
        world = self.accelerator.num_processes  # DDP / ZeRO / FSDP average gradients over processes
        if self.conspo_group_mode == "coefficients":
            scores = self._scores(logps, mask, inputs.get("old_per_token_logps"))
            staleness = self.state.global_step - self._conspo_scored_step
            self._metrics["train"]["conspo/coef_staleness_steps"].append(float(staleness))
            return coefficient_surrogate(inputs["conspo_coef"], scores) * world
        rewards = torch.nan_to_num(inputs["conspo_rewards"]).to(logps.dtype)
        loss, metrics = conspo_loss(
            logps,
            mask,
            rewards,
            self.num_generations,
            **self._score_options(),
        )
        for name, value in metrics.items():
            self._metrics["train"][name].append(value)
        # weight = this slice's valid groups / all valid groups of the optimizer step (every process)
        spg, gas = self.args.steps_per_generation, self.args.gradient_accumulation_steps
        counts = self._conspo_valid_counts  # per slice of the current generation batch, summed over processes
        local = count_valid_groups(mask, rewards, self.num_generations, **self._group_rule())
        if self._conspo_deferred_normaliser:  # divided by the step's valid groups after its last micro-batch
            self._conspo_step_valid += float(counts[self._step % spg])
            return loss * (local * world)
        first = self._step - self._step % gas  # the step's first micro-batch; all its micro-batches use this batch
        window = sum(float(counts[j % spg]) for j in range(first, first + gas))
        return loss * (local * world / max(window, 1.0))

    def training_step(self, model, inputs, num_items_in_batch):
        """GRPOTrainer's step; where an optimizer step spans generation batches, its gradient is divided by its valid
        groups (all processes) once its last micro-batch is back-propagated, before the Trainer clips and steps."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not self._conspo_deferred_normaliser:
            return loss
        self._conspo_step_loss = loss if self._conspo_step_loss is None else self._conspo_step_loss + loss
        if not self.accelerator.sync_gradients:
            return torch.zeros_like(loss)  # the step's loss is reported with its last micro-batch
        scale = 1.0 / max(self._conspo_step_valid, 1.0)
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.grad.mul_(scale)
        step_loss = self._conspo_step_loss * scale
        self._conspo_step_valid, self._conspo_step_loss = 0.0, None
        return step_loss

    def _eval_loss(self, logps, mask, inputs) -> torch.Tensor:
        """ConSPO loss of the whole eval batch, its groups of ``num_generations_eval`` completions.

        TRL does not shuffle eval batches but may split a group across processes, and nothing is back-propagated, so
        the scores of all processes are gathered and every process reports the loss of the global batch.
        """
        G = self.num_generations_eval
        scores = self._scores(logps, mask)
        all_rows = self.accelerator.gather(inputs["conspo_row"])
        order = torch.argsort(all_rows)  # global row order: groups contiguous
        all_scores = self.accelerator.gather(scores)[order]
        all_present = self.accelerator.gather(mask.bool().any(dim=1))[order]
        all_rewards = self.accelerator.gather(torch.nan_to_num(inputs["conspo_rewards"]))[order]
        if all_scores.shape[0] % G:
            warnings.warn(
                f"eval batch of {all_scores.shape[0]} completions is not a whole number of groups of "
                f"num_generations_eval={G}; its ConSPO loss is reported as 0 (make the eval batch size a "
                "multiple of num_generations_eval)",
                stacklevel=2,
            )
            return logps.sum() * 0.0
        loss, metrics = self.score_objective.loss(
            all_scores, all_rewards.to(all_scores.dtype), all_present, G, **self._score_options()
        )
        for name, value in metrics.items():
            self._metrics["eval"][name].append(value)
        return loss


#: The same classes under the family's name: ``ScoreObjectiveConfig(objective="disco", ...)``.
ScoreObjectiveConfig = ConSPOConfig
ScoreObjectiveTrainer = ConSPOTrainer


class _NoSignalWatch:
    """Counts consecutive optimizer steps without a valid group; returns a warning once per such streak."""

    def __init__(self, args: ConSPOConfig):
        self.args = args
        self.steps = 0
        self.low = math.inf
        self.high = -math.inf
        self.warned = False

    def update(self, any_valid: bool, rewards: torch.Tensor, steps: float) -> str | None:
        if any_valid:
            self.steps, self.low, self.high, self.warned = 0, math.inf, -math.inf, False
            return None
        self.steps += steps
        finite = rewards[torch.isfinite(rewards)]
        if finite.numel():
            self.low, self.high = min(self.low, float(finite.min())), max(self.high, float(finite.max()))
        limit = self.args.no_valid_group_warn_steps
        if not limit or self.warned or self.steps < limit:
            return None
        self.warned = True
        seen = f"{self.low:.4g}..{self.high:.4g}" if self.low <= self.high else "none (no completion could be scored)"
        threshold = self.args.positive_threshold
        rule = self.args.positive_rule
        if rule == "threshold" and not self.low < threshold <= self.high:
            fix = (
                f"with positive_rule='threshold' a completion is positive when its reward is at least "
                f"positive_threshold={threshold:g}, which no reward seen crosses: set positive_threshold inside "
                "the range of your rewards, or use positive_rule='group_mean' for graded rewards"
            )
        elif rule == "threshold":
            fix = (
                f"under positive_rule={rule!r} every group's completions were all positive or all negative: sample "
                "more diverse completions (num_generations, temperature), or use a reward that separates them "
                "(positive_rule='group_mean' for graded rewards)"
            )
        else:
            fix = (
                f"under positive_rule={rule!r} every group's completions had equal rewards (a positive must score "
                "above its group's mean): sample more diverse completions (num_generations, temperature), or use "
                "a reward that separates them"
            )
        steps = f"{self.steps:g} consecutive optimizer step" + ("s" if self.steps != 1 else "")
        return (
            f"ConSPO: no group has had both a positive and a negative completion for {steps}, so the loss and "
            f"its gradient are zero. Rewards seen in these steps: {seen}; {fix}. (This warning: "
            "no_valid_group_warn_steps.)"
        )
