"""Sums worked out step by step, the built-in task with chains: ``"7+15+9+2="`` -> ``"22+9+2=31+2=33"``.

Made to test claims about long, varying completions on a CPU (docs/experiments/chain.md):
a correct completion rewrites the sum once per step, its first two numbers replaced by their sum
and the rest copied, until one number is left, so its length grows with the number of terms
(4 to 7 terms from 1 to 19: 11 to 64 characters, one token each with the tiny model's character
tokenizer, plus end-of-sequence). Only the final answer is verified (the number after the last
``=``), as with real math rewards: a chain with a slip that still ends on the right total scores 1,
and a long chain ending on a wrong total scores 0. Why these terms: with one-digit terms the tiny
model read the total off the prompt and the chain was decoration (RL could not improve it); terms
up to 99 were too hard to learn in a CPU warm-up (docs/experiments/chain.md).
"""

from __future__ import annotations

import random
import re

from conspo.tasks import Problem

#: The final answer: the number after the last "=", with nothing but spaces after it.
FINAL_ANSWER = re.compile(r"=\s*(\d+)\s*$")


def worked_chain(terms: list[int]) -> str:
    """``[7, 5, 9, 2]`` -> ``"12+9+2=21+2=23"``: the first two numbers added, the rest copied, per step."""
    steps, numbers = [], list(terms)
    while len(numbers) > 1:
        numbers = [numbers[0] + numbers[1], *numbers[2:]]
        steps.append("+".join(map(str, numbers)))
    return "=".join(steps)


def final_answer(completion: str) -> int | None:
    """The number after the completion's last ``=``, or None when it does not end on one."""
    found = FINAL_ANSWER.search(completion)
    return int(found.group(1)) if found else None


class ChainTask:
    name = "chain"

    def __init__(
        self,
        min_terms: int = 4,
        max_terms: int = 7,
        largest_term: int = 19,
        train_size: int = 100_000,
        heldout_size: int = 500,
        seed: int = 4321,
    ):
        if not 2 <= min_terms <= max_terms <= 8:
            raise ValueError(f"chain terms must satisfy 2 <= min_terms <= max_terms <= 8, got {min_terms}..{max_terms}")
        if not 2 <= largest_term <= 99:
            raise ValueError(f"chain largest_term must be in 2..99, got {largest_term}")
        if heldout_size < 1 or train_size < 1:
            raise ValueError(f"chain train_size and heldout_size must be >= 1, got {train_size}, {heldout_size}")
        distinct = sum(largest_term**k for k in range(min_terms, max_terms + 1))
        if heldout_size + train_size > distinct:  # the draw below would never finish
            raise ValueError(
                f"chain: only {distinct} distinct problems with these terms, fewer than "
                f"train_size + heldout_size = {train_size + heldout_size}"
            )
        self.min_terms, self.max_terms = min_terms, max_terms
        #: What the problems depend on; the cached tiny base's key includes it (conspo.warmup).
        self.settings = {
            "min_terms": min_terms,
            "max_terms": max_terms,
            "largest_term": largest_term,
            "train_size": train_size,
            "heldout_size": heldout_size,
            "seed": seed,
        }
        longest = len(worked_chain([largest_term] * max_terms))
        self.max_new_tokens = longest + 6  # the longest correct chain, its <eos>, and slack to fail visibly
        # Fixed problem sets that do not depend on the training seed. Distinct term lists are drawn
        # until both splits are full; the held-out ones are never trained on (warm-up or RL).
        rng = random.Random(seed)
        seen: set[tuple[int, ...]] = set()
        problems: list[Problem] = []
        while len(problems) < heldout_size + train_size:
            terms = tuple(rng.randint(1, largest_term) for _ in range(rng.randint(min_terms, max_terms)))
            if terms not in seen:
                seen.add(terms)
                problems.append(self._problem(terms))
        self._heldout = problems[:heldout_size]
        self._train = problems[heldout_size:]

    @staticmethod
    def _problem(terms: tuple[int, ...]) -> Problem:
        expression = "+".join(map(str, terms))
        return Problem(
            id=expression,
            prompt=f"{expression}=",
            answer=str(sum(terms)),
            meta={"solution": worked_chain(list(terms)), "terms": len(terms)},
        )

    def train_problems(self) -> list[Problem]:
        return self._train

    def heldout_problems(self) -> list[Problem]:
        return self._heldout

    def solution(self, problem: Problem) -> str:
        """The worked chain the supervised warm-up teaches."""
        return problem.meta["solution"]

    def score(self, problems: list[Problem], completions: list[str]) -> list[float]:
        """1 when the final answer is right, whatever the chain before it; else 0."""
        rewards, exact, lucky = [], 0, 0
        for p, c in zip(problems, completions, strict=True):
            right = final_answer(c) == int(p.answer)
            rewards.append(1.0 if right else 0.0)
            if right:
                same_chain = c.strip() == self.solution(p)
                exact += same_chain
                lucky += not same_chain
        n = max(len(rewards), 1)
        self._last = {"reward/exact_chain_frac": exact / n, "reward/right_answer_wrong_chain_frac": lucky / n}
        return rewards

    def last_score_metrics(self) -> dict:
        """Of the last scored batch: completions equal to the worked chain, and right answers reached by
        a wrong chain (rewarded all the same: only the final answer is verified)."""
        return dict(getattr(self, "_last", {}))
