"""Custom rewards: the calling convention and a checked batch scorer.

A reward is any callable ``reward_fn(prompt: str, completion: str, example: dict) -> float``.
``example`` is the data row the prompt came from (at least ``id``, ``problem``, ``answer``).
``score_with`` calls it once per completion and refuses bad values instead of letting them
reach the loss: an exception, None, a non-number or a NaN/inf stops the batch with a message
naming the example (index and ``id``) and the value, or, with ``errors="zero"``, scores 0 and
is counted.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping, Protocol, Sequence

__all__ = ["RewardError", "RewardFn", "math_reward_fn", "score_with"]


class RewardFn(Protocol):
    """``(prompt, completion, example) -> float`` (bools count as 1.0 / 0.0)."""

    def __call__(self, prompt: str, completion: str, example: Mapping[str, Any]) -> float: ...


class RewardError(ValueError):
    """A reward function raised or returned something that is not a finite number."""


def _fn_name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _where(i: int, example: Any) -> str:
    ex_id = example.get("id") if isinstance(example, Mapping) else getattr(example, "id", None)
    return f"example index {i}" + (f" (id={ex_id!r})" if ex_id is not None else "")


def _check_value(value: Any) -> float | str:
    """The value as a float, or a description of why it is not acceptable."""
    if value is None:
        return "returned None"
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, numbers.Real):
        # numpy / torch scalars that are not registered as numbers.Real
        item = getattr(value, "item", None)
        if callable(item) and getattr(value, "ndim", 0) == 0 and getattr(value, "size", 1) in (1, None):
            try:
                inner = item()
            except Exception:  # noqa: BLE001
                inner = None
            if isinstance(inner, (bool, numbers.Real)):
                return _check_value(inner)
        return f"returned a non-numeric value {value!r:.200} of type {type(value).__name__}"
    x = float(value)
    if not math.isfinite(x):
        return f"returned a non-finite value {x!r}"
    return x


def score_with(
    reward_fn: Callable[[str, str, Mapping[str, Any]], Any],
    prompts: Sequence[str],
    completions: Sequence[str],
    examples: Sequence[Mapping[str, Any]],
    *,
    errors: str = "raise",
) -> tuple[list[float], int]:
    """Score every completion with ``reward_fn``; return (scores, number of failed calls).

    Args:
        errors: "raise" (default): the first exception / bad value raises ``RewardError`` naming
            the example index, its ``id`` and the value. "zero": that completion scores 0.0 and
            is counted in the returned error count.
    """
    if errors not in ("raise", "zero"):
        raise ValueError(f"errors must be 'raise' or 'zero', got {errors!r}")
    if not (len(prompts) == len(completions) == len(examples)):
        raise ValueError(
            f"prompts, completions and examples must have the same length, got "
            f"{len(prompts)}, {len(completions)}, {len(examples)}"
        )
    name = _fn_name(reward_fn)
    scores: list[float] = []
    n_errors = 0
    for i, (prompt, completion, example) in enumerate(zip(prompts, completions, examples)):
        try:
            value = reward_fn(prompt, completion, example)
        except Exception as exc:  # noqa: BLE001 - reported with its context below
            problem: float | str = f"raised {type(exc).__name__}: {exc}"
            cause: BaseException | None = exc
        else:
            problem, cause = _check_value(value), None
        if isinstance(problem, float):
            scores.append(problem)
            continue
        if errors == "raise":
            raise RewardError(f"reward function {name} {problem} on {_where(i, example)}") from cause
        n_errors += 1
        scores.append(0.0)
    return scores, n_errors


def math_reward_fn(prompt: str, completion: str, example: Mapping[str, Any]) -> float:
    """``math_reward`` as a custom reward: compares ``completion`` with ``example["answer"]``."""
    from conspo.rewards.math import math_reward

    try:
        gold = example["answer"]
    except (KeyError, TypeError):
        raise KeyError("math_reward_fn needs the example's gold answer in example['answer']") from None
    return math_reward(completion, gold)
