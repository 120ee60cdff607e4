"""GRPO's loss written as a weighted positive-minus-negative score difference (docs/design.md section 1):
an analysis of the GRPO family beside the losses, logged and tested, not trained on."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conspo.loss_pieces import ADVANTAGE_STD_EPS, Metrics, check_layout, masked_sum


@dataclass(frozen=True)
class GRPOScoreGap:
    """GRPO's loss written as a weighted positive-minus-negative score difference.

    ``weights`` w_g, ``positive_score`` mean_{i in P_g} S+_i and ``negative_score``
    mean_{j in N_g} S-_j are (n_groups,), zero for groups without both kinds;
    ``loss`` = -(1/B) sum_g w_g (positive_score_g - negative_score_g) equals ``grpo_loss``.
    """

    weights: torch.Tensor
    positive_score: torch.Tensor
    negative_score: torch.Tensor
    loss: torch.Tensor

    def metrics(self) -> Metrics:
        mixed = self.weights > 0
        if not bool(mixed.any()):
            return {"grpo/weight_mean": 0.0, "grpo/pos_score_mean": 0.0, "grpo/neg_score_mean": 0.0}
        return {
            "grpo/weight_mean": float(self.weights[mixed].mean()),
            "grpo/pos_score_mean": float(self.positive_score[mixed].mean()),
            "grpo/neg_score_mean": float(self.negative_score[mixed].mean()),
        }


def grpo_score_gap(
    token_logps: torch.Tensor,
    old_token_logps: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> GRPOScoreGap:
    """The discriminative reformulation of GRPO for binary (0/1) rewards.

    Group of G rollouts, k positive, p = k/G, sigma = unbiased std of the rewards:

        S+_i = mean_t min(rho_t, 1+eps_high)        S-_j = mean_t max(rho_t, 1-eps_low)
        w_g  = k (G - k) / (G (sigma_g + 1e-4))
        L    = -(1/B) sum_g w_g ( mean_{i in P_g} S+_i - mean_{j in N_g} S-_j )

    because min(rho A, clip(rho) A) = A min(rho, 1+eps_high) for A > 0 and
    A max(rho, 1-eps_low) for A < 0. The weight depends only on the group's success rate,
    not on how well the scores are already separated ("score-insensitive credit
    assignment"). Raises on non-binary rewards, where the identity does not hold.
    """
    check_layout(mask, rewards, group_size)
    if not bool(((rewards == 0) | (rewards == 1)).all()):
        raise ValueError("grpo_score_gap needs binary 0/1 rewards; the score-gap identity does not hold otherwise")
    shape = (-1, group_size)
    ratio = torch.exp(token_logps - old_token_logps)
    lengths = mask.bool().sum(-1).to(token_logps.dtype).clamp(min=1)
    score_pos = (masked_sum(torch.clamp(ratio, max=1 + eps_high), mask) / lengths).view(shape)
    score_neg = (masked_sum(torch.clamp(ratio, min=1 - eps_low), mask) / lengths).view(shape)
    is_pos = rewards.view(shape) == 1
    k = is_pos.sum(1).to(token_logps.dtype)
    n_neg = group_size - k
    sigma = rewards.view(shape).to(token_logps.dtype).std(dim=1, unbiased=True) if group_size > 1 else k * 0
    weights = k * n_neg / (group_size * (sigma + ADVANTAGE_STD_EPS))
    zeros = torch.zeros_like(score_pos)
    pos_mean = torch.where(is_pos, score_pos, zeros).sum(1) / k.clamp(min=1)
    neg_mean = torch.where(~is_pos, score_neg, zeros).sum(1) / n_neg.clamp(min=1)
    loss = -(weights * (pos_mean - neg_mean)).sum() / rewards.shape[0]
    return GRPOScoreGap(weights=weights, positive_score=pos_mean, negative_score=neg_mean, loss=loss)
