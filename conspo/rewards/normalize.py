"""Answer normalisation: the canonical text of an answer, and the comparisons that need no sympy.

``normalize_answer`` (prediction and gold alike), ``normalize_gold``, ``fast_key`` (equal keys mean
equal answers), ``number_verdict`` (two plain numbers) and ``is_ambiguous`` (spaced digits no rule
joins). The rules are described in conspo/rewards/math.py. No sympy import.
"""

from __future__ import annotations

import re
from functools import lru_cache

from conspo.rewards.extract import balanced_group, box_run, gold_answer

__all__ = [
    "APPROX_TOKEN",
    "fast_key",
    "is_ambiguous",
    "normalize_answer",
    "normalize_cached",
    "normalize_gold",
    "number_verdict",
    "simple_rhs",
]


_TEXT_CMDS = (
    "text",
    "textbf",
    "textit",
    "textnormal",
    "textrm",
    "textsf",
    "texttt",
    "mathrm",
    "mathbf",
    "mathit",
    "mathsf",
    "mbox",
    "hbox",
    "rm",
)
_TEXT_CMD_RE = re.compile(r"\\(" + "|".join(_TEXT_CMDS) + r")(?![A-Za-z])\s*(?=\{)")
_UNITS = sorted(
    """cm mm km meters meter metres metre inches inch feet foot ft yards yard miles mile mph kph
    kmh kg grams gram pounds pound lbs lb ounces ounce oz liters liter litres litre ml gallons
    gallon degrees degree dollars dollar cents cent euros euro units unit hours hour hrs hr minutes
    minute mins min seconds second secs sec days day weeks week months month years year people
    students student ways points point cubic square sq radians radian""".split(),
    key=len,
    reverse=True,
)
_UNIT_TAIL_RE = re.compile(
    r"(?:(?<=[\d})\]])|(?<=\\pi))\s*(?:(?:square|sq\.?|cubic)\s+)?(?:" + "|".join(_UNITS) + r")(?:\^\{?\d\}?)?\.?\s*$",
    re.IGNORECASE,
)
_UNIT_TAIL_SPACED_RE = re.compile(  # "12 square units": a unit word after a space, prefix ends in a number
    r"(?:(?<=[\d})\]])|(?<=\\pi))\s+(?:" + "|".join(_UNITS) + r")(?:\^\{?\d\}?)?\.?\s*$", re.IGNORECASE
)
_SCI_RE = re.compile(r"(?<![\w.\\])(\d+(?:\.\d+)?)\s*[eE]\s*([+-]?\d+)(?![\w.])")
#: A whole answer that is one number with thousands separators (the first group cannot start
#: with 0: "0,125" is not a thousands number).
_THOUSANDS_RE = re.compile(r"[+-]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")
_SPACED_THOUSANDS_RE = re.compile(r"[+-]?[1-9]\d{0,2}(?: \d{3})+(?:\.\d+)?")
#: Words that only say the value is (about) the one that follows: "just about 1", "exactly 5".
_QUALIFIER_RE = re.compile(
    r"^(?:(?:just|only|exactly|precisely|about|approximately|approx\.|roughly|around|circa|equal\s+to|equals)\s+)+"
    r"(?=[-+.(\[{\\\d])",
    re.IGNORECASE,
)
#: Words that make the value a bound, not the answer: "at least 5", "almost 5".
_BOUND_RE = re.compile(
    r"(?:at\s+(?:least|most)|(?:no|not)\s+(?:more|less|fewer)\s+than|(?:more|less|fewer|greater|smaller)\s+than"
    r"|nearly|almost|over|under|up\s+to|below|above|between)\s+[-+.(\[{\\\d]",
    re.IGNORECASE,
)
#: A number whose comma can only be a decimal comma: the digits after it start with 0 ("0,05",
#: "2,075" is thousands and excluded by the rule before) or points group the thousands ("1.000,5").
#: A list element is not written "05", and "1.000" is not a list element either.
_DECIMAL_COMMA_NUMBER_RE = re.compile(r"[+-]?(?:\d+,0\d+|\d{1,3}(?:\.\d{3})+,\d+)")
_SIMPLE_LHS_RE = re.compile(r"\s*(?:[A-Za-z]|\\[A-Za-z]+|[A-Z]{2,3})(?:_\{?[\w\\ ]+\}?)?'*(?:\([^()=]*\))?\s*")
_MIXED_RE = re.compile(r"([+-]?)(\d+)\s*(?:\s(\d+)/(\d+)|\\frac\{(\d+)\}\{(\d+)\})")
#: Spacing inside a number: "10,\! 000", "3\,628\,800", "1{,}000", "40\;320", "1~000", "12\ 345".
_NUMBER_SPACING_RE = re.compile(r"(?<=\d)(?:\{,\}|,?\s*\\[!,;: ]|~)\s*(?=\d{3}(?!\d))")


#: Digits separated by spaces (after spacing commands became spaces): "10 000", "2 0 2 8", "3 4".
_SPACED_RUN_RE = re.compile(r"(?<![\w.^])\d+(?: \d+)+(?:\.\d+)?(?![\w.])")
#: A run in thousands groups: "10 000", "1 000 000.5" (the first group cannot start with 0).
_THOUSANDS_RUN_RE = re.compile(r"[1-9]\d{0,2}(?: \d{3})+(?:\.\d+)?")
#: A number spelled out digit by digit: "2 0 2 8".
_SPELLED_DIGITS_RE = re.compile(r"\d(?:\s+\d)+")
#: What is left of a spaced digit run that no rule joins: ambiguous (see ``_join_spaced_digits``).
_AMBIGUOUS_DIGITS_RE = re.compile(r"\d \d")


def _join_spaced_digits(s: str) -> str:
    """Join digit groups separated by spaces where they can only be one number.

    Thousands groups ("10 000", "1 000 000") are joined wherever they stand; digits written one
    by one ("2 0 2 8") are joined when they are the whole answer or the whole right side of
    ``name =`` (the content of a box or answer line; inside ``\\mathbf``/``\\text`` they are
    joined while unwrapping). Nothing reads such a run as a sum or a product: a run no rule joins
    stays as it is and makes the answer ambiguous (``is_ambiguous``).
    """
    if " " not in s or not re.search(r"\d \d", s):
        return s
    s = _SPACED_RUN_RE.sub(
        lambda m: m.group(0).replace(" ", "") if _THOUSANDS_RUN_RE.fullmatch(m.group(0)) else m.group(0), s
    )
    m = re.fullmatch(r"([+-]?)(\d(?: \d)+)", s)
    if m:
        return m.group(1) + m.group(2).replace(" ", "")
    if len(_split_top_level(s, _COMMA_RE)) == 1:
        parts = _split_top_level(s, _EQ_RE)
        if len(parts) == 2 and _SIMPLE_LHS_RE.fullmatch(parts[0]) and re.fullmatch(r"\s*[+-]?\d(?: \d)+\s*", parts[1]):
            return parts[0].strip() + " = " + parts[1].replace(" ", "")
    return s


def is_ambiguous(norm: str) -> bool:
    """True when a *normalised* answer still has digits separated by a space: "3 4" could be
    34, 3 and 4, or (as LaTeX parsers read it) 3 + 4 or 3 * 4. Scored 0 with status "ambiguous"."""
    return bool(_AMBIGUOUS_DIGITS_RE.search(norm))


def _replace_text_commands(s: str, whole: bool) -> str:
    """Unwrap ``\\text{...}``-like commands: units are dropped, "and"/"or" become commas."""
    out = []
    i = 0
    for _ in range(100):  # bounded: at most 100 wrappers
        m = _TEXT_CMD_RE.search(s, i)
        if m is None:
            break
        content, end = balanced_group(s, m.end())
        if content is None:
            break
        before = "".join(out) + s[i : m.start()]
        inner = content.strip()
        word = re.fullmatch(r"[A-Za-z][A-Za-z .\-]*", inner) is not None
        if inner.lower() in ("and", "or", ",", "and/or"):
            rep = ","
        elif word and len(inner) > 1 and re.search(r"[\d})\]]\s*$", before) and not whole:
            # a unit or a label after the value ("15\text{ cm}^2"): drop it and its exponent
            rep = ""
            sup = re.match(r"\s*\^\s*\{?\d\}?", s[end:])
            if sup:
                end += sup.end()
        elif word and len(inner) > 1:
            rep = " " + inner + " "
        elif _SPELLED_DIGITS_RE.fullmatch(inner):  # \mathbf{2 0 2 8}: one number, written digit by digit
            rep = re.sub(r"\s+", "", inner)
        else:  # one letter (\mathrm{e}) or math inside (\text{(C)}, \textbf{12})
            rep = content
        out.append(s[i : m.start()])
        out.append(rep)
        i = end
    out.append(s[i:])
    return "".join(out)


def _split_top_level(s: str, sep: re.Pattern) -> list[str]:
    """Split ``s`` at matches of ``sep`` that are not inside (), [], {}."""
    parts, depth, last = [], 0, 0
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in "{}":
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        elif depth == 0:
            m = sep.match(s, i)
            if m:
                parts.append(s[last:i])
                last = m.end()
                i = m.end()
                continue
        i += 1
    parts.append(s[last:])
    return parts


_EQ_RE = re.compile(r"(?<![<>!\\=])=(?!=)")
_COMMA_RE = re.compile(r"[,;]")
_APPROX_RE = re.compile(r"\\approx(?![A-Za-z])")
APPROX_TOKEN = " \\approx "


def _is_numeric(expr: str) -> bool:
    """True when ``expr`` has no variables: digits, operators and numeric LaTeX commands only."""
    rest = re.sub(r"\\(?:frac|sqrt|cdot|times|div|pi)(?![A-Za-z])", "", expr)
    return re.search(r"[A-Za-z\\]", rest) is None and re.search(r"\d", rest) is not None


def _strip_delimiters(s: str) -> str:
    for _ in range(5):
        t = s.strip()
        if t.startswith("$$") and t.endswith("$$") and len(t) > 4:
            t = t[2:-2]
        elif t.startswith("\\[") and t.endswith("\\]"):
            t = t[2:-2]
        elif t.startswith("\\(") and t.endswith("\\)"):
            t = t[2:-2]
        elif t.startswith("$") and t.endswith("$") and len(t) > 2 and not t.endswith("\\$"):
            t = t[1:-1]
        if t == s:
            break
        s = t
    return s.strip()


def _approx(s: str) -> str:
    """``a \\approx b``: keep ``exact \\approx approximation`` (the exact part decides, see
    ``check_answer``), or just the value when the left side only names it (``x \\approx 3.14``)."""
    parts = [p.strip() for p in _split_top_level(s, _APPROX_RE)]
    if len(parts) == 1:
        return s
    approx = parts[-1]
    if not approx:
        return parts[0]
    exact = parts[0]
    eq = _split_top_level(exact, _EQ_RE)
    if (
        not exact
        or (_SIMPLE_LHS_RE.fullmatch(exact) and exact.strip() != "\\pi")
        or (len(eq) == 2 and not eq[1].strip())
    ):
        return approx  # "x \approx 3.14", "\approx 0.43": a named value, judged by the value
    return exact + APPROX_TOKEN + approx


_PLAIN_DECIMAL_RE = re.compile(r"-?\d+(?:\.\d+)?")


def normalize_answer(answer: str) -> str:
    """Canonical text of an answer (prediction or gold); see the module docstring for the rules."""
    s = str(answer).strip()
    if _PLAIN_DECIMAL_RE.fullmatch(s):  # most answers: nothing to do
        return s
    return normalize_cached(s)


@lru_cache(maxsize=8192)
def normalize_cached(s: str) -> str:
    """``normalize_answer`` of a stripped answer; cached: the rollouts of a group repeat answers."""
    if "\\boxed" in s or "\\fbox" in s:
        run = box_run(s)
        if run is not None:
            s = run.content
    s = _strip_delimiters(s)
    s = s.replace("\n", " ").replace("\t", " ").replace("≈", "\\approx ")
    if "matrix" not in s and "array" not in s:  # "\\frac" written with a doubled backslash
        s = re.sub(r"\\\\(?=[A-Za-z])", r"\\", s)
    s = re.sub(r"(?:\s*\\\\?)+$", "", s)  # a trailing line break or stray backslash: "42\\"
    s = re.sub(r"\\[dtc]frac(?![A-Za-z])", r"\\frac", s)
    # unbraced \frac arguments are one token each, as in TeX: "\frac\pi 2", "\frac12", "\frac{a}2"
    s = re.sub(r"\\frac(?![A-Za-z])\s*(\\[A-Za-z]+|[0-9A-Za-z])", r"\\frac{\1}", s)
    s = re.sub(r"\\frac(\{[^{}]*\})\s*(\\[A-Za-z]+|[0-9A-Za-z])", r"\\frac\1{\2}", s)
    s = re.sub(r"\\[hv]?phantom\s*(?:\{[^{}]*\}|\\?.)", "", s)  # invisible spacing
    # "\sqrt2" / "\sqrt[3]2": an unbraced argument is one character, as in TeX
    s = re.sub(r"\\sqrt\s*(\[[^\]]*\])?\s*([0-9A-Za-z])", r"\\sqrt\1{\2}", s)
    s = re.sub(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![A-Za-z])\s*\.?", "", s)
    s = re.sub(r"\\(?:displaystyle|textstyle|limits)(?![A-Za-z])", "", s)
    # thousands separators written with spacing: a comma in it stays a comma (decided below,
    # when we know whether the whole answer is one number), pure spacing joins the digits
    s = _NUMBER_SPACING_RE.sub(lambda m: "," if "," in m.group(0) else "", s)
    # spacing commands become spaces; a LaTeX line break \\ (matrix rows) is kept as it is
    s = re.sub(r"\\\\|\\[,;:! ]|\\q?quad(?![A-Za-z])|~", lambda m: m.group(0) if m.group(0) == "\\\\" else " ", s)
    s = s.replace("{,}", ",")
    # degrees and currency
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![A-Za-z])", "", s)
    s = re.sub(r"\\\$|\$|€|£|¥", "", s)
    # percent: one canonical "\%" (math-verify reads it as /100)
    s = re.sub(r"\\?%", "%", s)
    s = re.sub(r"\s*\\text\s*\{\s*(?:percent|percentage|pct)\s*\}", "%", s)
    s = re.sub(r"\s*\b(?:percent|percentage|pct)\b\.?\s*$", "%", s)
    s = s.replace("%", "\\%")
    whole_text = re.fullmatch(r"\\(?:" + "|".join(_TEXT_CMDS) + r")\s*\{([^{}]*)\}", s.strip())
    if whole_text and re.fullmatch(r"[A-Za-z][A-Za-z .'\-]*", whole_text.group(1).strip()):
        words = " ".join(whole_text.group(1).split()).rstrip(".")
        return "\\text{" + words + "}"
    s = _replace_text_commands(s, whole=bool(whole_text))
    s = re.sub(r"(?<=[\w})\]])\s*,?\s+(?:and|or)\s+(?=[-\w\\({\[$])", ", ", s)  # "19, 46, and 82"
    s = re.sub(r",\s*(?:,\s*)+", ", ", s)
    # units as bare words at the end ("125 miles", "6 square units")
    for _ in range(2):
        s = _UNIT_TAIL_RE.sub("", s).rstrip()
        s = _UNIT_TAIL_SPACED_RE.sub("", s).rstrip()
    # an answer stated in words around the value: "just about 1", "exactly 5" -> the value; a bound
    # ("at least 5", "almost 5") is not the value, and stays words
    s = _QUALIFIER_RE.sub("", s.strip())
    if _BOUND_RE.match(s):
        return "\\text{" + " ".join(s.split()) + "}"
    s = re.sub(r"\binfinity\b", r"\\infty", s)
    s = s.replace("±", "\\pm").replace("+-", "\\pm")
    s = re.sub(r"(?<=\d)\.(?=[\s/),}\]]|$)", "", s)  # "-1./3" -> "-1/3"
    s = _SCI_RE.sub(r"\1\\times10^{\2}", s)
    # relations: "x \in S" -> S; "x = 2+3 = 5" -> "x = 5"; "2+3 = 5" -> 5; approximations
    m = re.fullmatch(r"\s*[A-Za-z](?:_\{?\w+\}?)?\s*\\in(?![A-Za-z])(.+)", s)
    if m:
        s = m.group(1)
    s = _approx(" ".join(s.split()))
    exact, sep, approx = s.partition(APPROX_TOKEN)
    if len(_split_top_level(exact, _COMMA_RE)) == 1:
        parts = _split_top_level(exact, _EQ_RE)
        if len(parts) >= 3 and parts[-1].strip():
            exact = parts[0].strip() + " = " + parts[-1].strip()
        elif len(parts) == 2 and parts[1].strip() and _is_numeric(parts[0]) and _is_numeric(parts[1]):
            exact = parts[1]  # "2+3 = 5", "\frac{1}{2} = 0.5": arithmetic shown, the value is on the right
    s = exact + sep + approx
    s = " ".join(s.split())
    s = s.strip().rstrip(".;,").strip()
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    elif "," in s:  # a whole brace group that is one number: "\frac{1}{29,322,216}"
        s = re.sub(r"(?<!\\)\{(" + _THOUSANDS_RE.pattern + r")\}", lambda m: "{" + m.group(1).replace(",", "") + "}", s)
    elif _SPACED_THOUSANDS_RE.fullmatch(s):
        s = s.replace(" ", "")
    if _DECIMAL_COMMA_NUMBER_RE.fullmatch(s):  # "0,05", "1.000,5": a decimal comma (cannot be a list)
        s = s.replace(".", "").replace(",", ".")
    s = _join_spaced_digits(s)
    # a mixed number as the whole answer: "4 4/9", "2\frac{1}{4}" (MATH's convention) -> 4 + 4/9
    m = _MIXED_RE.fullmatch(s)
    if m:
        sign, whole, num, den = m.group(1), m.group(2), m.group(3) or m.group(5), m.group(4) or m.group(6)
        s = f"{sign}({whole}+\\frac{{{num}}}{{{den}}})"
    # a bare word answer ("Evelyn", "even"): keep it one word, not a product of letters
    if re.fullmatch(r"[A-Za-z]{3,}(?: [A-Za-z]+)*", s) and s not in ("oo",):
        s = "\\text{" + s + "}"
    return s


def simple_rhs(norm: str) -> str | None:
    """The right side of ``name = value`` (a single variable, subscripted name or f(x) on the left)."""
    if len(_split_top_level(norm, _COMMA_RE)) == 1:
        parts = _split_top_level(norm, _EQ_RE)
        if len(parts) == 2 and _SIMPLE_LHS_RE.fullmatch(parts[0]) and parts[1].strip():
            return parts[1].strip()
    return None


def fast_key(norm: str) -> str:
    """A cheap canonical key: equal keys mean equal answers (no sympy needed)."""
    norm = norm.partition(APPROX_TOKEN)[0]  # an approximation chain is judged by its exact part
    rhs = simple_rhs(norm)
    s = norm if rhs is None else rhs
    s = re.sub(r"\s+", "", s)
    m = re.fullmatch(r"\\text\{(.*)\}", s)
    if m:
        s = m.group(1)
    m = re.fullmatch(r"\(?([A-Ea-e])\)?", s)
    if m:
        return m.group(1).upper()
    if s.isalpha() and len(s) >= 2:
        s = s.lower()
    return s


_INT_OR_DECIMAL_RE = re.compile(r"([+-]?)(\d+(?:\.\d*)?|\.\d+)")
_FRACTION_RE = re.compile(r"([+-]?)\s*(?:\\frac\{\s*([+-]?)\s*(\d+)\s*\}\{\s*(\d+)\s*\}|(\d+)\s*/\s*(\d+))")


def _rational(norm: str):
    """(exact value, written with a decimal point) of an answer that is one plain number: an
    integer, a decimal, or a fraction of integers (``\\frac{a}{b}``, ``a/b``); else None."""
    from fractions import Fraction

    m = _INT_OR_DECIMAL_RE.fullmatch(norm)
    if m:
        value = Fraction(m.group(2) if m.group(2) != "." else "0")
        return (-value if m.group(1) == "-" else value), "." in m.group(2)
    m = _FRACTION_RE.fullmatch(norm.strip())
    if m:
        num, den = (m.group(3), m.group(4)) if m.group(3) is not None else (m.group(5), m.group(6))
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        negative = (m.group(1) == "-") != (m.group(2) == "-")
        return (-value if negative else value), False
    return None


def number_verdict(pred_norm: str, gold_norm: str) -> str | None:
    """ "correct"/"wrong" when both answers are plain numbers and the verdict needs no rounding
    rule; None otherwise (the worker decides).

    Integers and fractions are compared exactly (which also avoids math-verify's float compare of
    tiny rationals); equal values are equal however written (0.5 and \\frac12). A decimal that
    differs from an exact value may still be its rounding (0.3333 for 1/3): that goes to the
    worker, except two decimals of at most 6 places, which differ at math-verify's precision too.
    Most AIME/AMC/GSM8K/MATH answers are such numbers, right or wrong: this keeps them off the pool.
    """
    if len(pred_norm) > 60 or len(gold_norm) > 60:
        return None
    p, g = _rational(pred_norm), _rational(gold_norm)
    if p is None or g is None:
        return None
    if p[0] == g[0]:
        return "correct"
    if not p[1] and not g[1]:
        return "wrong"
    if p[1] and g[1] and max(len(x.partition(".")[2]) for x in (pred_norm, gold_norm)) <= 6:
        return "wrong"
    return None


@lru_cache(maxsize=65536)
def normalize_gold(gold: str) -> tuple[str, str]:
    """(normalised gold, fast key); cached because every rollout of a group shares its gold."""
    norm = normalize_answer(gold_answer(gold))
    return norm, fast_key(norm)
