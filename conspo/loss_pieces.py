"""The pieces every loss shares: the row layout check, masked sums, sequence scores, group advantages, the
k3 KL estimate. Pure tensor functions (layout: conspo.objectives)."""

from __future__ import annotations

import torch

Metrics = dict[str, float]

#: Added to the group reward std before dividing, as TRL and the GRPO paper's code do.
ADVANTAGE_STD_EPS = 1e-4


def check_layout(mask: torch.Tensor, rewards: torch.Tensor, group_size: int) -> int:
    """Validate the group layout and return the number of groups."""
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if mask.dim() != 2:
        raise ValueError(f"mask must be (B, T), got shape {tuple(mask.shape)}")
    batch = mask.shape[0]
    if rewards.shape != (batch,):
        raise ValueError(f"rewards must be (B,) = ({batch},), got shape {tuple(rewards.shape)}")
    if batch % group_size != 0:
        raise ValueError(
            f"batch of {batch} rows is not a whole number of groups of group_size={group_size}; "
            "rows must be laid out as n_groups * group_size with each group contiguous"
        )
    return batch // group_size


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim of ``values`` where ``mask`` is set.

    ``torch.where`` (not ``values * mask``) so that padding positions holding -inf or NaN
    log-probs cannot poison the sum or its gradient.
    """
    return torch.where(mask.bool(), values, torch.zeros_like(values)).sum(-1)


def sequence_scores(token_logps: torch.Tensor, mask: torch.Tensor, *, normalize_by_length: bool = True) -> torch.Tensor:
    """Length-normalised sequence log-probability, (B,).

        s_i = (1/|o_i|) * sum_t m_{i,t} * log pi(o_{i,t} | q, o_{i,<t})

    Rows with |o_i| = 0 get score 0 (callers exclude them). With
    ``normalize_by_length=False`` the score is the plain sum (an ablation, not the default).
    """
    if token_logps.shape != mask.shape:
        raise ValueError(f"token_logps {tuple(token_logps.shape)} and mask {tuple(mask.shape)} differ in shape")
    total = masked_sum(token_logps, mask)
    if not normalize_by_length:
        return total
    lengths = mask.bool().sum(-1).to(token_logps.dtype)
    return total / lengths.clamp(min=1)


def group_advantages(rewards: torch.Tensor, group_size: int, *, scale_by_std: bool = True) -> torch.Tensor:
    """GRPO advantages, (B,).

        A_i = (r_i - mean_g r) / (std_g r + 1e-4)      (std unbiased, as TRL)
        A_i =  r_i - mean_g r                          (scale_by_std=False: Dr.GRPO)

    Groups where every reward is equal get A = 0. With group_size 1 the std is undefined;
    we return zero advantages (no within-group signal), where TRL would produce NaN then 0.
    """
    grouped = rewards.view(-1, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if not scale_by_std:
        return centered.reshape(-1)
    if group_size == 1:
        return torch.zeros_like(rewards)
    std = grouped.std(dim=1, unbiased=True, keepdim=True)
    return (centered / (std + ADVANTAGE_STD_EPS)).reshape(-1)


def kl_k3(token_logps: torch.Tensor, ref_token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi_theta || pi_ref), seq-mean-token-mean, scalar.

        kl_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1        (Schulman, "Approximating KL")

    Optional extra for any objective: ``loss + beta * kl_k3(...)``.
    """
    delta = ref_token_logps - token_logps
    per_token = torch.exp(delta) - delta - 1
    lengths = mask.bool().sum(-1).to(token_logps.dtype)
    return (masked_sum(per_token, mask) / lengths.clamp(min=1)).mean()
