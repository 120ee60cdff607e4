"""A second opinion on recorded math rewards: plain math-verify and strict extraction.

``second_opinions(completions, golds)`` scores each pair two other ways:

* ``math_verify``: plain math-verify as its README uses it, ``verify(parse(gold), parse(completion))``
  with its default settings (its own answer extraction, normalisation and 6-place float rounding),
  except that only its LaTeX extraction is used (``LatexExtractionConfig()``): its
  ``ExprExtractionConfig`` runs ``sympy.parse_expr`` (``eval``) on the text, and model output is
  never executed here. A gold without math delimiters is wrapped in ``$...$`` (its LaTeX
  extraction needs them). None when the check ran past the time limit or raised.
* ``strict``: ``MathVerifier(lenient=False)`` (no answer marker, no answer), with the same
  decimal policy as the reward.

Where either disagrees with the reward that was recorded, the pair is worth a look: a recorded 0
that math-verify or strict extraction scores 1 is a false-negative candidate (a correct answer
the reward missed); a recorded 1 that plain math-verify scores 0 is a false-positive candidate.
The symbolic checks run in worker processes with a hard time limit (``conspo.rewards.pool``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from conspo.rewards.math import DECIMAL_MATCH_DEFAULT, DEFAULT_TIMEOUT_S, MathVerifier
from conspo.rewards.pool import HardTimeoutPool

__all__ = ["Opinion", "SecondOpinion", "plain_math_verify", "second_opinions"]


def _dollar_gold(gold: str) -> str:
    if any(t in gold for t in ("$", "\\(", "\\[", "\\boxed")) or "\n" in gold.strip() or len(gold.split()) > 3:
        return gold
    return f"${gold}$"


def plain_math_verify(completion: str, gold: str) -> bool:
    """Plain math-verify's verdict (LaTeX extraction only; no time limit of its own: run it in a
    worker, as ``second_opinions`` does)."""
    import math_verify.grader as grader
    import math_verify.parser as parser
    from math_verify import LatexExtractionConfig, parse, verify

    grader.TIMEOUT_WARNING_SHOWN = True
    parser.TIMEOUT_WARNING_SHOWN = True
    configs = [LatexExtractionConfig()]
    g = parse(_dollar_gold(gold), extraction_config=configs, parsing_timeout=None)
    p = parse(completion, extraction_config=configs, parsing_timeout=None)
    return bool(g and p and verify(g, p, timeout_seconds=None))


def _warm_up() -> None:
    plain_math_verify("$x+1$", "1+x")


@dataclass
class Opinion:
    """The two other verdicts on one (completion, gold): 1.0 / 0.0, or None (time limit or error)."""

    math_verify: float | None
    strict: float


class SecondOpinion:
    """Workers kept for repeated second opinions (``task=math`` with ``reward_audit_every``);
    ``close()`` when done. ``second_opinions`` is the one-shot form."""

    def __init__(
        self,
        *,
        workers: int | None = 1,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        decimal_match: str = DECIMAL_MATCH_DEFAULT,
    ):
        self._strict = MathVerifier(
            num_workers=workers, timeout_s=timeout_s, lenient=False, decimal_match=decimal_match
        )
        self._pool = HardTimeoutPool(plain_math_verify, num_workers=workers, timeout_s=timeout_s, initializer=_warm_up)

    def opinions(self, completions: Sequence[str], golds: Sequence[str]) -> list[Opinion]:
        """Plain math-verify's and strict extraction's verdict on every pair, in input order."""
        if len(completions) != len(golds):
            raise ValueError(f"got {len(completions)} completions but {len(golds)} gold answers")
        if not completions:
            return []
        strict = self._strict.score(list(completions), list(golds)).scores
        outcomes = self._pool.run([(c, str(g)) for c, g in zip(completions, golds)])
        mv = [float(bool(o.value)) if o.status == "ok" else None for o in outcomes]
        return [Opinion(m, s) for m, s in zip(mv, strict)]

    def disagreement(self, completions: Sequence[str], golds: Sequence[str], rewards: Sequence[float]) -> dict:
        """Shares of the batch where the second opinions differ from ``rewards`` (as metrics):
        ``disagree_frac`` (plain math-verify's verdict differs), ``fn_frac`` (reward 0, math-verify
        or strict extraction says 1) and ``fp_frac`` (reward 1, math-verify says 0)."""
        ops = self.opinions(completions, golds)
        n = max(len(ops), 1)
        disagree = fn = fp = 0
        for o, r in zip(ops, rewards):
            got = r >= 0.5
            mv = None if o.math_verify is None else o.math_verify >= 0.5
            disagree += mv is not None and mv != got
            fn += not got and (bool(mv) or o.strict >= 0.5)
            fp += got and mv is False
        return {
            "reward/second_opinion_disagree_frac": disagree / n,
            "reward/second_opinion_fn_frac": fn / n,
            "reward/second_opinion_fp_frac": fp / n,
        }

    def close(self) -> None:
        self._strict.close()
        self._pool.close()

    def __enter__(self) -> SecondOpinion:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def second_opinions(
    completions: Sequence[str],
    golds: Sequence[str],
    *,
    workers: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    decimal_match: str = DECIMAL_MATCH_DEFAULT,
) -> list[Opinion]:
    """Plain math-verify's and strict extraction's verdict on every pair, in input order."""
    if len(completions) != len(golds):
        raise ValueError(f"got {len(completions)} completions but {len(golds)} gold answers")
    if not completions:
        return []
    with SecondOpinion(workers=workers, timeout_s=timeout_s, decimal_match=decimal_match) as so:
        return so.opinions(completions, golds)
