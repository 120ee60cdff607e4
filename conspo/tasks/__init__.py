"""Tasks: where prompts and gold answers come from, and how completions are scored.

A task gives the trainer three things: a pool of training problems to sample from, a
fixed held-out set, and a batch scorer ``score(problems, completions) -> list[float]``.
A task may also offer ``stop_strings`` (strings that end a completion, e.g. the ``plain`` math
template's end of line) and ``last_score_metrics() -> dict`` (the math task: ``reward/no_answer_frac``,
``reward/timeout_frac``, ...), which the trainer logs with each step.
A task that the tiny model can be warmed up on also offers ``solution(problem) -> str``, the
completion the supervised warm-up teaches (the answer itself when absent).
Built-in: ``addition`` (the CPU default, synthetic and exactly verifiable), ``chain`` (running
sums written out as worked chains of 11-64 tokens, final answer verified) and ``math`` (a math
training set and a benchmark, rewards from ``conspo.rewards.MathVerifier``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Problem:
    """One prompt with its gold answer. ``prompt`` is the exact text given to the model."""

    id: str
    prompt: str
    answer: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


class Task(Protocol):
    name: str
    max_new_tokens: int

    def train_problems(self) -> list[Problem]: ...

    def heldout_problems(self) -> list[Problem]: ...

    def score(self, problems: list[Problem], completions: list[str]) -> list[float]: ...


def get_task(name: str, **options) -> Task:
    """Build a task by name. Unknown names list the valid ones."""
    if name == "addition":
        from conspo.tasks.arithmetic import AdditionTask

        return AdditionTask(**{k: v for k, v in options.items() if k in ("digits", "heldout_size", "seed")})
    if name == "chain":
        from conspo.tasks.chain import ChainTask

        return ChainTask(**{k: v for k, v in options.items() if k in ("min_terms", "max_terms", "largest_term", "heldout_size", "seed")})
    if name == "math":
        from conspo.tasks.math_task import MathTask

        return MathTask(**options)
    raise ValueError(f"unknown task {name!r}; valid tasks are: addition, chain, math")
