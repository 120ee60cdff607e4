"""Margin schedules for ConSPO's curriculum (coarse ordering early, wider separation late).

``margin_schedule(kind, start=..., end=..., horizon=...)`` returns ``f(step) -> float`` where
``step`` counts optimizer steps from 0. Every kind starts at ``start``, reaches ``end`` at
``step == horizon`` and stays there (clamped) afterwards:

* ``constant``: m(t) = start                                    (end and horizon ignored)
* ``linear``:   m(t) = start + (end - start) * u,               u = min(t, horizon) / horizon
* ``cosine``:   m(t) = start + (end - start) * (1 - cos(pi u)) / 2
* ``step``:     m(t) = start + (end - start) * floor(u * stages) / (stages - 1), capped at end:
                ``stages`` equal plateaus from start to end (stages=2: start for the first half
                of the horizon, end from then on).

The paper states that the margin follows a curriculum; its shape and values are not public,
so all of these are options (docs/design.md section 2). Both engines build theirs with
``margin_curriculum``.
"""

from __future__ import annotations

import math
from typing import Callable

MARGIN_SCHEDULES = ("constant", "linear", "cosine", "step")


def margin_schedule(
    kind: str,
    *,
    start: float = 0.0,
    end: float | None = None,
    horizon: int | None = None,
    stages: int = 2,
) -> Callable[[int], float]:
    """Build a margin schedule; see the module docstring for the formulas."""
    if kind not in MARGIN_SCHEDULES:
        raise ValueError(f"unknown margin schedule {kind!r}; valid kinds are: {', '.join(MARGIN_SCHEDULES)}")
    start = _finite("start", start)
    if kind == "constant":
        return lambda step: (_check_step(step), start)[1]
    if end is None:
        raise ValueError(f"margin schedule {kind!r} needs an `end` value (the margin reached at `horizon`)")
    end = _finite("end", end)
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"margin schedule {kind!r} needs `horizon` >= 1 optimizer steps, got {horizon!r}")
    if kind == "step" and (isinstance(stages, bool) or not isinstance(stages, int) or stages < 2):
        raise ValueError(f"margin schedule 'step' needs `stages` >= 2, got {stages!r}")

    def progress(step: int) -> float:
        return min(_check_step(step), horizon) / horizon

    if kind == "linear":
        return lambda step: start + (end - start) * progress(step)
    if kind == "cosine":
        return lambda step: start + (end - start) * (1 - math.cos(math.pi * progress(step))) / 2
    # step
    return lambda step: start + (end - start) * min(math.floor(progress(step) * stages), stages - 1) / (stages - 1)


def _finite(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"margin `{name}` must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"margin `{name}` must be finite, got {value!r}")
    return value


def _check_step(step: int) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"schedule step must be a non-negative int, got {step!r}")
    return step


def margin_curriculum(kind: str, *, start: float, end: float, horizon: int, total_steps: int) -> Callable[[int], float]:
    """The run's margin schedule from its options: ``horizon`` 0 means the whole run (``total_steps``),
    and ``constant`` ignores ``end``. Shared by the native trainer and the TRL plug-in."""
    if kind == "constant":
        return margin_schedule(kind, start=start)
    return margin_schedule(kind, start=start, end=end, horizon=horizon or max(int(total_steps), 1))
