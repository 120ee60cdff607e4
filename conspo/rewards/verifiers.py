"""The built-in verifiers as rewards of TRL's shape ``(prompts, completions, answer, **columns) -> list[float]``.

The tasks score with these (``conspo.tasks``), and ``--reward conspo.rewards.verifiers:math_accuracy``
names one for any data with an ``answer`` column. Conversational completions (lists of chat messages)
are judged by the text of their last message.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["chain_final_answer", "completion_text", "exact_answer", "math_accuracy"]


def completion_text(completion: Any) -> str:
    """A completion as text: the string itself, or the content of the last chat message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"a completion is a string or a list of chat messages, got {type(completion).__name__}")


def _need_answers(answer, n: int, name: str) -> list:
    if answer is None or len(answer) != n:
        raise ValueError(f"reward {name} needs an `answer` column (the gold answer of each row)")
    return list(answer)


def exact_answer(prompts, completions, answer=None, **_) -> list[float]:
    """1.0 when the completion, stripped, equals the answer exactly (the addition task's verifier)."""
    golds = _need_answers(answer, len(completions), "exact_answer")
    return [1.0 if completion_text(c).strip() == str(a) else 0.0 for c, a in zip(completions, golds)]


def chain_final_answer(prompts, completions, answer=None, **_) -> list[float]:
    """1.0 when the number after the completion's last ``=`` is the answer (the chain task's verifier)."""
    from conspo.tasks.chain import final_answer

    golds = _need_answers(answer, len(completions), "chain_final_answer")
    return [1.0 if final_answer(completion_text(c)) == int(a) else 0.0 for c, a in zip(completions, golds)]


_VERIFIER = None


def math_accuracy(prompts, completions, answer=None, **_) -> list[float]:
    """1.0 when the completion's final answer is mathematically equivalent to the answer (math-verify under
    hard time limits in worker processes; lenient extraction, as ``--answer-extraction lenient``)."""
    global _VERIFIER
    from conspo.rewards.math import MathVerifier

    golds = _need_answers(answer, len(completions), "math_accuracy")
    if _VERIFIER is None:
        _VERIFIER = MathVerifier()
    return list(_VERIFIER.score([completion_text(c) for c in completions], [str(a) for a in golds]).scores)
