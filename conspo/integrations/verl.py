"""ConSPO on verl 0.9.x: a registered advantage estimator, policy loss and trainer, no fork.

Turn it on with Hydra overrides (full launch script: ``examples/verl/``)::

    VERL_USE_EXTERNAL_MODULES=conspo.integrations.verl python -m verl.trainer.main_ppo \\
        trainer.v1.trainer_mode=conspo_sync algorithm.adv_estimator=conspo \\
        actor_rollout_ref.actor.policy_loss._target_=conspo.integrations.verl.ConSPOPolicyLossConfig \\
        actor_rollout_ref.actor.policy_loss.loss_mode=conspo +actor_rollout_ref.actor.policy_loss.tau=0.3 ...

Why three pieces. ConSPO's loss of one rollout depends on its whole group (docs/design.md section 4),
but verl's ``PolicyLossFn`` sees the token tensors of one micro-batch, without group ids or
rewards, and verl moves rows around: ``_balance_batch`` (Karmarkar-Karp sequence-length
balancing across data-parallel ranks), optional shuffling inside mini-batches, and dynamic
micro-batch sizes (``rearrange_micro_batches``). So this plug-in uses the coefficient route,
which is indifferent to where rows go:

1. **Coefficients on the driver** (``ConSPOTrainerSync._compute_advantage``, registered as
   verl trainer ``conspo_sync``). verl's v1 step runs balance -> old log-probs -> advantages
   -> actor update. At the advantage stage the whole step batch, its group ids (``uid``), its
   rewards and ``old_log_probs`` (computed by the actor with the weights the update starts
   from) are on the driver. The score of each rollout under those weights,
   s_i = ``sequence_scores(old_log_probs, response_mask)``, and the closed-form
   c_i = dL/ds_i (``conspo.objectives.conspo_coefficients``) are computed there, by the
   registered advantage estimator ``conspo``, and written as the rollout's "advantage"
   (c_i on every response token). verl's stock trainers do not pass old log-probs to an
   advantage estimator, hence the trainer subclass; it behaves as verl's ``sync`` trainer in
   every other respect and defers to it for every other estimator.
2. **Surrogate in the workers** (registered policy loss ``conspo``): each micro-batch
   back-propagates ``sum_i c_i * s_i(theta)`` through verl's ``agg_loss`` in ``token-sum`` mode,
   which multiplies by the data-parallel size because FSDP/DDP *average* gradients over ranks.
   Summed over micro-batches and averaged over ranks this is sum over the batch of
   c_i * grad s_i = grad L, the ConSPO gradient of the whole batch, whatever the row order.
3. **Options** (``ConSPOPolicyLossConfig``, a ``PolicyLossConfig`` subclass that inherits the
   objective options every engine shares): tau, the margin schedule, the positive rule and
   threshold, the score, as Hydra overrides under ``actor_rollout_ref.actor.policy_loss``. The
   margin follows verl's ``global_steps``.

Exactness. The update is the ConSPO gradient when the batch feeds one optimizer step
(``ppo_epochs == 1`` and ``ppo_mini_batch_size == data.train_batch_size``). With several
mini-batches or epochs, each optimizer step back-propagates the coefficients of its own rows,
all computed at the weights of the first step: the steps add up to one ConSPO gradient per
epoch, and every step after the first uses stale coefficients. This is warned about once and
logged (``conspo/optimizer_steps_per_batch``, ``conspo/coef_staleness_steps_max``,
``actor/conspo/score_drift``). ``check_config`` refuses settings that would not give ConSPO
at all, with the fix in the message.

Any sequence-score objective (``conspo.score_objectives``: DisCO, REAL, one registered in every
process) takes the same route: ``+actor_rollout_ref.actor.policy_loss.objective=disco`` (and
``score_tau``); its coefficients come from autograd on the detached batch scores.

All math is imported from ``conspo.objectives`` and ``conspo.score_objectives``; this file only moves
tensors to where verl needs them.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

try:
    import verl
    from omegaconf import DictConfig, OmegaConf
    from verl.trainer.ppo import core_algos
    from verl.trainer.ppo.core_algos import agg_loss, register_adv_est, register_policy_loss
    from verl.workers.config import PolicyLossConfig
except ImportError as e:  # pragma: no cover - exercised only without verl
    raise ImportError("conspo.integrations.verl needs verl: pip install 'conspo[verl]' (verl==0.9.1)") from e

from conspo.objective_options import ObjectiveOptions
from conspo.objectives import coefficient_surrogate
from conspo.score_objectives import get_score_objective, score_coefficients, sequence_score

SUPPORTED_VERL_VERSIONS = ("0.9.",)
if not verl.__version__.startswith(SUPPORTED_VERL_VERSIONS):
    raise ImportError(
        f"conspo.integrations.verl supports verl {', '.join(v + 'x' for v in SUPPORTED_VERL_VERSIONS)}; found "
        f"{verl.__version__}. It subclasses verl's v1 PPO trainer and relies on how verl's workers scale the "
        "policy loss, both of which change between releases: pip install verl==0.9.1"
    )

logger = logging.getLogger(__name__)

#: Names under which the pieces are registered in verl's registries.
LOSS_MODE = "conspo"
ADV_ESTIMATOR = "conspo"
TRAINER_MODE = "conspo_sync"


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


@dataclass
class ConSPOPolicyLossConfig(ObjectiveOptions, PolicyLossConfig):
    """verl's ``PolicyLossConfig`` plus the objective options (``conspo.objective_options.ObjectiveOptions``: ``tau``,
    ``margin_*``, ``positive_*``, ``score``, ``score_tau``, the same declaration the native trainer and TRL use) and
    ``objective``.

    Selected with ``actor_rollout_ref.actor.policy_loss._target_=conspo.integrations.verl.ConSPOPolicyLossConfig``;
    each field below is set with ``+actor_rollout_ref.actor.policy_loss.<field>=<value>`` (the
    ``+`` because verl's YAML does not declare them). ``margin_horizon`` counts verl training steps (0: all of
    ``trainer.total_training_steps``).
    """

    loss_mode: str = LOSS_MODE
    objective: str = "conspo"  # the sequence-score objective: conspo, disco, disco_ratio, real, or a registered one

    def __post_init__(self):
        try:
            get_score_objective(self.objective)
        except ValueError as e:
            raise ValueError(f"policy_loss.objective: {e}") from None
        problem = self.option_problem(self.objective)
        if problem:
            raise ValueError(f"policy_loss.{problem[1]}")

    def score_options(self, margin: float = 0.0) -> dict:
        """The score objective's keyword options (ConSPO's at this ``margin``)."""
        return self.loss_options(self.objective, margin)

    def scores(self, log_prob: torch.Tensor, old_log_prob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,) scores of the objective's kind (ratio scores against ``old_log_prob``)."""
        kind = get_score_objective(self.objective).score_kind(self.score_options())
        return sequence_score(kind, log_prob, old_log_prob, mask)


# ---------------------------------------------------------------------------------------------
# Advantage estimator: coefficients c_i = dL/ds_i for the whole step batch (driver)
# ---------------------------------------------------------------------------------------------


def _group_slots(index) -> tuple[torch.Tensor, int, int]:
    """Map rows with group ids ``index`` to slots of a (n_groups, G_max) layout.

    ``conspo.objectives`` wants contiguous groups of one size; verl's batch has rows in any
    order and groups of any size (failed rollouts, filtering, padding rows). Returns
    ``slot[row]`` (row -> position in the flattened layout), ``n_groups`` and ``G_max``;
    unused slots are marked absent by the caller.
    """
    group_of: dict[Any, int] = {}
    groups, positions = [], []
    counts: list[int] = []
    for uid in list(index):
        g = group_of.setdefault(uid, len(group_of))
        if g == len(counts):
            counts.append(0)
        groups.append(g)
        positions.append(counts[g])
        counts[g] += 1
    width = max(counts) if counts else 1
    slot = torch.tensor(groups, dtype=torch.long) * width + torch.tensor(positions, dtype=torch.long)
    return slot, len(counts), width


def _to_layout(values: torch.Tensor, slot: torch.Tensor, size: int, fill=0) -> torch.Tensor:
    out = torch.full((size,), fill, dtype=values.dtype, device=values.device)
    out[slot.to(values.device)] = values
    return out


@torch.no_grad()
def conspo_batch_coefficients(
    scores: torch.Tensor, rewards: torch.Tensor, present: torch.Tensor, index, **options
) -> tuple[torch.Tensor, dict[str, float]]:
    """ConSPO's ``score_batch_coefficients`` (``options``: its loss's, as ``ObjectiveOptions.loss_options`` gives)."""
    return score_batch_coefficients(scores, rewards, present, index, objective="conspo", **options)


def score_batch_coefficients(
    scores: torch.Tensor,
    rewards: torch.Tensor,
    present: torch.Tensor,
    index,
    *,
    objective: str,
    **options,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The score objective's coefficients for rows in any order, grouped by ``index``; and the loss metrics.

    ``scores``, ``rewards`` and ``present`` are (B,) in verl's row order; ``index`` holds each
    row's group id (verl's ``uid``). Returns c (B,) with sum_i c_i * grad s_i = grad L, and the
    metrics of ``conspo_loss`` at these scores (over the groups with at least one present row,
    so verl's padding rows do not count). Computed in float64, returned in ``scores.dtype``.
    """
    rows = present.bool().nonzero().squeeze(1).cpu()  # absent rows (e.g. verl's padding rows) get c = 0
    coef = torch.zeros_like(scores)
    slot, n_groups, width = _group_slots([index[i] for i in rows.tolist()])
    size = n_groups * width
    s = _to_layout(scores[rows].double(), slot, size)
    r = _to_layout(rewards[rows].double(), slot, size)
    p = _to_layout(torch.ones(len(rows), dtype=torch.bool), slot, size, fill=False)
    c, metrics = score_coefficients(get_score_objective(objective), s, r, p, width, **options)
    coef[rows.to(coef.device)] = c[slot].to(scores.dtype)
    metrics[f"{objective}/loss"] = metrics.pop("objective/loss")
    return coef, metrics


@register_adv_est(ADV_ESTIMATOR)
def compute_conspo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    config=None,
    old_log_probs: torch.Tensor | None = None,
    loss_config: ConSPOPolicyLossConfig | None = None,
    margin: float = 0.0,
    metrics: dict | None = None,
    **unused,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl advantage estimator ``conspo``: each rollout's ConSPO coefficient on its tokens.

    Needs the whole step batch, its group ids and ``old_log_probs`` (the scores under the
    weights about to be updated), which verl's stock trainers do not pass to an estimator:
    ``ConSPOTrainerSync`` (``trainer.v1.trainer_mode=conspo_sync``) does. Returns
    (advantages, returns), both c_i * response_mask, (B, T). ``metrics``, if given, receives
    the ConSPO metrics of the batch.
    """
    if old_log_probs is None or loss_config is None:
        raise RuntimeError(
            "algorithm.adv_estimator=conspo computes ConSPO coefficients from the old log-probs of the whole step "
            "batch, which verl's stock trainers do not pass to an advantage estimator. Run verl's v1 trainer with "
            f"trainer.use_v1=True trainer.v1.trainer_mode={TRAINER_MODE} and load this plug-in in every process "
            "(VERL_USE_EXTERNAL_MODULES=conspo.integrations.verl); see examples/verl/."
        )
    mask = response_mask.bool()
    scores = loss_config.scores(old_log_probs, old_log_probs, mask)  # at the weights the update starts from
    rewards = token_level_rewards.sum(dim=-1)
    coef, batch_metrics = score_batch_coefficients(
        scores, rewards, mask.any(dim=-1), index, objective=loss_config.objective, **loss_config.score_options(margin)
    )
    if metrics is not None:
        metrics.update(batch_metrics)
    advantages = coef[:, None].to(old_log_probs.dtype) * mask.to(old_log_probs.dtype)
    return advantages, advantages


# ---------------------------------------------------------------------------------------------
# Policy loss: sum_i c_i * s_i(theta) per micro-batch (workers)
# ---------------------------------------------------------------------------------------------


def row_coefficients(advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The per-row coefficient the estimator broadcast over the response tokens, (B,)."""
    mask = response_mask.bool()
    first = mask.to(torch.int64).argmax(dim=-1, keepdim=True)  # first response token (0 for empty rows)
    coef = advantages.gather(1, first).squeeze(1)
    return torch.where(mask.any(dim=-1), coef, torch.zeros_like(coef)).detach()


@register_policy_loss(LOSS_MODE)
def compute_policy_loss_conspo(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config=None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """verl policy loss ``conspo``: the coefficient surrogate sum_i c_i * s_i(theta).

    ``advantages`` must come from the ``conspo`` estimator (c_i on every response token). The
    value is not the ConSPO loss (that is logged by the trainer as ``conspo/loss``); its
    gradient is the micro-batch's share of the ConSPO gradient. The surrogate
    (``conspo.objectives.coefficient_surrogate``) goes through verl's ``agg_loss`` in
    ``token-sum`` mode, i.e. times ``dp_size``, so that data-parallel gradient averaging leaves
    the sum over all rows of all ranks.
    ``loss_agg_mode`` is not used: ConSPO's normaliser (valid groups, positives per group) is
    already in c_i. Metric ``conspo/score_drift``: mean |s_i(theta) - s_i(old)|, zero (up to
    numerics) when the coefficients are fresh.
    """
    del loss_agg_mode
    loss_config = getattr(config, "policy_loss", None)
    if not isinstance(loss_config, ConSPOPolicyLossConfig):
        raise TypeError(
            "policy_loss.loss_mode=conspo needs ConSPO's options: set "
            "actor_rollout_ref.actor.policy_loss._target_=conspo.integrations.verl.ConSPOPolicyLossConfig"
        )
    if rollout_is_weights is not None:
        raise ValueError(
            "policy_loss.loss_mode=conspo got rollout importance weights, which would reweight the ConSPO gradient: "
            "set algorithm.rollout_correction.rollout_is=null"
        )
    mask = response_mask.bool()
    present = mask.any(dim=-1)
    coef = row_coefficients(advantages, mask).to(log_prob.dtype)
    scores = loss_config.scores(log_prob, old_log_prob.to(log_prob.dtype), mask)
    batch_info = getattr(config, "global_batch_info", None) or {}
    # one-entry loss matrix, token-sum: agg_loss multiplies by dp_size (gradients are averaged over ranks)
    loss = agg_loss(
        loss_mat=coefficient_surrogate(coef, scores).reshape(1, 1),
        loss_mask=torch.ones(1, 1, dtype=torch.bool, device=scores.device),
        loss_agg_mode="token-sum",
        dp_size=batch_info.get("dp_size", 1),
    )
    with torch.no_grad():
        old_scores = loss_config.scores(old_log_prob, old_log_prob, mask)
        n = present.sum().clamp(min=1)
        drift = torch.where(present, (scores.detach() - old_scores).abs(), torch.zeros_like(scores)).sum() / n
    return loss, {"conspo/score_drift": drift.item()}


# ---------------------------------------------------------------------------------------------
# Configuration check
# ---------------------------------------------------------------------------------------------


def _get(config, path: str, default=None):
    """``config.<path>`` of a DictConfig or nested dict, ``default`` where any part is missing or null."""
    if not isinstance(config, DictConfig):
        config = OmegaConf.create(config)
    value = OmegaConf.select(config, path, default=None)
    return default if value is None else value


def optimizer_steps_per_batch(config) -> int:
    """Optimizer steps verl's actor takes on one scored batch: ppo_epochs x mini-batches.

    verl counts ``data.train_batch_size`` and ``actor.ppo_mini_batch_size`` in prompts; the
    sync trainer splits a step into ``trainer.v1.sync.parameter_sync_step`` scored batches.
    """
    prompts = int(_get(config, "data.train_batch_size")) // int(_get(config, "trainer.v1.sync.parameter_sync_step", 1))
    mini = int(_get(config, "actor_rollout_ref.actor.ppo_mini_batch_size"))
    epochs = int(_get(config, "actor_rollout_ref.actor.ppo_epochs", 1))
    return epochs * max(prompts // max(mini, 1), 1)


def check_config(config) -> list[str]:
    """Refuse (ValueError) settings where the update would not be ConSPO; return the warnings.

    ``config`` is verl's whole trainer config (``ppo_trainer.yaml`` with overrides). Run by
    ``ConSPOTrainerSync`` at start-up; callable on its own to check a launch before it starts.
    """
    errors, notes = [], []
    estimator = str(_get(config, "algorithm.adv_estimator"))
    loss_mode = str(_get(config, "actor_rollout_ref.actor.policy_loss.loss_mode", "vanilla"))
    if (estimator == ADV_ESTIMATOR) != (loss_mode == LOSS_MODE):
        errors.append(
            f"algorithm.adv_estimator={estimator} with actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode}: the "
            "ConSPO coefficients are only a gradient when back-propagated by the conspo loss and the conspo loss is "
            f"only ConSPO with those coefficients; set both: algorithm.adv_estimator={ADV_ESTIMATOR} "
            f"actor_rollout_ref.actor.policy_loss.loss_mode={LOSS_MODE}"
        )
    if estimator != ADV_ESTIMATOR and loss_mode != LOSS_MODE:
        if errors:
            raise ValueError("ConSPO on verl: " + "; ".join(errors))
        return notes  # not a ConSPO run: the trainer behaves as verl's sync trainer
    target = str(_get(config, "actor_rollout_ref.actor.policy_loss._target_", ""))
    if not target.endswith("ConSPOPolicyLossConfig"):
        errors.append(
            f"actor_rollout_ref.actor.policy_loss._target_ is {target!r}, so ConSPO's options (tau, margin) are "
            "not read: set actor_rollout_ref.actor.policy_loss._target_=conspo.integrations.verl.ConSPOPolicyLossConfig"
        )
    if not _get(config, "trainer.use_v1", True):
        errors.append(
            f"the legacy trainer (trainer.use_v1=False) is not supported: set trainer.use_v1=True "
            f"trainer.v1.trainer_mode={TRAINER_MODE}"
        )
    mode = _get(config, "trainer.v1.trainer_mode", "sync")
    if mode != TRAINER_MODE:
        errors.append(
            f"trainer.v1.trainer_mode={mode} does not pass old log-probs to the estimator: set "
            f"trainer.v1.trainer_mode={TRAINER_MODE}"
        )
    n = int(_get(config, "actor_rollout_ref.rollout.n", 1))
    if n < 2:
        errors.append(f"ConSPO contrasts rollouts of the same prompt: set actor_rollout_ref.rollout.n >= 2 (got {n})")
    if _get(config, "algorithm.use_kl_in_reward", False):
        errors.append(
            "algorithm.use_kl_in_reward=True changes the rewards that decide which rollouts are positive: "
            "set algorithm.use_kl_in_reward=False (for a KL term use actor_rollout_ref.actor.use_kl_loss)"
        )
    if (
        _get(config, "algorithm.rollout_correction.rollout_is") is not None
        or _get(config, "algorithm.rollout_correction.rollout_rs") is not None
    ):
        errors.append(
            "algorithm.rollout_correction (importance weights / rejection sampling) reweights or drops "
            "rollouts, which ConSPO's group-wise loss does not define: set "
            "algorithm.rollout_correction.rollout_is=null algorithm.rollout_correction.rollout_rs=null"
        )
    if errors:
        raise ValueError("ConSPO on verl: " + "; ".join(errors))

    steps = optimizer_steps_per_batch(config)
    if steps > 1:
        notes.append(
            f"each batch feeds {steps} optimizer steps (actor.ppo_epochs x data.train_batch_size / "
            "actor.ppo_mini_batch_size): ConSPO coefficients are computed once per batch, at the weights of the "
            "first step; each step back-propagates the coefficients of its own rows (its share of the batch's "
            f"ConSPO gradient; each epoch adds up to one whole gradient), so steps 2..{steps} are stale (logged as "
            "conspo/coef_staleness_steps_max and actor/conspo/score_drift). For the exact ConSPO gradient set "
            "actor_rollout_ref.actor.ppo_mini_batch_size=data.train_batch_size and actor_rollout_ref.actor.ppo_epochs=1"
        )
    if _get(config, "algorithm.rollout_correction.bypass_mode", False):
        notes.append(
            "algorithm.rollout_correction.bypass_mode=True: scores come from the rollout engine's log-probs, "
            "not the trained model's, so the coefficients carry the rollout/trainer mismatch; set "
            "bypass_mode=False for coefficients at the trained weights"
        )
    if _get(config, "actor_rollout_ref.actor.use_kl_loss", False):
        notes.append(
            "actor_rollout_ref.actor.use_kl_loss=True adds verl's KL term to ConSPO (loss = ConSPO + "
            "kl_loss_coef * KL), as docs/design.md's optional KL extra"
        )
    if float(_get(config, "actor_rollout_ref.actor.entropy_coeff", 0) or 0) != 0:
        notes.append("actor_rollout_ref.actor.entropy_coeff != 0 adds an entropy bonus to ConSPO's gradient")
    return notes


# ---------------------------------------------------------------------------------------------
# Trainer: verl's sync trainer whose advantage stage computes the coefficients (driver)
# ---------------------------------------------------------------------------------------------


def _single_output_sessions(keys: list[str]) -> bool:
    """verl v1 keys are ``{uid}_{session}_{output index}``; ConSPO needs one output per session."""
    return all(key.rsplit("_", 2)[-1] == "0" for key in keys)


try:
    import transfer_queue as tq
    from tensordict import TensorDict
    from verl.protocol import DataProto
    from verl.trainer.ppo.v1.trainer_base import register_trainer
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.utils.padding import response_to_nested
except ImportError as _trainer_import_error:  # verl without its v1 extras (TransferQueue): loss + estimator only
    ConSPOTrainerSync = None
    logger.debug("verl v1 trainer unavailable (%s): trainer %s not registered", _trainer_import_error, TRAINER_MODE)
else:

    @register_trainer(TRAINER_MODE)
    class ConSPOTrainerSync(PPOTrainerSync):
        """verl's ``sync`` trainer whose advantage stage computes ConSPO coefficients.

        Select with ``trainer.v1.trainer_mode=conspo_sync``. Everything verl keys on the trainer
        mode (replay buffer, refill, checkpoints) sees ``sync``; only ``_compute_advantage``
        differs, and only when ``algorithm.adv_estimator=conspo``.
        """

        @property
        def trainer_mode(self) -> str:
            return "sync"

        @trainer_mode.setter
        def trainer_mode(self, value: str) -> None:  # verl assigns the configured name; it acts as "sync"
            self._requested_trainer_mode = value

        def __init__(self, config):
            notes = check_config(config)
            for note in notes:
                warnings.warn("ConSPO on verl: " + note, stacklevel=2)
                logger.warning("ConSPO on verl: %s", note)
            super().__init__(config)
            self._conspo_steps_per_batch = optimizer_steps_per_batch(config)
            self._conspo_loss_config = None
            if config.algorithm.adv_estimator == ADV_ESTIMATOR:
                self._conspo_loss_config = omega_conf_to_dataclass(config.actor_rollout_ref.actor.policy_loss)

        def conspo_margin(self) -> float:
            """Margin for the batch of ``self.global_steps`` (verl counts training steps from 1)."""
            total = getattr(self, "total_training_steps", None) or 1
            return self._conspo_loss_config.margin_at(self.global_steps - 1, total)

        def _compute_advantage(self, batch, metrics: dict):
            if self._conspo_loss_config is None:
                return super()._compute_advantage(batch, metrics)
            if not _single_output_sessions(batch.keys):
                raise NotImplementedError(
                    "ConSPO on verl scores one completion per rollout; this batch has agent sessions with several "
                    "outputs (multi-trajectory agent loops), which ConSPO does not define yet"
                )
            fields = ["uid", "response_mask", "rm_scores", "old_log_probs"]
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
            nested_mask = data["response_mask"]
            data = DataProto(batch=data.to_padded_tensor())
            index = np.array(data.batch.pop("uid").tolist(), dtype=object)
            step_metrics: dict[str, float] = {}
            estimator = core_algos.get_adv_estimator_fn(ADV_ESTIMATOR)
            advantages, returns = estimator(
                token_level_rewards=data.batch["rm_scores"],
                response_mask=data.batch["response_mask"],
                index=index,
                config=self.config.algorithm,
                old_log_probs=data.batch["old_log_probs"],
                loss_config=self._conspo_loss_config,
                margin=self.conspo_margin(),
                metrics=step_metrics,
            )
            steps = self._conspo_steps_per_batch
            step_metrics["conspo/optimizer_steps_per_batch"] = float(steps)
            step_metrics["conspo/coef_staleness_steps_max"] = float(steps - 1)
            metrics.update(step_metrics)
            output = TensorDict(
                {
                    "advantages": response_to_nested(advantages, nested_mask),
                    "returns": response_to_nested(returns, nested_mask),
                },
                batch_size=len(batch),
            )
            return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=output)
