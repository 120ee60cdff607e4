"""Held-out evaluation during training: greedy accuracy on the task's held-out problems.

Both engines call ``evaluate_greedy`` before, during and after training; ``conspo eval``
(conspo/benchmark_eval.py) uses the same generation code (``conspo.rollout.generate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conspo.rollout import generate
from conspo.tasks import Problem, Task


@dataclass
class EvalResult:
    accuracy: float
    mean_length: float  # completion tokens, EOS included
    truncated_frac: float
    n: int


@torch.no_grad()
def evaluate_greedy(
    model, tokenizer, task: Task, problems: list[Problem], *, max_new_tokens: int, batch_size: int = 256
) -> tuple[EvalResult, list[str]]:
    """Greedy-decode every problem once (stopping as training's rollouts do) and score it with the task's verifier."""
    completions, lengths, truncated = [], [], []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        rollouts = generate(model, tokenizer, [p.prompt for p in chunk], max_new_tokens=max_new_tokens, greedy=True,
                            stop_strings=getattr(task, "stop_strings", ()))
        completions += rollouts.texts
        lengths += rollouts.completion_mask.sum(1).tolist()
        truncated += rollouts.truncated.tolist()
    scores = task.score(problems, completions)
    n = max(len(problems), 1)
    result = EvalResult(
        accuracy=sum(scores) / n,
        mean_length=sum(lengths) / n,
        truncated_frac=sum(truncated) / n,
        n=len(problems),
    )
    return result, completions
