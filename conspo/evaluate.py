"""Held-out evaluation: greedy accuracy, avg@k and unbiased pass@k.

The trainer's periodic held-out evaluation calls ``evaluate_greedy``; benchmark
evaluation uses the same generation code (``conspo.rollout.generate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from conspo.rollout import generate
from conspo.tasks import Problem, Task


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021, "Evaluating LLMs trained on code"):

        pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


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
    """Greedy-decode every problem once and score it with the task's verifier."""
    completions, lengths, truncated = [], [], []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        rollouts = generate(model, tokenizer, [p.prompt for p in chunk], max_new_tokens=max_new_tokens, greedy=True)
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
