"""No silent options: which objective, task, model and settings each option needs to have an effect.

``OPTION_NEEDS`` is the one table of the run's options: an option set away from its default where its
need is not met is refused by ``TrainConfig.validate()`` before any work, in one line naming the option
and what to do instead. The objective options (tau, margin_*, positive_*, score, score_tau) have their
rule beside their declaration, shared with TRL and verl (``ObjectiveOptions.unused_options``); engines
have theirs at each field (``conspo.config.engine_support``). tests/test_options.py walks both: every
option either changes the run or is refused.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Need:
    axis: str  # objective, task, model or reward (see axis_value)
    values: tuple[str, ...]  # the axis values under which the option has an effect
    instead: str  # what to do instead, for the refusal


_CLIPPED = Need(
    "objective",
    ("grpo", "dr_grpo", "dapo", "gspo"),
    "this objective clips no importance ratio: drop it, or use a clipped objective (grpo, dr_grpo, dapo, gspo)",
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


def axis_value(cfg, axis: str) -> str:
    """The value of ``axis`` in ``cfg`` that ``Need.values`` lists."""
    if axis == "model":
        return "tiny" if cfg.model == "tiny" else "yours"
    if axis == "reward":
        return "given" if cfg.reward else "none"
    return getattr(cfg, axis)


def refused_option(cfg, defaults: dict, task_defaults: dict) -> str | None:
    """The first option ``cfg`` sets away from its default (``defaults``, or the task's own in ``task_defaults``)
    whose need is not met, as a one-line message; None when every option set has an effect."""
    for name in ineffective_options(cfg, defaults, task_defaults):
        need = OPTION_NEEDS[name]
        now = {"reward": "no --reward", "model": f"model {cfg.model} (not the tiny base)"}.get(
            need.axis, f"{need.axis} {getattr(cfg, need.axis)}"
        )
        return f"invalid config: {name}={getattr(cfg, name)!r} has no effect with {now}: {need.instead}"
    return None


def ineffective_options(cfg, defaults: dict, task_defaults: dict) -> list[str]:
    """The options of ``OPTION_NEEDS`` that ``cfg`` sets away from their default where their need is not met."""
    return [
        name
        for name, need in OPTION_NEEDS.items()
        if getattr(cfg, name) not in (defaults[name], task_defaults.get(name, defaults[name]))
        and axis_value(cfg, need.axis) not in need.values
    ]


def without_ineffective(cfg, defaults: dict, task_defaults: dict) -> list[str]:
    """Reset, in place, every option ``cfg`` sets that has no effect there (what ``refused_option`` and
    ``ObjectiveOptions.unused_options`` refuse); return their names. For a resumed run's saved config: versions
    before these rules saved such options (e.g. train_data on the addition task), and they had no effect then
    either."""
    reset = ineffective_options(cfg, defaults, task_defaults)
    for name in reset:
        setattr(cfg, name, task_defaults.get(name, defaults[name]))
    for name, _ in cfg.unused_options(cfg.objective):
        setattr(cfg, name, defaults[name])
        reset.append(name)
    return reset
