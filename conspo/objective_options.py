"""The options of ConSPO and the other sequence-score objectives, declared once for every engine.

``ObjectiveOptions`` holds each option's one name, default and help text. The native ``TrainConfig``,
TRL's ``ConSPOConfig`` and verl's ``ConSPOPolicyLossConfig`` all inherit it, so an option cannot be
spelt, defaulted or checked differently in one engine. ``option_problem`` is the one check (values,
and options set where they have no effect); each engine only words the error its own way.
``loss_options`` turns the options into the keyword arguments of the objective's loss, and
``margin_at`` gives the margin curriculum's value at an optimizer step.

No torch at import: ``conspo --help`` reads these fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal

from conspo.schedules import MARGIN_SCHEDULES, margin_curriculum

#: ConSPO's temperature (ours: the paper's value is not public; docs/design.md section 2).
CONSPO_TAU = 0.3
#: positive_rule ``threshold``: a completion is positive when its reward is at least this.
POSITIVE_THRESHOLD = 0.5
#: How the positives of a group are chosen (``conspo.objectives.contrastive_sets``).
POSITIVE_RULES = ("threshold", "group_mean")
#: The default rule: the same sets as ``threshold`` at any threshold in (0, 1] for 0/1 rewards (tested
#: exhaustively), and a signal for graded rewards (docs/design.md section 2).
DEFAULT_POSITIVE_RULE = "group_mean"
#: ConSPO's sequence score: the mean (length-normalised, the paper's) or the sum of the token log-probs.
CONSPO_SCORES = ("mean", "sum")

#: The options only ConSPO's loss takes; every other objective must leave them at their defaults.
CONSPO_ONLY = (
    "tau",
    "margin_schedule",
    "margin_start",
    "margin_end",
    "margin_horizon",
    "positive_threshold",
    "positive_rule",
    "score",
)


@dataclass
class ObjectiveOptions:
    """ConSPO's options and the temperature of the other sequence-score objectives."""

    #: Where ``conspo train --help`` lists these fields.
    HELP_SECTION = "objective options"

    tau: float = field(
        default=CONSPO_TAU, metadata={"help": "ConSPO temperature (ours; the paper's value is not public)."}
    )
    margin_schedule: Literal["constant", "linear", "cosine", "step"] = field(
        default="constant",
        metadata={"help": "ConSPO margin curriculum: constant, linear, cosine or step (conspo.schedules)."},
    )
    margin_start: float = field(default=0.0, metadata={"help": "Margin at step 0."})
    margin_end: float = field(
        default=0.0, metadata={"help": "Margin reached at margin_horizon (with a margin_schedule other than constant)."}
    )
    margin_horizon: int = field(
        default=0, metadata={"help": "Optimizer steps to reach margin_end; 0: the whole run (all training steps)."}
    )
    positive_threshold: float = field(
        default=POSITIVE_THRESHOLD,
        metadata={
            "help": "positive_rule `threshold`: a completion is positive when its reward is >= this. In the native "
            "engine also the bar of held-out `positive_frac` (a held-out completion has no group)."
        },
    )
    positive_rule: Literal["threshold", "group_mean"] = field(
        default=DEFAULT_POSITIVE_RULE,
        metadata={
            "help": "How ConSPO picks a group's positives: `group_mean` (reward strictly above the mean reward of its "
            "group: for 0/1 rewards exactly the completions scoring 1, and it works for graded rewards; a group "
            "whose rewards are all equal has no positive) or `threshold` (reward at least positive_threshold)."
        },
    )
    score: Literal["mean", "sum"] = field(
        default="mean",
        metadata={
            "help": "ConSPO's sequence score: `mean` token log-prob (length-normalised, the paper's) or `sum` "
            "(an ablation)."
        },
    )
    score_tau: float | None = field(
        default=None,
        metadata={
            "help": "Temperature of the sequence-score objectives other than conspo (disco, disco_ratio, real, or a "
            "registered one that takes a tau); None: the objective's published default (DisCO 10 with the "
            "log-likelihood score, 1 with the likelihood ratio; REAL 0.5)."
        },
    )

    def option_problem(self, objective: str) -> tuple[str, str] | None:
        """(option, message) for the first option with an invalid value or set where ``objective`` does not use it;
        None when every option is fine. The message starts ``name=value``: each engine puts its own prefix on it
        (``invalid config: ``, ``ConSPOConfig.``, ``policy_loss.``)."""
        for name, ok, why in (
            ("tau", _positive(self.tau), "must be a finite number > 0"),
            ("score_tau", self.score_tau is None or _positive(self.score_tau), "must be None or a finite number > 0"),
            ("margin_start", _finite(self.margin_start), "must be a finite number"),
            ("margin_end", _finite(self.margin_end), "must be a finite number"),
            ("margin_horizon", _whole(self.margin_horizon), "must be an integer >= 0 (0: the whole run)"),
            ("positive_threshold", _finite(self.positive_threshold), "must be a finite number"),
            ("margin_schedule", self.margin_schedule in MARGIN_SCHEDULES, _one_of(MARGIN_SCHEDULES)),
            ("positive_rule", self.positive_rule in POSITIVE_RULES, _one_of(POSITIVE_RULES)),
            ("score", self.score in CONSPO_SCORES, _one_of(CONSPO_SCORES)),
        ):
            if not ok:
                return name, f"{name}={getattr(self, name)!r}: {why}"
        unused = self.unused_options(objective)
        return unused[0] if unused else None

    def unused_options(self, objective: str) -> list[tuple[str, str]]:
        """(option, message) for each option set away from its default that ``objective`` does not use (a run with
        it would silently differ from what was asked); the message starts ``name=value``."""
        unused = []
        for f in fields(ObjectiveOptions):
            value = getattr(self, f.name)
            why = None if value == f.default else self._no_effect(f.name, objective, f.default)
            if why:
                unused.append((f.name, f"{f.name}={value!r} has no effect with {why}"))
        return unused

    def _no_effect(self, name: str, objective: str, default) -> str | None:
        """Why option ``name``, set away from ``default``, has no effect under ``objective``; None if it has one."""
        if name in CONSPO_ONLY and objective != "conspo":
            return (
                f"objective {objective}: it is a ConSPO option; use objective conspo, or leave it at its default "
                f"({default!r})"
            )
        if name == "score_tau" and not _takes_score_tau(objective):
            return (
                f"objective {objective}: it is the temperature of the sequence-score objectives other than conspo "
                "(disco, disco_ratio, real)"
                + ("; conspo's is tau" if objective == "conspo" else "")
                + ": leave it at None"
            )
        if name in ("margin_end", "margin_horizon") and self.margin_schedule == "constant":
            return (
                "margin_schedule constant (margin_start throughout): set margin_schedule linear, cosine or step for a "
                "curriculum from margin_start to margin_end, or set margin_start for a constant margin"
            )
        if name == "positive_threshold" and self.positive_rule != "threshold":
            return (
                f"positive_rule {self.positive_rule}, which picks positives by the group's mean reward: set "
                f"positive_rule threshold, or leave positive_threshold at its default ({default})"
            )
        if name == "margin_schedule" and self.margin_start == self.margin_end:
            return (
                f"margin_start = margin_end = {self.margin_end}: set margin_end (the margin reached at "
                "margin_horizon), or drop the schedule"
            )
        return None

    def loss_options(self, objective: str, margin: float = 0.0) -> dict:
        """The keyword options of ``objective``'s loss: ConSPO's at ``margin``; ``score_tau`` as the ``tau`` of the
        other sequence-score objectives (none: their default); nothing for an objective that takes none of these."""
        if objective == "conspo":
            return dict(
                margin=margin,
                tau=self.tau,
                positive_threshold=self.positive_threshold,
                positive_rule=self.positive_rule,
                score=self.score,
            )
        return {"tau": self.score_tau} if self.score_tau is not None and _takes_score_tau(objective) else {}

    def margin_at(self, step: int, total_steps: int) -> float:
        """ConSPO's margin for the batch trained after ``step`` optimizer steps of ``total_steps``."""
        schedule = margin_curriculum(
            self.margin_schedule,
            start=self.margin_start,
            end=self.margin_end,
            horizon=self.margin_horizon,
            total_steps=total_steps,
        )
        return schedule(max(int(step), 0))


def _takes_score_tau(objective: str) -> bool:
    """A sequence-score objective other than conspo whose loss takes a ``tau``."""
    if objective == "conspo":
        return False
    from conspo.score_objectives import REGISTERED, SCORE_OBJECTIVES  # here: torch only when checking

    found = SCORE_OBJECTIVES.get(objective) or REGISTERED.get(objective)
    return found is not None and "tau" in found.option_defaults


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value) -> bool:
    return _finite(value) and value > 0


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _one_of(choices) -> str:
    return f"must be one of {', '.join(choices)}"
