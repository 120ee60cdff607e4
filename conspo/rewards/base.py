"""Rewards, one interface: TRL's reward-function signature, checked.

A reward is any function ``reward(prompts, completions, **columns) -> list[float | None]``, called once
per batch, exactly as TRL's ``GRPOTrainer`` calls its ``reward_funcs``: ``prompts`` and ``completions``
are strings, or lists of chat messages for conversational data (then a completion is
``[{"role": "assistant", "content": text}]``); ``completion_ids`` holds the token ids; every other
column of the data set arrives as a keyword holding one value per completion (``answer=[...]``), with
``trainer_state``, ``log_extra`` and ``log_metric`` as in TRL. ``None`` means no score from this reward
for that completion; several rewards are summed with their weights over the ones that scored
(``conspo.reward_shaping.combine_rewards``, TRL's nan-sum). ``async def`` rewards are awaited.

The built-in tasks' verifiers are rewards of this shape (``conspo.tasks``), and so is ``--reward``.
``RewardSet.score`` refuses bad values instead of letting them reach the loss: an exception, a
non-number or a NaN/inf stops the run with a message naming the reward, the row (index and ``id``)
and the value, or, with ``errors="zero"``, scores 0 and is counted.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import math
import numbers
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from conspo.objective_options import DEFAULT_POSITIVE_RULE, POSITIVE_THRESHOLD

__all__ = ["REWARD_ERRORS", "RewardError", "RewardScores", "RewardSet", "load_reward", "reward_name"]

#: What a reward that raises or returns a non-finite value does: stop the run, or score 0 and be counted.
REWARD_ERRORS = ("raise", "zero")


class RewardError(ValueError):
    """A reward function raised or returned something that is not a finite number or None."""


def reward_name(fn: Callable) -> str:
    """The name TRL logs a reward under (``rewards/<name>/mean``)."""
    return getattr(fn, "__name__", None) or type(fn).__name__


def load_reward(spec: str) -> Callable:
    """``path/to/file.py:func`` (the user's own file, executed as a module) or ``package.module:func``.

    Raises ValueError in one line naming what is missing.
    """
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name.isidentifier():
        raise ValueError(f"--reward {spec!r}: expected FILE.py:FUNCTION or module:function (e.g. my_reward.py:score)")
    if source.endswith(".py"):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ValueError(f"--reward {spec!r}: no such file {path}")
        module_name = f"conspo_user_reward_{abs(hash(str(path.resolve())))}"
        if module_name not in sys.modules:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            try:
                loader_spec.loader.exec_module(module)
            except Exception as e:  # noqa: BLE001 - the user's file: say which and why, in one line
                raise ValueError(f"--reward {spec!r}: importing {path} failed: {type(e).__name__}: {e}") from e
            sys.modules[module_name] = module
        module = sys.modules[module_name]
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as e:
            raise ValueError(f"--reward {spec!r}: cannot import module {source!r}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"--reward {spec!r}: {source} has no function {name!r}")
    return fn


def _check_value(value: Any) -> float | str | None:
    """The value as a float, None (no score), or a description of why it is not acceptable."""
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, numbers.Real):
        item = getattr(value, "item", None)  # numpy / torch scalars
        if callable(item) and getattr(value, "ndim", 0) == 0:
            try:
                inner = item()
            except Exception:  # noqa: BLE001
                inner = None
            if isinstance(inner, (bool, numbers.Real)):
                return _check_value(inner)
        return f"returned a non-numeric value {value!r:.200} of type {type(value).__name__}"
    x = float(value)
    if not math.isfinite(x):
        return f"returned a non-finite value {x!r} (return None for 'no score')"
    return x


def _call(fn: Callable, kwargs: dict) -> Any:
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)):
        return asyncio.run(fn(**kwargs))
    out = fn(**kwargs)
    return asyncio.run(out) if inspect.isawaitable(out) else out


@dataclass
class RewardScores:
    """One batch scored by a ``RewardSet``."""

    per_reward: list[list[float]]  # [K][B]; NaN: that reward gave no score
    names: list[str]
    errors: list[int]  # per reward: completions that raised or returned a bad value (errors="zero")
    metrics: dict[str, float] = field(default_factory=dict)  # what the rewards logged with log_metric

    def tensor(self):
        """(B, K) float64 tensor of ``per_reward``."""
        import torch

        return torch.tensor(self.per_reward, dtype=torch.float64).T.reshape(-1, len(self.names))


class RewardSet:
    """The run's reward functions and their weights, called with TRL's convention."""

    def __init__(self, funcs: Sequence[Callable], weights: Sequence[float] | None = None, *, errors: str = "raise"):
        if not funcs:
            raise ValueError("a RewardSet needs at least one reward function")
        if errors not in REWARD_ERRORS:
            raise ValueError(f"errors must be one of {', '.join(REWARD_ERRORS)}, got {errors!r}")
        if weights is not None and len(weights) != len(funcs):
            raise ValueError(f"{len(weights)} reward weights for {len(funcs)} reward functions: give one weight each")
        self.funcs = list(funcs)
        self.weights = [1.0] * len(funcs) if weights is None else [float(w) for w in weights]
        self.errors = errors
        self.names = [reward_name(f) for f in funcs]

    def score(
        self,
        prompts: Sequence,
        completions: Sequence,
        columns: Sequence[Mapping[str, Any]],
        *,
        completion_ids: Sequence[Sequence[int]] | None = None,
        trainer_state: Any = None,
    ) -> RewardScores:
        """Call every reward on the batch; ``columns[i]`` is row i's data (every column but the prompt)."""
        n = len(completions)
        if len(prompts) != n or len(columns) != n:
            raise ValueError(
                f"prompts, completions and columns must have the same length, got {len(prompts)}, {n}, {len(columns)}"
            )
        keys = list(columns[0]) if n else []
        metrics: dict[str, float] = {}

        def log_metric(name, value):
            metrics[str(name)] = float(value)

        common = dict(
            completion_ids=completion_ids,
            trainer_state=trainer_state,
            log_metric=log_metric,
            log_extra=lambda *a, **k: None,
        )
        per_reward, errors = [], []
        for fn, name in zip(self.funcs, self.names):

            def batch(rows):
                return dict(
                    prompts=[prompts[i] for i in rows],
                    completions=[completions[i] for i in rows],
                    **{k: [columns[i].get(k) for i in rows] for k in keys},
                    **{
                        **common,
                        "completion_ids": None if completion_ids is None else [completion_ids[i] for i in rows],
                    },
                )

            values, n_errors = self._score_one(fn, name, batch, n, columns)
            per_reward.append(values)
            errors.append(n_errors)
        return RewardScores(per_reward=per_reward, names=list(self.names), errors=errors, metrics=metrics)

    def _score_one(self, fn, name, batch, n, columns) -> tuple[list[float], int]:
        try:
            out = _call(fn, batch(range(n)))
        except Exception:  # noqa: BLE001 - find the row: call it one completion at a time
            out = None
        if out is not None and (not isinstance(out, Sequence) or isinstance(out, (str, bytes)) or len(out) != n):
            got = f"{len(out)} values" if isinstance(out, Sequence) else f"a {type(out).__name__}"
            raise RewardError(
                f"reward {name} returned {got} for {n} completions: return a list with one float "
                "(or None) per completion"
            )
        values, n_errors = [], 0
        for i in range(n):
            if out is not None:
                checked, cause = _check_value(out[i]), None
            else:
                try:
                    one = _call(fn, batch([i]))
                    checked, cause = _check_value(one[0]), None
                except Exception as e:  # noqa: BLE001 - reported with its row below
                    checked, cause = f"raised {type(e).__name__}: {e}", e
            if checked is None or isinstance(checked, float):
                values.append(math.nan if checked is None else checked)
                continue
            if self.errors == "raise":
                row_id = columns[i].get("id") if isinstance(columns[i], Mapping) else None
                where = f"row {i}" + (f" (id={row_id!r})" if row_id is not None else "")
                raise RewardError(
                    f"reward {name} {checked} on {where} of the batch; fix the reward, or pass "
                    "--reward-errors zero to score such completions 0 and count them"
                ) from cause
            n_errors += 1
            values.append(0.0)
        return values, n_errors


class SilentRewardWatch:
    """Warns once, per reward, when a reward's differences within groups changed no update in the first
    ``after`` steps (``conspo.reward_shaping.rewards_that_move_the_update``): e.g. a format bonus that never moves
    a completion across the threshold rule's bar, or a reward that scores every completion of a group alike."""

    def __init__(self, names: Sequence[str], *, after: int = 10):
        self.names, self.after = list(names), after
        self.moved = [False] * len(self.names)
        self.varied = [False] * len(self.names)  # differed within some group at all
        self.steps, self.done = 0, not after

    def update(
        self,
        per_reward,
        present,
        group_size: int,
        *,
        weights=None,
        couples_group: bool = True,
        positive_rule: str = DEFAULT_POSITIVE_RULE,
        positive_threshold: float = POSITIVE_THRESHOLD,
    ) -> list[str]:
        """Record one batch ((B, K) rewards); return the warnings due now (each at most once)."""
        if self.done:
            return []
        from conspo.reward_shaping import rewards_that_move_the_update

        moved = rewards_that_move_the_update(
            per_reward,
            present,
            group_size,
            weights=weights,
            couples_group=couples_group,
            positive_rule=positive_rule,
            positive_threshold=positive_threshold,
        )
        varied = rewards_that_move_the_update(per_reward, present, group_size, weights=weights, couples_group=False)
        self.moved = [a or b for a, b in zip(self.moved, moved)]
        self.varied = [a or b for a, b in zip(self.varied, varied)]
        self.steps += 1
        if self.steps < self.after:
            return []
        self.done = True
        alike = "it scored the completions of every group alike (or not at all)"
        across = (
            f"under positive_rule=threshold a completion is positive when its total reward is >= "
            f"{positive_threshold:g}, and this reward never moved one across that bar: use positive_rule "
            "group_mean (the default), or give it a larger weight"
        )
        return [
            f"WARNING reward {name}: its differences within groups changed no update in the first {self.steps} "
            f"steps: {across if varied and couples_group and positive_rule == 'threshold' else alike}"
            for name, m, varied in zip(self.names, self.moved, self.varied)
            if not m
        ]
