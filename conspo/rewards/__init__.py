"""Rewards: verifiable math answers (with hard time limits) and custom reward functions.

* ``math_reward(completion, gold)`` / ``MathVerifier(...).score(completions, golds)``: 1.0 when
  the completion's final answer is equivalent to the gold answer (conspo/rewards/math.py);
  ``score`` also says why, per completion (``VerifyResult.statuses``, one of ``STATUSES``).
* ``RewardSet(funcs, weights).score(prompts, completions, columns)``: reward functions with TRL's
  signature ``(prompts, completions, **columns) -> list[float | None]``, bad values reported by row
  (conspo/rewards/base.py); ``load_reward("file.py:fn")`` loads one. The built-in verifiers in that
  shape: conspo/rewards/verifiers.py.

Importing this package is cheap: sympy / math-verify are imported only by the processes that
run the symbolic comparison.
"""

from conspo.rewards.base import REWARD_ERRORS, RewardError, RewardScores, RewardSet, load_reward, reward_name
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
    "REWARD_ERRORS",
    "RewardError",
    "RewardScores",
    "RewardSet",
    "VerifyResult",
    "answers_match",
    "check_answer",
    "extract_answer",
    "gold_answer",
    "math_reward",
    "load_reward",
    "normalize_answer",
    "reward_name",
]
