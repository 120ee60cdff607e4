"""Symbolic comparison with math-verify (runs inside worker processes; no time limit of its own).

``check_answer`` is the function the verification workers run; ``parse_decimal_match`` reads the
decimal policy. sympy and math-verify are imported on first use only.
"""

from __future__ import annotations

import re
from functools import lru_cache

from conspo.rewards.normalize import (
    APPROX_TOKEN,
    fast_key,
    is_ambiguous,
    normalize_gold,
    number_verdict,
    simple_rhs,
)

__all__ = ["DECIMAL_MATCH_DEFAULT", "answers_match", "check_answer", "gold_parses", "parse_decimal_match", "warm_up"]

#: How a decimal may stand for an exact gold (``MathVerifier(decimal_match=...)``): "exact" (the
#: default), "places:N" or "sig:N"; see ``parse_decimal_match``.
DECIMAL_MATCH_DEFAULT = "exact"


_MV: dict = {}


def _math_verify():
    """Import math-verify once, with its own signal-based timeouts off and their warning silenced."""
    if not _MV:
        import math_verify.grader as grader
        import math_verify.parser as parser
        from math_verify import LatexExtractionConfig, parse, verify

        grader.TIMEOUT_WARNING_SHOWN = True  # we pass timeout None on purpose: limits are ours
        parser.TIMEOUT_WARNING_SHOWN = True
        config = LatexExtractionConfig(boxed_match_priority=0)
        # math-verify's unit stripping removes a trailing single letter ("2x + c" -> "2x +"); when
        # that leaves nothing parseable we parse again without it.
        from dataclasses import replace

        no_units = replace(config, normalization_config=replace(config.normalization_config, units=False))
        _MV.update(parse=parse, verify=verify, configs=([config], [no_units]))
    return _MV


def _sympy_items(parsed) -> list:
    return [x for x in parsed if not isinstance(x, str)]


def _parse_latex(norm: str) -> list:
    """math-verify's parse of one normalised answer (LaTeX path only: ExprExtractionConfig would
    run sympy.parse_expr, i.e. eval, on model text)."""
    mv = _math_verify()
    parsed: list = []
    for config in mv["configs"]:
        parsed = mv["parse"]("$" + norm + "$", extraction_config=config, parsing_timeout=None)
        if _sympy_items(parsed):
            return parsed
    # "m_{\max} = n^2-n-1": if the equation does not parse, the value on the right may
    rhs = simple_rhs(norm)
    if rhs is not None:
        return mv["parse"]("$" + rhs + "$", extraction_config=mv["configs"][0], parsing_timeout=None) or parsed
    return parsed


@lru_cache(maxsize=8192)
def _parse_gold(gold_norm: str) -> tuple:
    """Parsed gold answer, cached per worker process (every rollout of a group shares it)."""
    return tuple(_parse_latex(gold_norm))


def _exact_rational_mismatch(gold_parsed, pred_parsed) -> bool:
    """True when both answers are exact rationals that differ (math-verify compares them as floats)."""
    try:
        import sympy

        g = next((x for x in gold_parsed if isinstance(x, sympy.Basic)), None)
        p = next((x for x in pred_parsed if isinstance(x, sympy.Basic)), None)
        if g is None or p is None:
            return False
        if g.has(sympy.UnevaluatedExpr) or p.has(sympy.UnevaluatedExpr) or g.has(sympy.Float) or p.has(sympy.Float):
            return False  # percentages and decimals keep math-verify's judgement
        if not (getattr(g, "is_number", False) and getattr(p, "is_number", False)):
            return False
        gd, pd = g.doit(), p.doit()
        return bool(gd.is_Rational and pd.is_Rational and gd != pd)
    except Exception:
        return False


#: A decimal literal as written: its digits after the point tell the precision it claims.
_DECIMAL_LITERAL_RE = re.compile(r"(?<![\d.])(\d*)\.(\d+)(?![\d.])")


def parse_decimal_match(spec: str) -> tuple[str, int]:
    """The decimal policy ``spec`` as (kind, N); raises ValueError on anything else.

    When may a decimal stand for an exact gold (``\\pi``, ``\\frac{1}{3}``, ``\\sqrt{2}``)?

    * ``"exact"`` (the default): only where math-verify's own comparison accepts it, which rounds
      both to 6 decimal places (``0.333333`` equals 1/3, ``0.3333`` and ``3.14`` do not). This is
      plain math-verify's convention; Qwen2.5-Math's grader (relative tolerance 1e-4) also rejects
      ``3.1`` for pi and ``0.33`` for 1/3. A policy cannot be paid for a coarse decimal.
    * ``"places:N"``: also a decimal written with at least N decimal places that is the exact value
      correctly rounded at its written precision (``places:2``: ``3.14`` for pi, not ``3.1``).
    * ``"sig:N"``: also a correctly rounded decimal with at least N significant digits
      (``sig:2``: ``3.1`` for pi and ``0.33`` for 1/3, not ``0.3``).

    A decimal gold is not affected: it is compared at math-verify's precision.
    """
    if not isinstance(spec, str):
        raise ValueError(f"decimal_match must be a string such as 'exact', 'places:4' or 'sig:3', got {spec!r}")
    text = spec.strip().lower()
    if text == "exact":
        return "exact", 0
    kind, sep, num = text.partition(":")
    if sep and kind in ("places", "sig") and num.isdigit() and 1 <= int(num) <= 5:
        return kind, int(num)
    raise ValueError(
        f"decimal_match {spec!r} is not one of 'exact', 'places:N', 'sig:N' (N from 1 to 5; "
        "6 or more places is math-verify's own precision, i.e. 'exact')"
    )


def _written_precision(norm: str, decimal_match: str = DECIMAL_MATCH_DEFAULT) -> int | None:
    """Decimal places at which ``norm``'s decimals are to be compared with an exact value under the
    policy ``decimal_match`` (``parse_decimal_match``); None when no rounding rule applies.

    The largest number of places written (entries written with fewer, such as 0.2 next to
    0.33, are exact at that precision too), provided the numbers written with that many places
    meet the policy: at least N places ("places:N") or N significant digits ("sig:N"). None also
    when there is nothing to round (no decimals, or 6+ places: math-verify's default).
    """
    kind, n = parse_decimal_match(decimal_match)
    if kind == "exact":
        return None
    if re.search(r"\\times\s*10|\^", norm):  # scientific notation / powers: leave to math-verify
        return None
    lits = [(m.group(1), m.group(2)) for m in _DECIMAL_LITERAL_RE.finditer(norm)]
    if not lits:
        return None
    places = max(len(frac) for _, frac in lits)
    if places >= 6:
        return None
    if kind == "places":
        return places if places >= n else None
    for whole, frac in lits:
        if len(frac) == places and len((whole + frac).lstrip("0")) < n:
            return None
    return places


def _single_value(x) -> bool:
    """A sympy expression that math-verify compares as a one-element set (not a set, tuple,
    interval, matrix or relation)."""
    import sympy
    from sympy.core.relational import Relational

    return isinstance(x, sympy.Expr) and not isinstance(x, (Relational, sympy.Tuple))


def _cardinality_mismatch(gold_parsed, pred_parsed) -> bool:
    """True when math-verify is bound to answer False because one side is a single value and the
    other a finite set of two or more distinct elements (a list answer vs a number, common with
    lenient extraction). It decides that only after a slow sympy set difference; the verdict
    is the same (its element-wise comparison needs equal sizes)."""
    import sympy

    g_items, p_items = _sympy_items(gold_parsed), _sympy_items(pred_parsed)
    if not g_items or not p_items:
        return False
    g_strs = {x.strip() for x in gold_parsed if isinstance(x, str)}
    if any(isinstance(x, str) and x.strip() in g_strs and x.strip() for x in pred_parsed):
        return False  # math-verify's string comparison would match

    def big_set(x) -> bool:
        return isinstance(x, sympy.FiniteSet) and len(x) >= 2

    return all((_single_value(g) and big_set(p)) or (big_set(g) and _single_value(p)) for g in g_items for p in p_items)


def _verify(gold_parsed, pred_parsed, pred_norm: str, decimal_match: str = DECIMAL_MATCH_DEFAULT) -> bool:
    import sympy

    mv = _math_verify()
    gold = list(gold_parsed)
    if _cardinality_mismatch(gold_parsed, pred_parsed):
        return False
    ok = bool(mv["verify"](gold, pred_parsed, timeout_seconds=None))
    if ok:
        return not _exact_rational_mismatch(gold_parsed, pred_parsed)
    # A decimal approximation of an exact gold, at the precision it is written with.
    gold_items = _sympy_items(gold_parsed)
    pred_items = _sympy_items(pred_parsed)
    if (
        gold_items
        and pred_items
        and not any(g.has(sympy.Float) for g in gold_items if hasattr(g, "has"))
        and any(p.has(sympy.Float) for p in pred_items if hasattr(p, "has"))
    ):
        places = _written_precision(pred_norm, decimal_match)
        if places is not None:
            return bool(mv["verify"](gold, pred_parsed, float_rounding=places, timeout_seconds=None))
    return False


_DECIMAL_COMMA_RE = re.compile(r"[+-]?(?:\d+,\d+|\d{1,3}(?:\.\d{3})+,\d+)")
_DECIMAL_POINT_RE = re.compile(r"[+-]?\d*\.\d+")


def _decimal_comma(norm: str, other: str) -> str | None:
    """``norm`` read with a decimal comma ("2,74" -> "2.74", "1.000,5" -> "1000.5") when the other
    answer is a decimal number written with a point; None when that reading does not apply."""
    if _DECIMAL_COMMA_RE.fullmatch(norm) and _DECIMAL_POINT_RE.fullmatch(other):
        return norm.replace(".", "").replace(",", ".")
    return None


def _readings(norm: str, other: str, *, approx_ok: bool, decimal_comma: bool) -> list[str]:
    """The ways ``norm`` may be read, in order: as written (the exact part of an approximation
    chain), with a decimal comma (when ``decimal_comma``), and the approximate part (when
    ``approx_ok``)."""
    exact, _, approx = norm.partition(APPROX_TOKEN)
    other_exact = other.partition(APPROX_TOKEN)[0]
    out: list[str] = []
    for text in [exact] + ([approx] if approx and approx_ok else []):
        out.append(text)
        alt = _decimal_comma(text, other_exact) if decimal_comma else None
        if alt is not None:
            out.append(alt)
    return out


def check_answer(pred_norm: str, gold_norm: str, decimal_match: str = DECIMAL_MATCH_DEFAULT) -> str:
    """Status of a *normalised* prediction against a *normalised* gold, in this process, with no
    time limit: "correct", "wrong", "ambiguous" or "gold_unparsable". ``decimal_match``: when a
    decimal may stand for an exact gold (``parse_decimal_match``).

    This is the function the verification workers run; call it directly only on trusted input
    or where a hang is acceptable (use ``MathVerifier`` / ``math_reward`` otherwise).
    """
    if is_ambiguous(pred_norm):
        return "ambiguous"
    if fast_key(pred_norm) == fast_key(gold_norm):
        return "correct"
    verdict = number_verdict(pred_norm, gold_norm)
    if verdict is not None:
        return verdict
    gold_exact = gold_norm.partition(APPROX_TOKEN)[0]
    gold_is_decimal = bool(_DECIMAL_POINT_RE.fullmatch(gold_exact))
    any_gold = False
    # Decimal commas are a prediction-side reading only: English answer keys use the comma as a
    # separator (all 34 "a,b" gold answers in ../shared/data are lists or pairs), models
    # sometimes write 2,74 for 2.74.
    for gold_text in _readings(gold_norm, pred_norm, approx_ok=False, decimal_comma=False):
        gold_parsed = _parse_gold(gold_text)
        if not _sympy_items(gold_parsed):
            continue
        any_gold = True
        for pred_text in _readings(pred_norm, gold_text, approx_ok=gold_is_decimal, decimal_comma=True):
            if fast_key(pred_text) == fast_key(gold_text):
                return "correct"
            pred_parsed = _parse_latex(pred_text)
            if pred_parsed and _verify(gold_parsed, pred_parsed, pred_text, decimal_match):
                return "correct"
    return "wrong" if any_gold else "gold_unparsable"


def gold_parses(gold: str) -> bool:
    """True when math-verify parses the final answer of ``gold`` (after ``gold_answer`` and
    ``normalize_answer``). A gold that does not parse still matches a prediction with the same
    normalised text (``fast_key``: spaces ignored, words case-insensitive); otherwise such a
    completion's status is "gold_unparsable". Runs sympy: call it in a worker, with a time limit."""
    return bool(_sympy_items(_parse_gold(normalize_gold(gold)[0])))


def answers_match(pred_norm: str, gold_norm: str) -> bool:
    """True when two *normalised* answers are equivalent (``check_answer(...) == "correct"``)."""
    return check_answer(pred_norm, gold_norm) == "correct"


def warm_up() -> None:
    """Worker initializer: import sympy/math-verify before the first task's clock starts."""
    check_answer("x + 1", "1 + x")  # parse + symbolic comparison
    check_answer("0.33", "\\frac{1}{3}", "sig:2")  # decimals and the rounding rule
