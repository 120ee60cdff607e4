"""Sequence-score objectives: a group loss written once, as a function of one score per completion.

An objective of this family depends on the policy only through one score per completion,

    s_i = score(token log-probs of completion i [, the sampling policy's])

and couples the completions of a group through its rewards. It is a pure function

    loss(scores, rewards, present, group_size, **options) -> (loss, metrics)

of (B,) scores, (B,) rewards and a (B,) bool ``present`` (rows with a non-empty completion; the others
take part in nothing), groups of ``group_size`` contiguous rows, plus the name of the score it needs
(``SCORES``). Every engine trains it by one route (docs/design.md section 4): score the whole batch
without gradient, take c_i = dL/ds_i by autograd on those detached scores (``score_coefficients``),
then back-propagate sum_i c_i s_i(theta) micro-batch by micro-batch, on any split of the batch, across
processes. A closed form of c, where one exists (ConSPO's), is only an optimisation, tested against
autograd. The loss is reported on the detached full-batch scores: the objective's value, not the
surrogate's.

Built in: ``conspo`` (conspo.objectives.conspo_loss_from_scores), ``disco`` and ``disco_ratio``
(DisCO, arXiv 2505.12366), ``real`` (REAL, arXiv 2602.05630). Write your own with ``ScoreObjective``
and ``register_score_objective`` (docs/objectives.md, examples/score_objective/).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from conspo.objective_options import CONSPO_TAU, DEFAULT_POSITIVE_RULE, POSITIVE_THRESHOLD
from conspo.objectives import (
    Metrics,
    conspo_coefficients,
    conspo_loss_from_scores,
    contrastive_sets,
    sequence_scores,
)

#: The scores an objective may ask for, over the completion tokens t of row i (mask m):
#: ``mean_logp``  (1/|o_i|) sum_t log pi(o_t)                 (length-normalised log-likelihood)
#: ``sum_logp``   sum_t log pi(o_t)                           (sequence log-likelihood)
#: ``mean_log_ratio`` (1/|o_i|) sum_t log(pi(o_t) / pi_old(o_t))   (pi_old: the policy that sampled)
#: ``mean_ratio`` (1/|o_i|) sum_t pi(o_t) / pi_old(o_t)
SCORES = ("mean_logp", "sum_logp", "mean_log_ratio", "mean_ratio")
#: Scores that read the sampling policy's log-probs.
RATIO_SCORES = ("mean_log_ratio", "mean_ratio")


def sequence_score(
    kind: str, token_logps: torch.Tensor, old_token_logps: torch.Tensor | None, mask: torch.Tensor
) -> torch.Tensor:
    """(B,) scores of kind ``kind`` (``SCORES``); ``old_token_logps`` (B, T) is needed by the ratio scores only.

    Rows with no completion token score 0 (objectives exclude them through ``present``).
    """
    if kind == "mean_logp":
        return sequence_scores(token_logps, mask)
    if kind == "sum_logp":
        return sequence_scores(token_logps, mask, normalize_by_length=False)
    if kind not in RATIO_SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {kind!r}")
    if old_token_logps is None:
        raise ValueError(f"score {kind!r} needs the sampling policy's token log-probs (old_token_logps)")
    log_ratio = token_logps - old_token_logps
    if kind == "mean_log_ratio":
        return sequence_scores(log_ratio, mask)
    # exp only where the mask is set: padding may hold anything
    return sequence_scores(torch.exp(torch.where(mask.bool(), log_ratio, torch.zeros_like(log_ratio))), mask)


@dataclass(frozen=True, kw_only=True)
class ScoreObjective:
    """A group loss of one score per completion.

    ``loss(scores, rewards, present, group_size, **options) -> (loss, metrics)``: differentiable in
    ``scores``; ``metrics`` holds ``objective/loss`` (the loss's value) and anything else worth logging.
    ``score``: one of ``SCORES``, or a function of the options returning one (ConSPO's ``score`` option).
    ``coefficients``: optional closed form of dL/ds with the loss's signature, returning (B,) (else autograd).
    """

    name: str
    loss: Callable[..., tuple[torch.Tensor, Metrics]]
    score: str | Callable[[dict], str] = "mean_logp"
    coefficients: Callable[..., torch.Tensor] | None = None

    def __post_init__(self):
        if isinstance(self.score, str) and self.score not in SCORES:
            raise ValueError(
                f"ScoreObjective {self.name!r}: score must be one of {', '.join(SCORES)}, got {self.score!r}"
            )

    @property
    def option_defaults(self) -> dict[str, object]:
        """The loss's keyword-only options and their defaults (from its signature: the one place they live)."""
        return {
            name: p.default
            for name, p in inspect.signature(self.loss).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }

    def score_kind(self, options: dict) -> str:
        return self.score(options) if callable(self.score) else self.score

    @property
    def uses_old_logps(self) -> bool:
        """True when some setting of its options makes it read the sampling policy's log-probs."""
        return callable(self.score) or self.score in RATIO_SCORES


def score_coefficients(
    objective: ScoreObjective,
    scores: torch.Tensor,
    rewards: torch.Tensor,
    present: torch.Tensor,
    group_size: int,
    **options,
) -> tuple[torch.Tensor, Metrics]:
    """c = dL/ds at the detached full-batch ``scores`` (B,), and the loss's metrics there.

    By autograd in float64 (the closed form ``objective.coefficients`` where given), returned in the
    scores' dtype: grad_theta L = sum_i c_i grad_theta s_i, so back-propagating ``coefficient_surrogate``
    piece by piece gives the full-batch gradient.
    """
    if scores.dim() != 1 or rewards.shape != scores.shape or present.shape != scores.shape:
        raise ValueError(
            f"scores, rewards and present must all be (B,), got {tuple(scores.shape)}, "
            f"{tuple(rewards.shape)} and {tuple(present.shape)}"
        )
    if scores.shape[0] % group_size:
        raise ValueError(f"{scores.shape[0]} rows is not a whole number of groups of {group_size}")
    present = present.bool()
    if objective.coefficients is not None:
        with torch.no_grad():
            c = objective.coefficients(scores, rewards, present, group_size, **options)
            _, metrics = objective.loss(scores, rewards, present, group_size, **options)
        return c, metrics
    s = scores.detach().to(torch.float64).requires_grad_(True)
    with torch.enable_grad():
        loss, metrics = objective.loss(s, rewards.detach().to(torch.float64), present, group_size, **options)
        c = torch.autograd.grad(loss, s, allow_unused=True)[0] if loss.requires_grad else None
    c = torch.zeros_like(s) if c is None else c
    return c.detach().to(scores.dtype), metrics


# ---------------------------------------------------------------------------------------
# Shared pieces of the group losses below
# ---------------------------------------------------------------------------------------


def _masked_logsumexp(x: torch.Tensor, keep: torch.Tensor, *, with_zero: bool = False) -> torch.Tensor:
    """log sum_{k: keep} exp(x_k) over the last dim (log(1 + sum ...) with ``with_zero``), 0 where nothing is kept
    (and no NaN gradient there)."""
    masked = torch.where(keep, x, torch.full_like(x, float("-inf")))
    if with_zero:
        masked = torch.cat([torch.zeros_like(masked[..., :1]), masked], dim=-1)
    any_kept = keep.any(-1) | with_zero
    safe = torch.where(any_kept[..., None], masked, torch.zeros_like(masked))
    return torch.where(any_kept, torch.logsumexp(safe, dim=-1), torch.zeros_like(safe[..., 0]))


@torch.no_grad()
def _pair_metrics(prefix: str, s, positive, negative, valid, n_groups, loss) -> Metrics:
    n_pos, n_neg = int(positive.sum()), int(negative.sum())
    zeros = torch.zeros_like(s)
    return {
        "objective/loss": float(loss),
        f"{prefix}/valid_group_frac": float(valid.sum()) / max(n_groups, 1),
        f"{prefix}/pos_score_mean": float(torch.where(positive, s, zeros).sum()) / max(n_pos, 1),
        f"{prefix}/neg_score_mean": float(torch.where(negative, s, zeros).sum()) / max(n_neg, 1),
    }


def group_sets(scores: torch.Tensor, rewards: torch.Tensor, present: torch.Tensor, group_size: int):
    """(s, positive, negative, valid) with s the scores as (n_groups, G) and the sets of ``contrastive_sets``
    under its default rule (positive: reward above the group's mean; for 0/1 rewards the correct completions;
    valid: both kinds present), for any score objective that labels completions by their rewards."""
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    positive, negative, valid = contrastive_sets(rewards, present, group_size, positive_rule=DEFAULT_POSITIVE_RULE)
    return scores.view(-1, group_size), positive, negative, valid


def _check_tau(tau: float) -> None:
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")


# ---------------------------------------------------------------------------------------
# DisCO (Li et al. 2025, arXiv 2505.12366)
# ---------------------------------------------------------------------------------------


def disco_loss(
    scores: torch.Tensor, rewards: torch.Tensor, present: torch.Tensor, group_size: int, *, tau: float = 10.0
) -> tuple[torch.Tensor, Metrics]:
    """DisCO's log-sum-exp discriminative objective, negated to a loss.

    With P_g, N_g the positive and negative non-empty completions of group g (``contrastive_sets``: for 0/1
    rewards the correct and the wrong ones) and V the groups with both (all-correct and all-wrong groups
    are dropped, as DisCO does):

        L = (1/|V|) sum_{g in V} [ -(1/|P_g|) sum_{i in P_g} s_i + tau * log( (1/|N_g|) sum_{j in N_g} exp(s_j/tau) ) ]

    the negation of DisCO's E_q[ E_{o+} s(o+, q) - tau log E_{o-} exp(s(o-, q)/tau) ]. The paper's scores:
    the length-normalised log-likelihood with tau = 10 (``disco``) or the likelihood ratio to the sampling
    policy with tau = 1 (``disco_ratio``). DisCO's KL constraint (a squared hinge on KL above delta) is not
    part of this loss; the native trainer's ``--beta`` adds a k3 KL penalty instead. L = 0 when V is empty.
    """
    _check_tau(tau)
    s, positive, negative, valid = group_sets(scores, rewards, present, group_size)
    zeros = torch.zeros_like(s)
    n_pos = positive.sum(1).clamp(min=1).to(s.dtype)
    n_neg = negative.sum(1).clamp(min=1).to(s.dtype)
    pos_mean = torch.where(positive, s, zeros).sum(1) / n_pos
    log_mean_exp = _masked_logsumexp(s / tau, negative) - torch.log(n_neg)
    per_group = torch.where(valid, -pos_mean + tau * log_mean_exp, torch.zeros_like(pos_mean))
    loss = per_group.sum() / valid.sum().clamp(min=1).to(s.dtype)
    return loss, _pair_metrics("disco", s.detach(), positive, negative, valid, s.shape[0], loss.detach())


def disco_ratio_loss(
    scores: torch.Tensor, rewards: torch.Tensor, present: torch.Tensor, group_size: int, *, tau: float = 1.0
) -> tuple[torch.Tensor, Metrics]:
    """DisCO with the likelihood-ratio score (``mean_ratio``) and its tau = 1: ``disco_loss`` otherwise."""
    return disco_loss(scores, rewards, present, group_size, tau=tau)


# ---------------------------------------------------------------------------------------
# REAL (arXiv 2602.05630, ms-swift)
# ---------------------------------------------------------------------------------------


def real_loss(
    scores: torch.Tensor, rewards: torch.Tensor, present: torch.Tensor, group_size: int, *, tau: float = 0.5
) -> tuple[torch.Tensor, Metrics]:
    """REAL: rewards as labels of a per-group logistic-style loss on the log-ratio scores.

    With s_i = mean token log(pi/pi_old) (``mean_log_ratio``), P_g, N_g and V as in ``disco_loss``:

        L = (1/|V|) sum_{g in V} [ log(1 + sum_{i in P_g} exp(-s_i/tau)) + log(1 + sum_{j in N_g} exp(s_j/tau)) ]

    tau = 0.5 (REAL's default). Groups without both kinds carry no label contrast and are left out;
    the per-group terms are averaged over V. L = 0 when V is empty.
    """
    _check_tau(tau)
    s, positive, negative, valid = group_sets(scores, rewards, present, group_size)
    per_group = _masked_logsumexp(-s / tau, positive, with_zero=True) + _masked_logsumexp(
        s / tau, negative, with_zero=True
    )
    per_group = torch.where(valid, per_group, torch.zeros_like(per_group))
    loss = per_group.sum() / valid.sum().clamp(min=1).to(s.dtype)
    return loss, _pair_metrics("real", s.detach(), positive, negative, valid, s.shape[0], loss.detach())


# ---------------------------------------------------------------------------------------
# ConSPO as one instance (closed-form coefficients)
# ---------------------------------------------------------------------------------------


def conspo_score_loss(
    scores,
    rewards,
    present,
    group_size,
    *,
    margin: float = 0.0,
    tau: float = CONSPO_TAU,
    positive_threshold: float = POSITIVE_THRESHOLD,
    positive_rule: str = DEFAULT_POSITIVE_RULE,
    score: str = "mean",
):
    """``conspo_loss_from_scores``; ``score`` (mean or sum) picks the score the rows get, not the loss."""
    del score
    return conspo_loss_from_scores(
        scores,
        present,
        rewards,
        group_size,
        margin=margin,
        tau=tau,
        positive_threshold=positive_threshold,
        positive_rule=positive_rule,
    )


def _conspo_closed_form(scores, rewards, present, group_size, *, score: str = "mean", **options):
    """``conspo_coefficients`` with ``conspo_score_loss``'s signature."""
    del score
    return conspo_coefficients(scores, rewards, group_size, present=present, **options)


SCORE_OBJECTIVES: dict[str, ScoreObjective] = {
    "conspo": ScoreObjective(
        name="conspo",
        loss=conspo_score_loss,
        coefficients=_conspo_closed_form,
        score=lambda o: "sum_logp" if o.get("score") == "sum" else "mean_logp",
    ),
    "disco": ScoreObjective(name="disco", loss=disco_loss, score="mean_logp"),
    "disco_ratio": ScoreObjective(name="disco_ratio", loss=disco_ratio_loss, score="mean_ratio"),
    "real": ScoreObjective(name="real", loss=real_loss, score="mean_log_ratio"),
}

#: Score objectives added at run time (``register_score_objective``), beside the built-in ones.
REGISTERED: dict[str, ScoreObjective] = {}


def register_score_objective(objective: ScoreObjective) -> ScoreObjective:
    """Make ``objective`` selectable by its name in every engine (native ``TrainConfig.objective``, the TRL
    trainer's ``objective``, the verl policy loss); returns it. A built-in name cannot be replaced."""
    if not isinstance(objective, ScoreObjective):
        raise TypeError(f"register_score_objective takes a ScoreObjective, got {type(objective).__name__}")
    if objective.name in SCORE_OBJECTIVES:
        raise ValueError(f"{objective.name!r} is a built-in objective; give yours another name")
    REGISTERED[objective.name] = objective
    return objective


def get_score_objective(name: str) -> ScoreObjective:
    """The score objective called ``name`` (built in or registered)."""
    found = SCORE_OBJECTIVES.get(name) or REGISTERED.get(name)
    if found is None:
        raise ValueError(
            f"{name!r} is not a score objective; score objectives are: {', '.join([*SCORE_OBJECTIVES, *REGISTERED])}"
        )
    return found
