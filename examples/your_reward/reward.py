"""Two rewards with TRL's signature, for `conspo train --reward` (or TRL's GRPOTrainer, unchanged).

    conspo train --model Qwen/Qwen2.5-0.5B-Instruct \
        --train-data examples/your_reward/arithmetic.jsonl \
        --reward examples/your_reward/reward.py:closeness --reward examples/your_reward/reward.py:brevity \
        --reward-weights 1.0 0.2 --max-new-tokens 32 --steps 50 --prompts-per-step 4 --group-size 8

Each gets the batch's prompts and completions (chat messages here: the data's `prompt` column is
conversational) and every other column of the data as a keyword (`answer`), and returns one float per
completion, or None for "no score from this reward".
"""

import re

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _text(completion):
    return completion if isinstance(completion, str) else completion[-1]["content"]


def closeness(prompts, completions, answer, **kwargs):
    """Graded: 1 for the right number, less the further the last number is from it, 0 without a number."""
    scores = []
    for completion, gold in zip(completions, answer):
        numbers = NUMBER.findall(_text(completion))
        if not numbers:
            scores.append(0.0)
            continue
        error = abs(float(numbers[-1]) - float(gold))
        scores.append(1.0 / (1.0 + error))
    return scores


def brevity(prompts, completions, **kwargs):
    """A length reward: 1 for at most 4 words, falling to 0 at 20 words."""
    return [max(0.0, min(1.0, (20 - len(_text(c).split())) / 16)) for c in completions]
