"""verl custom reward for the MATH example: conspo's math verifier (1.0 correct, 0.0 otherwise).

verl calls ``compute_score(data_source, solution_str, ground_truth, extra_info)`` once per
rollout (``reward.custom_reward_function.path=examples/verl/reward.py``). The answer is the last
``\\boxed{}`` (or the template's answer format) of the completion, compared with the gold answer
symbolically under a hard time limit (``conspo.rewards.math_reward``; needs math-verify, a
conspo dependency).
"""

from conspo.rewards import math_reward


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return math_reward(solution_str, str(ground_truth))
