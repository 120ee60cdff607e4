"""Reward shaping before any objective sees the rewards: several rewards combined into one, DAPO's soft
overlong punishment and overlong filtering, and which rewards can move a group-coupled update.

Pure tensor functions, used by the native trainer, the TRL plug-in and held-out evaluation alike.
"""

from __future__ import annotations

import math

import torch

from conspo.objective_options import DEFAULT_POSITIVE_RULE, POSITIVE_THRESHOLD
from conspo.objectives import contrastive_sets


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, *, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, Eq. 13) times ``factor``, (B,) float64.

    With L_max = ``max_length`` (the generation limit), L_cache = ``buffer`` and |o_i| = ``lengths[i]``
    (completion tokens, EOS included, as TRL counts them):

        R_i = 0                                     if |o_i| <= L_max - L_cache
        R_i = (L_max - L_cache - |o_i|) / L_cache   if L_max - L_cache < |o_i| <= L_max
        R_i = -1                                    if |o_i| > L_max
        returned: factor * R_i   ( = factor * clamp((L_max - L_cache - |o_i|) / L_cache, -1, 0) )

    It is added to the task's reward before any objective sees it. The paper generates up to
    L_max = 20480 tokens with L_cache = 4096 (penalty from 16384 tokens on) and factor 1. Equals TRL's
    ``trl.rewards.get_soft_overlong_punishment(L_max, L_cache)`` with reward weight ``factor``
    (tests/test_overlong.py). ``buffer=0`` is off: all zeros.
    """
    if not (isinstance(buffer, int) and 0 <= buffer <= max_length):
        raise ValueError(f"buffer must be an int in [0, max_length={max_length}], got {buffer!r}")
    n = lengths.to(torch.float64)
    if buffer == 0:
        return torch.zeros_like(n)
    # the piecewise form is one clamp: above L_max the ramp passes -1, below L_max - L_cache it is positive
    return factor * ((max_length - buffer - n) / buffer).clamp(min=-1.0, max=0.0)


def mask_truncated_rows(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """DAPO's overlong filtering, TRL's ``mask_truncated_completions``: ``mask`` with truncated rows zeroed.

        m'_{i,t} = m_{i,t} * [o_i ended with EOS]

    Every objective here treats an all-zero row as an empty completion, which gets no gradient:
    GRPO, Dr.GRPO and GSPO still count it in B and DAPO drops its tokens from the token count, as TRL
    does; ConSPO leaves it out of P_g, N_g and the group mean. Its reward still enters its group's mean
    and std in the GRPO family (TRL computes advantages before masking).
    """
    if truncated.shape != mask.shape[:1]:
        raise ValueError(f"truncated must be (B,) = ({mask.shape[0]},), got shape {tuple(truncated.shape)}")
    return torch.where(truncated.bool()[:, None], torch.zeros_like(mask), mask)


def combine_rewards(per_reward: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B, K) rewards of K reward functions -> (B,) total: the weighted sum over the rewards that scored
    the row (NaN = no score, as TRL's ``nansum``); a row no reward scored stays NaN (it takes part in nothing)."""
    per_reward = per_reward.to(torch.float64) if not per_reward.is_floating_point() else per_reward
    w = torch.ones(per_reward.shape[1], dtype=per_reward.dtype) if weights is None else weights.to(per_reward)
    total = (per_reward * w).nansum(dim=1)
    return torch.where(torch.isnan(per_reward).all(dim=1), torch.full_like(total, float("nan")), total)


def rewards_that_move_the_update(
    per_reward: torch.Tensor,
    present: torch.Tensor,
    group_size: int,
    *,
    weights: torch.Tensor | None = None,
    couples_group: bool = True,
    positive_threshold: float = POSITIVE_THRESHOLD,
    positive_rule: str = DEFAULT_POSITIVE_RULE,
) -> list[bool]:
    """For each of the K rewards of a (B, K) batch: do its differences within a group change the update?

    ConSPO (``couples_group``): reward k moves the update when flattening it to its group's mean changes
    which completions are positive or negative in some group (``contrastive_sets`` on the combined reward);
    e.g. a 0.2 format bonus on top of 0/1 accuracy never does under ``threshold`` at 0.5. Advantage-based
    objectives: reward k moves the update when it differs within some group among the rows taking part.
    """
    taking_part = present.bool() & ~torch.isnan(combine_rewards(per_reward, weights))
    shape = (-1, group_size)

    def sets(r):
        pos, neg, _ = contrastive_sets(
            torch.nan_to_num(combine_rewards(r, weights)), taking_part, group_size, positive_threshold, positive_rule
        )
        return pos, neg

    base = sets(per_reward) if couples_group else None
    moved = []
    for k in range(per_reward.shape[1]):
        r = per_reward[:, k].view(shape)
        scored = ~torch.isnan(r) & taking_part.view(shape)
        if not couples_group:
            hi = torch.where(scored, r, torch.full_like(r, -math.inf)).max(dim=1).values
            lo = torch.where(scored, r, torch.full_like(r, math.inf)).min(dim=1).values
            moved.append(bool((scored.sum(dim=1) > 1).logical_and(hi > lo).any()))
            continue
        mean = torch.where(scored, r, torch.zeros_like(r)).sum(dim=1, keepdim=True) / scored.sum(
            dim=1, keepdim=True
        ).clamp(min=1)
        flattened = per_reward.clone()
        flattened[:, k] = torch.where(torch.isnan(r), r, mean.expand_as(r)).reshape(-1)
        pos, neg = sets(flattened)
        moved.append(not (torch.equal(pos, base[0]) and torch.equal(neg, base[1])))
    return moved
