"""Rewards: verifiable math answers (with hard time limits) and custom reward functions.

* ``math_reward(completion, gold)`` / ``MathVerifier(...).score(completions, golds)``: 1.0 when
  the completion's final answer is equivalent to the gold answer (conspo/rewards/math.py);
  ``score`` also says why, per completion (``VerifyResult.statuses``, one of ``STATUSES``).
* ``score_with(reward_fn, prompts, completions, examples)``: any ``(prompt, completion,
  example) -> float`` reward, with bad values reported by example (conspo/rewards/base.py).

Importing this package is cheap: sympy / math-verify are imported only by the processes that
run the symbolic comparison.
"""

from conspo.rewards.base import RewardError, RewardFn, math_reward_fn, score_with
from conspo.rewards.math import (
    DEFAULT_TIMEOUT_S,
    STATUSES,
    MathVerifier,
    VerifyResult,
    answers_match,
    check_answer,
    extract_answer,
    gold_answer,
    math_reward,
    normalize_answer,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "STATUSES",
    "MathVerifier",
    "RewardError",
    "RewardFn",
    "VerifyResult",
    "answers_match",
    "check_answer",
    "extract_answer",
    "gold_answer",
    "math_reward",
    "math_reward_fn",
    "normalize_answer",
    "score_with",
]
