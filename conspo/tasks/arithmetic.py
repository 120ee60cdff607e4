"""Zero-padded two-number addition, the default task: ``"07+45="`` -> ``"52"``.

Exactly verifiable, learnable by a ~1M-parameter model on a CPU in minutes (docs/design.md
section 8: 3-digit addition was too slow to learn from scratch, 2-digit worked).
Answers are written without padding; the completion must equal the sum exactly, with
anything after the end-of-sequence token ignored.
"""

from __future__ import annotations

import random

from conspo.tasks import Problem


class AdditionTask:
    name = "addition"

    def __init__(self, digits: int = 2, heldout_size: int = 500, seed: int = 1234):
        if digits < 1 or digits > 4:
            raise ValueError(f"addition digits must be 1..4, got {digits}")
        self.digits = digits
        self.max_new_tokens = digits + 4  # the sum has <= digits+1 characters, plus <eos> and slack
        n = 10**digits
        pairs = [(a, b) for a in range(n) for b in range(n)]
        if not 0 < heldout_size < len(pairs):
            raise ValueError(f"heldout_size must be in 1..{len(pairs) - 1}, got {heldout_size}")
        # A fixed split that does not depend on the training seed: the held-out problems are
        # never trained on, in the warm-up or in RL.
        random.Random(seed).shuffle(pairs)
        self._heldout = [self._problem(a, b) for a, b in pairs[:heldout_size]]
        self._train = [self._problem(a, b) for a, b in pairs[heldout_size:]]

    def _problem(self, a: int, b: int) -> Problem:
        width = self.digits
        return Problem(id=f"{a}+{b}", prompt=f"{a:0{width}d}+{b:0{width}d}=", answer=str(a + b))

    def train_problems(self) -> list[Problem]:
        return self._train

    def heldout_problems(self) -> list[Problem]:
        return self._heldout

    def score(self, problems: list[Problem], completions: list[str]) -> list[float]:
        return [1.0 if c.strip() == p.answer else 0.0 for p, c in zip(problems, completions, strict=True)]
