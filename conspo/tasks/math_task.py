"""The ``math`` task: train on a math set, evaluate on a benchmark, reward = verified answer.

Problems come from ``conspo.tasks.math_data`` (JSONL / shared benchmark sets by short name),
prompts from its templates (rendered with the tokenizer's chat template when it has one), and
rewards from ``conspo.rewards.MathVerifier`` (math-verify with hard time limits in worker
processes; model text is never executed).
"""

from __future__ import annotations

from conspo.tasks import Problem


class MathTask:
    name = "math"

    def __init__(
        self,
        train: str = "math_train",
        heldout: str = "math500",
        *,
        data_dir: str | None = None,
        template: str = "qwen_math_boxed",
        max_new_tokens: int = 1024,
        verify_timeout_s: float = 5.0,
        answer_extraction: str = "lenient",
        decimal_match: str = "exact",
        reward_audit_every: int = 0,
    ):
        from conspo.tasks.data import load_problem_set
        from conspo.tasks.math_data import PROMPT_TEMPLATES

        if template not in PROMPT_TEMPLATES:
            raise ValueError(f"unknown prompt template {template!r}; valid: {', '.join(PROMPT_TEMPLATES)}")
        self._train_examples = load_problem_set(train, data_dir, split="train")
        self._heldout_examples = load_problem_set(heldout, data_dir)
        self.template = template
        self.max_new_tokens = max_new_tokens
        self.verify_timeout_s = verify_timeout_s
        if answer_extraction not in ("lenient", "strict"):
            raise ValueError(f"answer_extraction must be lenient or strict, got {answer_extraction!r}")
        self.lenient = answer_extraction == "lenient"
        from conspo.rewards.math import parse_decimal_match

        parse_decimal_match(decimal_match)  # ValueError naming the accepted values
        self.decimal_match = decimal_match
        if reward_audit_every < 0:
            raise ValueError(f"reward_audit_every must be >= 0, got {reward_audit_every}")
        self.reward_audit_every = reward_audit_every  # every N-th scored batch: a second opinion's disagreement
        self._scored_batches = 0
        self._second_opinion = None
        self._tokenizer = None
        self._verifier = None
        self._cache: dict[str, list[Problem]] = {}

    def set_tokenizer(self, tokenizer) -> None:
        """Prompts depend on the tokenizer's chat template: call before asking for problems."""
        self._tokenizer = tokenizer
        self._cache.clear()

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Strings that end a completion (the plain template's end of line), as the prompts are rendered."""
        from conspo.tasks.math_data import stop_strings

        return stop_strings(self.template, self._tokenizer)

    def _problems(self, key: str, examples) -> list[Problem]:
        from conspo.tasks.math_data import build_prompt

        if key not in self._cache:
            self._cache[key] = [
                Problem(id=e.id, prompt=build_prompt(e, self.template, self._tokenizer), answer=e.answer)
                for e in examples
            ]
        return self._cache[key]

    def train_problems(self) -> list[Problem]:
        return self._problems("train", self._train_examples)

    def heldout_problems(self) -> list[Problem]:
        return self._problems("heldout", self._heldout_examples)

    def score(self, problems: list[Problem], completions: list[str]) -> list[float]:
        from conspo.rewards import MathVerifier

        if self._verifier is None:
            self._verifier = MathVerifier(
                timeout_s=self.verify_timeout_s, lenient=self.lenient, decimal_match=self.decimal_match
            )
        result = self._verifier.score(completions, [p.answer for p in problems])
        self._last_metrics = {
            "reward/no_answer_frac": result.fraction("no_answer"),
            "reward/timeout_frac": result.fraction("timeout"),
            "reward/gold_unparsable_frac": result.fraction("gold_unparsable"),
            "reward/ambiguous_frac": result.fraction("ambiguous"),
        }
        self._scored_batches += 1
        if self.reward_audit_every and self._scored_batches % self.reward_audit_every == 0:
            from conspo.rewards.second_opinion import SecondOpinion

            if self._second_opinion is None:
                self._second_opinion = SecondOpinion(timeout_s=self.verify_timeout_s, decimal_match=self.decimal_match)
            self._last_metrics.update(
                self._second_opinion.disagreement(completions, [p.answer for p in problems], result.scores)
            )
        return result.scores

    def last_score_metrics(self) -> dict[str, float]:
        """Why the last ``score`` call's completions scored what they did (fractions of the batch)."""
        return dict(getattr(self, "_last_metrics", {}))
