"""The GRPO family as pure tensor functions: GRPO, Dr.GRPO, DAPO and GSPO (layout: conspo.objectives).

References: GRPO, arXiv 2402.03300; Dr.GRPO, arXiv 2503.20783; DAPO, arXiv 2503.14476; GSPO, arXiv
2507.18071. The normalisations follow TRL 1.16 ``GRPOTrainer`` (tested against it in tests/test_trl_oracle.py).
"""

from __future__ import annotations

import torch

from conspo.loss_pieces import (
    Metrics,
    check_layout,
    group_advantages,
    masked_sum,
    sequence_scores,
)


def _clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float):
    """PPO clipped per-element loss -min(rho*A, clip(rho, 1-eps_low, 1+eps_high)*A) and clip flags."""
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    loss = -torch.minimum(ratio * advantages, clipped * advantages)
    low = (ratio < 1 - eps_low) & (advantages < 0)
    high = (ratio > 1 + eps_high) & (advantages > 0)
    return loss, low, high


@torch.no_grad()
def _clip_metrics(low: torch.Tensor, high: torch.Tensor, mask: torch.Tensor) -> Metrics:
    """Fraction of tokens (or sequences, for sequence-level ratios) whose ratio was clipped."""
    if low.shape != mask.shape:  # sequence-level: one flag per row with a completion
        weights = mask.bool().any(-1)
        low, high = low.squeeze(-1), high.squeeze(-1)
    else:
        weights = mask.bool()
    count = weights.sum().clamp(min=1)
    return {
        "clip/low_frac": float((low & weights).sum() / count),
        "clip/high_frac": float((high & weights).sum() / count),
        "clip/region_frac": float(((low | high) & weights).sum() / count),
    }


def _token_surrogate(token_logps, old_token_logps, mask, rewards, group_size, eps_low, eps_high, scale_by_std=True):
    """Per-token clipped surrogate with group advantages: the shared core of GRPO, Dr.GRPO and DAPO."""
    check_layout(mask, rewards, group_size)
    advantages = group_advantages(_as_float(rewards, token_logps), group_size, scale_by_std=scale_by_std)
    return _clipped_surrogate(token_logps - old_token_logps, advantages[:, None], eps_low, eps_high)


def _as_float(rewards: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Rewards in the log-probs' dtype, but never below fp32 (advantages in bf16 lose ~3 digits)."""
    return rewards.to(torch.promote_types(like.dtype, torch.float32))


def _seq_mean_token_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    lengths = mask.bool().sum(-1).to(per_token.dtype)
    return (masked_sum(per_token, mask) / lengths.clamp(min=1)).mean()


def grpo_loss(
    token_logps: torch.Tensor,
    old_token_logps: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> tuple[torch.Tensor, Metrics]:
    """GRPO (Shao et al. 2024) with TRL's ``loss_type="grpo"`` aggregation.

        A_i     = (r_i - mean_g r) / (std_g r + 1e-4)
        rho_t   = exp(logp_t - old_logp_t)
        L       = (1/B) sum_i (1/|o_i|) sum_t -min(rho_t A_i, clip(rho_t, 1-eps_low, 1+eps_high) A_i)

    Zero-length rows count in B with a zero term (as TRL does).
    """
    per_token, low, high = _token_surrogate(token_logps, old_token_logps, mask, rewards, group_size, eps_low, eps_high)
    loss = _seq_mean_token_mean(per_token, mask)
    return loss, {"objective/loss": float(loss.detach()), **_clip_metrics(low, high, mask)}


def dr_grpo_loss(
    token_logps: torch.Tensor,
    old_token_logps: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    max_completion_length: int | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """Dr.GRPO (Liu et al. 2025): no std scaling, no per-sequence length normalisation.

        A_i = r_i - mean_g r
        L   = (1/(B * L_max)) sum_i sum_t -min(rho_t A_i, clip(rho_t) A_i)

    L_max = ``max_completion_length`` (default: T, the padded width of the batch; pass the
    generation limit to match TRL exactly when batches are padded shorter than it).
    """
    per_token, low, high = _token_surrogate(
        token_logps, old_token_logps, mask, rewards, group_size, eps_low, eps_high, scale_by_std=False
    )
    width = mask.shape[1] if max_completion_length is None else max_completion_length
    loss = masked_sum(per_token, mask).sum() / (mask.shape[0] * width)
    return loss, {"objective/loss": float(loss.detach()), **_clip_metrics(low, high, mask)}


def dapo_loss(
    token_logps: torch.Tensor,
    old_token_logps: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
) -> tuple[torch.Tensor, Metrics]:
    """DAPO (Yu et al. 2025) loss: clip-higher and token-mean over the whole batch.

        A_i = (r_i - mean_g r) / (std_g r + 1e-4)
        L   = (1 / sum_i |o_i|) sum_i sum_t -min(rho_t A_i, clip(rho_t, 1-eps_low, 1+eps_high) A_i)

    DAPO's dynamic sampling (drop groups without signal and refill) is a trainer option,
    not part of the loss.
    """
    per_token, low, high = _token_surrogate(token_logps, old_token_logps, mask, rewards, group_size, eps_low, eps_high)
    n_tokens = mask.bool().sum().clamp(min=1).to(token_logps.dtype)
    loss = masked_sum(per_token, mask).sum() / n_tokens
    return loss, {"objective/loss": float(loss.detach()), **_clip_metrics(low, high, mask)}


def gspo_loss(
    token_logps: torch.Tensor,
    old_token_logps: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    *,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
) -> tuple[torch.Tensor, Metrics]:
    """GSPO (Zheng et al. 2025): one length-normalised importance ratio per sequence.

        rho_i = exp( (1/|o_i|) sum_t (logp_t - old_logp_t) )
        L     = (1/B) sum_{i: |o_i|>0} -min(rho_i A_i, clip(rho_i, 1-eps_low, 1+eps_high) A_i)

    Equal to TRL's ``importance_sampling_level="sequence"`` with ``loss_type="grpo"``.
    """
    check_layout(mask, rewards, group_size)
    advantages = group_advantages(_as_float(rewards, token_logps), group_size)
    log_ratio = sequence_scores(token_logps - old_token_logps, mask)[:, None]  # (B, 1)
    per_seq, low, high = _clipped_surrogate(log_ratio, advantages[:, None], eps_low, eps_high)
    present = mask.bool().any(-1)
    loss = torch.where(present, per_seq.squeeze(-1), torch.zeros_like(per_seq.squeeze(-1))).mean()
    return loss, {"objective/loss": float(loss.detach()), **_clip_metrics(low, high, mask)}
