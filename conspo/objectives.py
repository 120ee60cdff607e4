"""Policy objectives for RL with verifiable rewards, as pure tensor functions.

Every function here is a pure function of tensors: no model, no optimizer, no globals.
The trainer, the TRL plug-in and the benchmarks all import these; there is no second
copy of any loss in the project. This module holds ConSPO and the registry of every
objective; the GRPO family is in ``conspo.grpo_family``, the shared pieces in
``conspo.loss_pieces`` (both importable from here too), the sequence-score interface,
DisCO and REAL in ``conspo.score_objectives``.

Layout (shared by every function)
---------------------------------
Rollouts are rows. A batch holds ``n_groups`` groups of ``group_size`` (G) rollouts of
the same prompt, group g in rows ``[g*G, (g+1)*G)``; ``B = n_groups * G``.

* ``token_logps``, ``old_token_logps``: (B, T) log pi(o_t | q, o_<t) of the completion tokens
  under the current policy (with gradient) and the policy that sampled them (no gradient).
* ``mask``: (B, T), 1 for real completion tokens, 0 for padding. |o_i| = mask[i].sum().
* ``rewards``: (B,) verified rewards.

Each loss returns ``(loss, metrics)``: a scalar tensor and a dict of plain floats with
stable names. All functions are vectorised over groups (no Python loop over rows) and
work in any floating dtype.

References: ConSPO, arXiv 2605.12969 (only the abstract is public; see docs/design.md, the
ConSPO loss below is our reconstruction); GRPO, arXiv 2402.03300; Dr.GRPO, arXiv
2503.20783; DAPO, arXiv 2503.14476; GSPO, arXiv 2507.18071. The GRPO-family
normalisations follow TRL 1.16 ``GRPOTrainer`` (tested against it in tests/test_trl_oracle.py).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from conspo.grpo_family import dapo_loss, dr_grpo_loss, grpo_loss, gspo_loss
from conspo.loss_pieces import (  # noqa: F401 (the shared pieces are part of this module's public names)
    ADVANTAGE_STD_EPS,
    Metrics,
    check_layout,
    group_advantages,
    kl_k3,
    masked_sum,
    sequence_scores,
)
from conspo.objective_options import (  # noqa: F401 (the rules' names are part of this module's public names)
    CONSPO_TAU,
    DEFAULT_POSITIVE_RULE,
    POSITIVE_RULES,
    POSITIVE_THRESHOLD,
)

# ---------------------------------------------------------------------------------------
# ConSPO
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ContrastiveGroups:
    """Per-group quantities of the ConSPO loss, all shaped (n_groups, G) or (n_groups,)."""

    positive: torch.Tensor  # bool (n, G): rollout in P_g of a valid group
    negative: torch.Tensor  # bool (n, G): rollout in N_g of a valid group
    valid: torch.Tensor  # bool (n,):   P_g and N_g both non-empty
    n_positive: torch.Tensor  # (n,) |P_g| (clamped to >= 1 so it can divide)
    n_valid: torch.Tensor  # ()   |V| (clamped to >= 1)
    positive_logit: torch.Tensor  # (n, G) (s_i - m)/tau
    negative_logit: torch.Tensor  # (n, G) s_j/tau
    log_negative_mass: torch.Tensor  # (n,) log sum_{j in N_g} exp(s_j/tau), 0 for invalid groups


def at_threshold(rewards: torch.Tensor, positive_threshold: float) -> torch.Tensor:
    """The threshold rule's positives: reward >= positive_threshold (also held-out ``positive_frac``'s bar)."""
    return rewards >= positive_threshold


def contrastive_sets(
    rewards: torch.Tensor,
    present: torch.Tensor,
    group_size: int,
    positive_threshold: float = POSITIVE_THRESHOLD,
    positive_rule: str = DEFAULT_POSITIVE_RULE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ConSPO group rule, written once: (positive, negative, valid) for each group.

    Only rows with a non-empty completion (``present``) take part. The positives are chosen by
    ``positive_rule``:

        threshold:   P_g = {i in g : |o_i| > 0, r_i >= positive_threshold}
        group_mean:  P_g = {i in g : |o_i| > 0, r_i > rbar_g},   rbar_g = mean of r_j over j in g with |o_j| > 0

    and in both cases N_g = {j in g : |o_j| > 0, j not in P_g}; g is valid when P_g and N_g are
    both non-empty. ``group_mean`` (the default) works for graded rewards too, where no fixed threshold
    splits every group: a completion is positive when it beats its own group's average (the sign of
    GRPO's advantage), so a group whose rewards are all equal has no positive (and no signal).
    ``positive_threshold`` is not used by ``group_mean``. With 0/1 rewards both rules give the same
    sets for any threshold in (0, 1].

    Returns ``positive`` and ``negative`` as bool (n_groups, G), restricted to valid groups,
    and ``valid`` as bool (n_groups,). ``present`` (B,) marks rows with a non-empty completion.
    """
    shape = (-1, group_size)
    present = present.bool().view(shape)
    r = rewards.view(shape)
    if positive_rule == "threshold":
        above = at_threshold(r, positive_threshold)
    elif positive_rule == "group_mean":
        # Mean over the rows that take part only: an empty or unscorable row must not move the bar.
        zeros = torch.zeros_like(r)
        count = present.sum(dim=1, keepdim=True).clamp(min=1).to(r.dtype)
        group_mean = torch.where(present, r, zeros).sum(dim=1, keepdim=True) / count
        above = r > group_mean
    else:
        raise ValueError(f"positive_rule must be one of {', '.join(POSITIVE_RULES)}, got {positive_rule!r}")
    is_positive = above & present
    is_negative = ~above & present
    valid = is_positive.any(dim=1) & is_negative.any(dim=1)
    return is_positive & valid[:, None], is_negative & valid[:, None], valid


def _contrastive_groups(
    scores: torch.Tensor,
    rewards: torch.Tensor,
    present: torch.Tensor,
    group_size: int,
    margin: float,
    tau: float,
    positive_threshold: float,
    positive_rule: str,
) -> _ContrastiveGroups:
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    s = scores.view(-1, group_size)
    positive, negative, valid = contrastive_sets(rewards, present, group_size, positive_threshold, positive_rule)

    positive_logit = (s - margin) / tau
    negative_logit = s / tau
    # logsumexp over the negatives only. Invalid groups get an all-zero row so that neither
    # the value nor its gradient is NaN (logsumexp of all -inf has a NaN gradient).
    neg_inf = torch.full_like(negative_logit, float("-inf"))
    masked = torch.where(negative, negative_logit, neg_inf)
    masked = torch.where(valid[:, None], masked, torch.zeros_like(masked))
    log_negative_mass = torch.where(valid, torch.logsumexp(masked, dim=1), torch.zeros_like(valid, dtype=s.dtype))
    return _ContrastiveGroups(
        positive=positive,
        negative=negative,
        valid=valid,
        n_positive=positive.sum(dim=1).clamp(min=1).to(s.dtype),
        n_valid=valid.sum().clamp(min=1).to(s.dtype),
        positive_logit=positive_logit,
        negative_logit=negative_logit,
        log_negative_mass=log_negative_mass,
    )


def count_valid_groups(
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    *,
    positive_threshold: float = POSITIVE_THRESHOLD,
    positive_rule: str = DEFAULT_POSITIVE_RULE,
    **_,
) -> float:
    """|V|: groups with at least one positive and one negative non-empty completion (ConSPO's normaliser)."""
    return float(contrastive_sets(rewards, mask.bool().any(-1), group_size, positive_threshold, positive_rule)[2].sum())


def conspo_loss(
    token_logps: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    *,
    margin: float = 0.0,
    tau: float = CONSPO_TAU,
    positive_threshold: float = POSITIVE_THRESHOLD,
    positive_rule: str = DEFAULT_POSITIVE_RULE,
    score: str = "mean",
) -> tuple[torch.Tensor, Metrics]:
    """ConSPO: group-wise InfoNCE over length-normalised sequence log-probabilities.

    With s_i = sequence_scores(token_logps, mask), P_g and N_g the positive and negative non-empty
    completions of group g (``contrastive_sets``: by default P_g = {i in g : |o_i| > 0, r_i above the
    group's mean reward}; ``positive_rule="threshold"``: r_i >= positive_threshold) and V the groups
    with P_g and N_g non-empty:

        l_i = -log( exp((s_i - m)/tau) / (exp((s_i - m)/tau) + sum_{j in N_g} exp(s_j/tau)) )
            = softplus( logsumexp_{j in N_g}(s_j/tau) - (s_i - m)/tau )
        L   = (1/|V|) * sum_{g in V} (1/|P_g|) * sum_{i in P_g} l_i          (L = 0 if V is empty)

    ``margin`` m handicaps each positive (a larger m demands a wider separation);
    ``tau`` is the temperature. Defaults are ours (docs/design.md section 2), chosen on the
    default task; the paper's values are not public.
    Zero-length completions are excluded. If no group is valid, the loss is 0 with a zero
    (not NaN) gradient.

    Metrics (floats): ``objective/loss``, ``conspo/valid_group_frac``, ``conspo/pos_score_mean``,
    ``conspo/neg_score_mean``, ``conspo/score_gap`` (mean over valid groups of mean positive
    minus mean negative score), ``conspo/pos_above_all_neg_frac`` (positives scoring above
    every negative of their group), ``conspo/pos_softmax_share`` (mean over positives of
    exp((s_i-m)/tau)/Z_i), ``conspo/margin``, ``conspo/tau``.
    """
    check_layout(mask, rewards, group_size)
    scores = sequence_scores(token_logps, mask, normalize_by_length=score == "mean")
    return conspo_loss_from_scores(
        scores,
        mask.bool().any(dim=-1),
        rewards,
        group_size,
        margin=margin,
        tau=tau,
        positive_threshold=positive_threshold,
        positive_rule=positive_rule,
    )


def conspo_loss_from_scores(
    scores: torch.Tensor,
    present: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    *,
    margin: float = 0.0,
    tau: float = CONSPO_TAU,
    positive_threshold: float = POSITIVE_THRESHOLD,
    positive_rule: str = DEFAULT_POSITIVE_RULE,
) -> tuple[torch.Tensor, Metrics]:
    """The ConSPO loss and metrics of ``conspo_loss`` from (B,) sequence scores already computed.

    ``present`` (B,) marks rows with a non-empty completion (others are excluded). Used where
    scores come from elsewhere: the coefficient route (no-grad scores gathered over micro-batches
    or processes) reports the batch's loss and metrics with it.
    """
    if scores.dim() != 1 or rewards.shape != scores.shape or present.shape != scores.shape:
        raise ValueError(
            f"scores, present and rewards must all be (B,), got {tuple(scores.shape)}, "
            f"{tuple(present.shape)} and {tuple(rewards.shape)}"
        )
    if scores.shape[0] % group_size:
        raise ValueError(f"{scores.shape[0]} rows is not a whole number of groups of {group_size}")
    groups = _contrastive_groups(scores, rewards, present, group_size, margin, tau, positive_threshold, positive_rule)
    per_positive = F.softplus(groups.log_negative_mass[:, None] - groups.positive_logit)
    per_positive = torch.where(groups.positive, per_positive, torch.zeros_like(per_positive))
    per_group = per_positive.sum(dim=1) / groups.n_positive
    loss = per_group.sum() / groups.n_valid
    metrics = _conspo_metrics(scores.detach(), groups, scores.shape[0] // group_size, loss.detach(), margin, tau)
    return loss, metrics


@torch.no_grad()
def _conspo_metrics(
    scores: torch.Tensor, groups: _ContrastiveGroups, n_groups: int, loss: torch.Tensor, margin: float, tau: float
) -> Metrics:
    s = scores.view(groups.positive.shape)
    n_valid = int(groups.valid.sum())
    metrics: Metrics = {
        "objective/loss": float(loss),
        "conspo/valid_group_frac": n_valid / max(n_groups, 1),
        "conspo/margin": float(margin),
        "conspo/tau": float(tau),
    }
    if n_valid == 0:
        # Nothing to contrast: report NaN-free zeros and let valid_group_frac say why.
        metrics.update(
            {
                "conspo/pos_score_mean": 0.0,
                "conspo/neg_score_mean": 0.0,
                "conspo/score_gap": 0.0,
                "conspo/pos_above_all_neg_frac": 0.0,
                "conspo/pos_softmax_share": 0.0,
            }
        )
        return metrics
    pos, neg = groups.positive, groups.negative
    zeros = torch.zeros_like(s)
    pos_mean_g = torch.where(pos, s, zeros).sum(1) / pos.sum(1).clamp(min=1)
    neg_mean_g = torch.where(neg, s, zeros).sum(1) / neg.sum(1).clamp(min=1)
    max_neg_g = torch.where(neg, s, torch.full_like(s, float("-inf"))).max(dim=1).values
    above = (s > max_neg_g[:, None]) & pos
    share = torch.sigmoid(groups.positive_logit - groups.log_negative_mass[:, None])
    n_pos = pos.sum()
    metrics.update(
        {
            "conspo/pos_score_mean": float(torch.where(pos, s, zeros).sum() / n_pos),
            "conspo/neg_score_mean": float(torch.where(neg, s, zeros).sum() / neg.sum()),
            "conspo/score_gap": float((pos_mean_g - neg_mean_g)[groups.valid].mean()),
            "conspo/pos_above_all_neg_frac": float(above.sum() / n_pos),
            "conspo/pos_softmax_share": float(torch.where(pos, share, zeros).sum() / n_pos),
        }
    )
    return metrics


@torch.no_grad()
def conspo_coefficients(
    scores: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    *,
    margin: float = 0.0,
    tau: float = CONSPO_TAU,
    positive_threshold: float = POSITIVE_THRESHOLD,
    positive_rule: str = DEFAULT_POSITIVE_RULE,
    present: torch.Tensor | None = None,
) -> torch.Tensor:
    """dL/ds_i of the ConSPO loss in closed form, (B,); zero outside valid groups.

        Z_i = exp((s_i - m)/tau) + sum_{j in N_g} exp(s_j/tau)
        positive i:  c_i = -(1 - exp((s_i - m)/tau)/Z_i) / (tau |V| |P_g|)
        negative j:  c_j =  (1/(tau |V| |P_g|)) * sum_{i in P_g} exp(s_j/tau)/Z_i

    so that grad_theta L = sum_i c_i * grad_theta s_i. The coefficients depend only on the
    (detached) scores of each group, which is what lets a group be split across
    micro-batches or processes: compute every score without gradient, gather, call this,
    then back-propagate the surrogate sum_i c_i * s_i(theta) piece by piece (docs/design.md section 4).

    ``present`` (bool, (B,)) marks rows with a non-empty completion; rows not present are
    excluded like in ``conspo_loss``. Default: all rows present. ``positive_threshold`` and
    ``positive_rule`` choose P_g and N_g as in ``contrastive_sets``.
    """
    if scores.dim() != 1 or rewards.shape != scores.shape:
        raise ValueError(f"scores and rewards must both be (B,), got {tuple(scores.shape)} and {tuple(rewards.shape)}")
    if scores.shape[0] % group_size != 0:
        raise ValueError(f"{scores.shape[0]} rows is not a whole number of groups of {group_size}")
    if present is None:
        present = torch.ones_like(scores, dtype=torch.bool)
    groups = _contrastive_groups(
        scores, rewards, present.bool(), group_size, margin, tau, positive_threshold, positive_rule
    )
    scale = 1.0 / (tau * groups.n_valid * groups.n_positive)  # (n,)
    # log Z_i for each positive i: logaddexp of its own logit and the negatives' mass.
    log_z = torch.logaddexp(groups.positive_logit, groups.log_negative_mass[:, None])  # (n, G)
    positive_share = torch.exp(groups.positive_logit - log_z)
    zeros = torch.zeros_like(log_z)
    c_pos = torch.where(groups.positive, -(1 - positive_share) * scale[:, None], zeros)
    # For negative j: sum over positives i of exp(s_j/tau - log Z_i): an (n, G_i, G_j) sum.
    log_z_pos = torch.where(groups.positive, log_z, torch.full_like(log_z, float("inf")))
    pairwise = torch.exp(groups.negative_logit[:, None, :] - log_z_pos[:, :, None]).sum(dim=1)
    c_neg = torch.where(groups.negative, pairwise * scale[:, None], zeros)
    return (c_pos + c_neg).reshape(-1)


def coefficient_surrogate(coefficients: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """sum_i c_i * s_i(theta): its gradient is the objective's gradient when c = dL/ds at the current scores.

    The value is not the loss (report the loss from ``conspo.score_objectives.score_coefficients``).
    """
    return (coefficients.to(scores.dtype) * scores).sum()


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Objective:
    """A named objective with a uniform call signature.

    ``loss(token_logps, old_token_logps, mask, rewards, group_size, **options)`` returns
    ``(loss, metrics)``. ``couples_group`` is True when a row's loss depends on the other
    rows of its group (ConSPO): such objectives need whole groups per micro-batch or the
    coefficient mode. ``uses_old_logps`` is False when the old log-probs are ignored.

    ``normalizer(mask, rewards, group_size, **options)`` is the count the loss divides by
    (rows, tokens or valid groups). A batch split into micro-batches of whole groups has
    loss = sum_k loss_k * normalizer_k / normalizer, which is how the trainer accumulates
    gradients exactly. None: no in-graph route for split batches (the coefficient route only).

    ``score_objective``: the name of its sequence-score form (``conspo.score_objectives``), which the
    coefficient route trains; None for the advantage-based objectives.
    """

    name: str
    loss: Callable[..., tuple[torch.Tensor, Metrics]]
    couples_group: bool
    uses_old_logps: bool
    normalizer: Callable[..., float] | None
    score_objective: str | None = None

    @property
    def option_defaults(self) -> dict[str, object]:
        """The loss's keyword options and their defaults, read from its signature (the one place they live)."""
        if self.score_objective is not None:  # a score objective's options are its score loss's
            from conspo.score_objectives import get_score_objective  # here: that module builds on this one

            return get_score_objective(self.score_objective).option_defaults
        return {
            name: p.default
            for name, p in inspect.signature(self.loss).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }

    def options(self, settings: dict) -> dict:
        """The keyword options of this loss taken from ``settings``; a value of None keeps the default.

        Lets a trainer pass every setting it has (tau, margin, eps_low, ...) without switching on
        the objective's name; settings this loss does not take are left out.
        """
        return {k: v for k, v in settings.items() if k in self.option_defaults and v is not None}


def _count_rows(mask, rewards, group_size, **_):
    return float(mask.shape[0])


def _count_tokens(mask, rewards, group_size, **_):
    return float(mask.bool().sum())


def score_objective_entry(name: str, *, uses_old_logps: bool, normalizer=None) -> Objective:
    """The uniform ``Objective`` of the score objective ``name``: its loss scores the rows, then applies the
    score loss (in-graph, for an unsplit batch and for metrics). It trains by the coefficient route, or, given
    the ``normalizer`` its loss divides by (ConSPO's valid groups), also in-graph on micro-batches of whole groups."""

    def loss(token_logps, old_token_logps, mask, rewards, group_size, **options):
        from conspo.score_objectives import get_score_objective, sequence_score  # here: it builds on this module

        objective = get_score_objective(name)
        scores = sequence_score(objective.score_kind(options), token_logps, old_token_logps, mask)
        return objective.loss(scores, rewards.to(scores.dtype), mask.bool().any(-1), group_size, **options)

    return Objective(
        name=name,
        loss=loss,
        couples_group=True,
        uses_old_logps=uses_old_logps,
        normalizer=normalizer,
        score_objective=name,
    )


OBJECTIVES: dict[str, Objective] = {
    "conspo": score_objective_entry("conspo", uses_old_logps=False, normalizer=count_valid_groups),
    "grpo": Objective(name="grpo", loss=grpo_loss, couples_group=False, uses_old_logps=True, normalizer=_count_rows),
    # Dr.GRPO divides by B * L_max with L_max fixed: per micro-batch the share is its rows.
    "dr_grpo": Objective(
        name="dr_grpo", loss=dr_grpo_loss, couples_group=False, uses_old_logps=True, normalizer=_count_rows
    ),
    "dapo": Objective(name="dapo", loss=dapo_loss, couples_group=False, uses_old_logps=True, normalizer=_count_tokens),
    "gspo": Objective(name="gspo", loss=gspo_loss, couples_group=False, uses_old_logps=True, normalizer=_count_rows),
    # sequence-score objectives (conspo.score_objectives): DisCO (arXiv 2505.12366), REAL (arXiv 2602.05630)
    "disco": score_objective_entry("disco", uses_old_logps=False),
    "disco_ratio": score_objective_entry("disco_ratio", uses_old_logps=True),
    "real": score_objective_entry("real", uses_old_logps=True),
}


def get_objective(name: str) -> Objective:
    """Look up an objective by name: a built-in one (``OBJECTIVES``) or a score objective registered with
    ``conspo.score_objectives.register_score_objective``."""
    if name in OBJECTIVES:
        return OBJECTIVES[name]
    from conspo.score_objectives import REGISTERED  # here: that module builds on this one

    if name in REGISTERED:
        return score_objective_entry(name, uses_old_logps=REGISTERED[name].uses_old_logps)
    valid = ", ".join([*OBJECTIVES, *REGISTERED])
    raise ValueError(f"unknown objective {name!r}; valid objectives are: {valid}") from None
