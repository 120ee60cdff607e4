"""No silent options: which objective, task, model and settings each option needs to have an effect.

``OPTION_NEEDS`` is the one table: an option set away from its default where its need is not met is
refused by ``TrainConfig.validate()`` before any work, in one line naming the option and what to do
instead (engines have their own table, ``conspo.config.ENGINE_SUPPORT``). tests/test_options.py walks
it: every option either changes the run or is refused.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Need:
    axis: str  # objective, task, model, margin_schedule, positive_rule or reward (see axis_value)
    values: tuple[str, ...]  # the axis values under which the option has an effect
    instead: str  # what to do instead, for the refusal


_CONSPO = Need("objective", ("conspo",), "it is a ConSPO option: use --objective conspo, or drop it")
_SCORE_TAU = Need(
    "objective",
    ("disco", "disco_ratio", "real"),
    "it is the temperature of disco, disco_ratio and real: use one of them, or --tau for conspo",
)
_CLIPPED = Need(
    "objective",
    ("grpo", "dr_grpo", "dapo", "gspo"),
    "this objective clips no importance ratio: drop it, or use a clipped objective (grpo, dr_grpo, dapo, gspo)",
)
_CURRICULUM = Need(
    "margin_schedule",
    ("curriculum",),
    "the margin schedule is constant (margin_start throughout): add --margin-schedule linear, cosine "
    "or step for a curriculum from --margin-start to --margin-end, or set --margin-start for a constant margin",
)
_DATA = Need(
    "task",
    ("math", "data"),
    "only --task math reads a problem set, or --train-data with --reward (your "
    "data, your reward): add --task math, or --reward FILE.py:FUNC",
)
_MATH = Need(
    "task",
    ("math",),
    "only the math task builds math prompts and judges math answers: use --task math, "
    "or drop it (with --reward your own reward judges the completions)",
)
_TINY = Need(
    "model",
    ("tiny",),
    "it shapes the supervised warm-up of the built-in tiny base, which a model of your own does not get: drop it",
)
_REWARD = Need(
    "reward", ("given",), "it applies to the rewards given with --reward: add --reward FILE.py:FUNC, or drop it"
)

OPTION_NEEDS: dict[str, Need] = {
    "tau": _CONSPO,
    "margin_schedule": _CONSPO,
    "margin_start": _CONSPO,
    "margin_end": _CONSPO,
    "margin_horizon": _CONSPO,
    "positive_rule": _CONSPO,
    "positive_threshold": _CONSPO,
    "score": _CONSPO,
    "score_tau": _SCORE_TAU,
    "eps_low": _CLIPPED,
    "eps_high": _CLIPPED,
    "train_data": _DATA,
    "eval_data": _DATA,
    "data_dir": _DATA,
    "prompt_template": _MATH,
    "answer_extraction": _MATH,
    "decimal_match": _MATH,
    "reward_audit_every": _MATH,
    "prompt_field": Need(
        "task", ("data",), "only --train-data with --reward (task data) reads a prompt column: drop it, or add --reward"
    ),
    # cache_dir is not here: a place, not a setting (scripts pass it whatever the model)
    **{
        name: _TINY
        for name in ("sft_steps", "sft_seed", "sft_lr", "sft_decay_steps", "sft_batch_size", "sft_stop_accuracy")
    },
    "reward_weights": _REWARD,
    "reward_errors": _REWARD,
}

#: Options that need a second one on top of their axis (checked after OPTION_NEEDS).
MARGIN_CURRICULUM_OPTIONS = ("margin_end", "margin_horizon")
_THRESHOLD_RULE = Need(
    "positive_rule",
    ("threshold",),
    "it is only used by positive_rule=threshold; group_mean picks "
    "positives by the group's mean reward: add --positive-rule "
    "threshold, or leave positive_threshold at its default",
)
SECOND_NEEDS: dict[str, Need] = {
    **{name: _CURRICULUM for name in MARGIN_CURRICULUM_OPTIONS},
    "positive_threshold": _THRESHOLD_RULE,
}


def axis_value(cfg, axis: str) -> str:
    """The value of ``axis`` in ``cfg`` that ``Need.values`` lists."""
    if axis == "model":
        return "tiny" if cfg.model == "tiny" else "yours"
    if axis == "margin_schedule":
        return "constant" if cfg.margin_schedule == "constant" else "curriculum"
    if axis == "reward":
        return "given" if cfg.reward else "none"
    return getattr(cfg, axis)


def refused_option(cfg, defaults: dict, task_defaults: dict) -> str | None:
    """The first option ``cfg`` sets away from its default (``defaults``, or the task's own in ``task_defaults``)
    whose need is not met, as a one-line message; None when every option set has an effect."""
    checks = [(name, need) for name, need in OPTION_NEEDS.items()]
    checks += list(SECOND_NEEDS.items())
    for name, need in checks:
        value = getattr(cfg, name)
        if (
            value in (defaults[name], task_defaults.get(name, defaults[name]))
            or axis_value(cfg, need.axis) in need.values
        ):
            continue
        now = {"reward": "no --reward", "model": f"model {cfg.model} (not the tiny base)"}.get(
            need.axis, f"{need.axis} {getattr(cfg, need.axis)}"
        )
        return f"invalid config: {name}={getattr(cfg, name)!r} has no effect with {now}: {need.instead}"
    if cfg.objective == "conspo" and cfg.margin_schedule != "constant" and cfg.margin_start == cfg.margin_end:
        return (
            f"invalid config: margin_schedule={cfg.margin_schedule!r} has no effect with margin_start = margin_end "
            f"= {cfg.margin_end}: set --margin-end (the margin reached at --margin-horizon), or drop the schedule"
        )
    return None


def without_ineffective(cfg, defaults: dict, task_defaults: dict) -> list[str]:
    """Reset, in place, every option ``cfg`` sets that has no effect there (what ``refused_option`` would refuse);
    return their names. For a resumed run's saved config: versions before this table saved such options (e.g.
    train_data on the addition task), and they had no effect then either."""
    reset = []
    for name, need in [*OPTION_NEEDS.items(), *SECOND_NEEDS.items()]:
        value = getattr(cfg, name)
        if (
            value in (defaults[name], task_defaults.get(name, defaults[name]))
            or axis_value(cfg, need.axis) in need.values
        ):
            continue
        setattr(cfg, name, task_defaults.get(name, defaults[name]))
        reset.append(name)
    return reset
