"""Held-out evaluation during training: greedy accuracy on the task's held-out problems.

Both engines call ``evaluate_greedy`` before, during and after training; ``conspo eval``
(conspo/benchmark_eval.py) uses the same generation code (``conspo.rollout.generate``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from conspo.objective_options import POSITIVE_THRESHOLD
from conspo.rollout import generate
from conspo.tasks import Problem, Task


@dataclass
class EvalResult:
    accuracy: float
    mean_length: float  # completion tokens, EOS included
    truncated_frac: float
    n: int
    #: with the user's rewards: heldout/positive_frac (the threshold rule on the total reward: a held-out completion has
    #: no group to compare with) and heldout/rewards/<name>/mean for each reward
    reward_metrics: dict = field(default_factory=dict)


@torch.no_grad()
def evaluate_greedy(
    model,
    tokenizer,
    task: Task,
    problems: list[Problem],
    *,
    max_new_tokens: int,
    batch_size: int = 256,
    rewards=None,
    positive_threshold: float = POSITIVE_THRESHOLD,
) -> tuple[EvalResult, list[str]]:
    """Greedy-decode every problem once (stopping as training's rollouts do) and score it with the task's
    verifier, or with ``rewards`` (a ``RewardSet``: accuracy is then the mean total reward, unscored
    completions left out)."""
    completions, lengths, truncated = [], [], []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        rollouts = generate(
            model,
            tokenizer,
            [p.prompt for p in chunk],
            max_new_tokens=max_new_tokens,
            greedy=True,
            stop_strings=getattr(task, "stop_strings", ()),
        )
        completions += rollouts.texts
        lengths += rollouts.completion_mask.sum(1).tolist()
        truncated += rollouts.truncated.tolist()
    n = max(len(problems), 1)
    reward_metrics = {}
    if rewards is None:
        scores = task.score(problems, completions)
        accuracy = sum(scores) / n
    else:
        accuracy, reward_metrics = _score_with_rewards(rewards, problems, completions, positive_threshold)
    result = EvalResult(
        accuracy=accuracy,
        mean_length=sum(lengths) / n,
        truncated_frac=sum(truncated) / n,
        n=len(problems),
        reward_metrics=reward_metrics,
    )
    return result, completions


def _score_with_rewards(rewards, problems, completions, positive_threshold) -> tuple[float, dict]:
    from conspo.objectives import at_threshold
    from conspo.reward_shaping import combine_rewards
    from conspo.tasks import reward_inputs

    scored = rewards.score(*reward_inputs(problems, completions))
    per_reward = scored.tensor()
    total = combine_rewards(per_reward, torch.tensor(rewards.weights, dtype=per_reward.dtype))
    kept = total[~torch.isnan(total)]
    metrics = {
        "heldout/positive_frac": float(at_threshold(kept, positive_threshold).double().mean())
        if len(kept)
        else math.nan
    }
    for k, name in enumerate(scored.names):
        column = per_reward[:, k][~torch.isnan(per_reward[:, k])]
        metrics[f"heldout/rewards/{name}/mean"] = float(column.mean()) if len(column) else math.nan
    return (float(kept.mean()) if len(kept) else 0.0), metrics
