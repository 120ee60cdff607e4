"""Verifiable math reward: our answer extraction and normalisation around math-verify.

Pipeline for one (completion, gold) pair
----------------------------------------
1. ``extract_answer(completion)``: the model's final answer as a string, or None. Order:
   the text after the last ``</think>`` first (then the whole text); inside it the last
   ``<answer>...</answer>``; the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces);
   the last "final answer is" / "the answer is" / "Answer:" phrase; and a completion that is
   a single line (at most ``MAX_ONE_LINE_CHARS``) is its own answer (the "plain" prompt ends
   in "Answer:"; in a one-line sentence the last math expression or number counts). Longer
   text with none of these markers has no answer (reward 0) unless ``lenient=True``, which then
   takes the last ``$...$`` / ``\\(...\\)`` / ``\\[...\\]`` or the last number. Text after a
   chat special token (``<|im_start|>``, ``<|im_end|>``, ...) is ignored, so a hallucinated
   next turn cannot supply the answer.
2. ``normalize_answer(answer)`` (applied to prediction and gold alike): strip math delimiters
   and ``\\boxed``; ``\\dfrac``/``\\tfrac``/``\\cfrac`` -> ``\\frac``; drop ``\\left``/``\\right``,
   spacing commands, ``\\displaystyle``; drop units (``\\text{ cm}^2``, "125 miles"), ``\\$``,
   degrees (``^\\circ``, ``°``); unwrap ``\\text``/``\\mathrm``/``\\textbf`` (a whole-answer word such
   as ``\\text{Evelyn}`` stays a single word); thousands separators ``1,000`` / ``1{,}000`` ->
   ``1000`` only when the whole answer is one number (``0,1`` stays a pair; see
   EleutherAI/lm-evaluation-harness#4038); scientific ``4.5e33`` -> ``4.5\\times10^{33}``;
   ``a \\approx b`` -> ``b``; ``x \\in S`` -> ``S``; ``±`` -> ``\\pm``; a whole-answer mixed number
   (``4 4/9``, ``2\\frac{1}{4}``) -> ``4+\\frac{4}{9}``.
3. Fast path: if the two normalised strings agree (spaces ignored, a leading ``x =`` ignored,
   words compared case-insensitively, ``(C)`` == ``C``) the score is 1.0 and nothing else runs.
4. Otherwise math-verify parses both (LaTeX path only, see "Safety") and compares them
   symbolically/numerically (gold parsed once per worker process and cached). A positive
   answer between two exact rational numbers is re-checked exactly, which removes
   math-verify's float-precision false positives such as 1/2^99 == 1/2^98
   (huggingface/Math-Verify#14).

Choices worth knowing
---------------------
* Percentages: ``50\\%`` equals both ``50`` and ``0.5`` (the % sign means /100, and percent
  questions are usually answered without the sign); ``50`` and ``0.5`` without a % sign
  are different. This matches math-verify and Qwen2.5-Math's grader.
* ``x = 5`` equals ``5`` (and ``y = 2x+3`` equals ``2x+3`` and ``2x - y + 3 = 0``);
  ``a \\approx b`` is judged by ``b`` only.
* Intervals keep their brackets: ``(1,2)`` != ``[1,2]``; a bare ``1, 2`` is a set.
* Unreduced fractions count: ``\\frac{2}{4}`` == ``\\frac{1}{2}`` (PRM800K's grader rejects them).

Time limits
-----------
math-verify guards itself with ``signal.alarm``, which only works in a main thread. We call
it with ``parsing_timeout=None`` / ``timeout_seconds=None`` and enforce the limit ourselves:
``MathVerifier`` runs the symbolic step in worker processes (``conspo.rewards.pool``) and
kills any worker that passes ``timeout_s``; that answer scores 0 and is counted as a timeout.
``math_reward`` uses a shared one-worker verifier, started on first need.

Safety
------
Model text is never executed. Our code applies no ``eval``/``exec``/``sympify``/``parse_expr``
to it. math-verify's ``ExprExtractionConfig`` path *does* call ``sympy.parse_expr`` (which
uses ``eval``) on regex-matched substrings of the text (math_verify/parser.py,
``parse_expr_cached``); its regex only admits digits and operators, but we do not rely on
that: only ``LatexExtractionConfig`` is used. Its latex2sympy parser builds sympy objects from
an ANTLR parse tree. One narrow exception there, checked by tests/test_rewards.py: each NUMBER
token (digits, separators and a decimal point only, by the lexer) becomes
``sympy.Number(text)``, and sympy evaluates that as its own ``Integer (12 )`` /
``Float ('0.25' )`` wrapper; no identifier chosen by the model ever reaches ``eval``.
"""

from __future__ import annotations

import atexit
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

from conspo.rewards.pool import HardTimeoutPool

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MathVerifier",
    "VerifyResult",
    "answers_match",
    "extract_answer",
    "math_reward",
    "normalize_answer",
]

#: Default hard limit for the symbolic comparison of one answer, in seconds.
DEFAULT_TIMEOUT_S = 5.0
#: Extracted answers longer than this are not verified (score 0): no real final answer is this long.
MAX_ANSWER_CHARS = 4000
#: A completion with no answer marker that is one line of at most this many characters is taken
#: as the answer line (the "plain" prompt template ends in "Answer:").
MAX_ONE_LINE_CHARS = 300

# ---------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------

#: Chat/special tokens after which text belongs to another turn (decoders sometimes keep them).
_TURN_MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>",
                 "<｜end▁of▁sentence｜>", "</s>")
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
_PHRASE_RE = re.compile(
    r"final\s+answer(?:\s+is\b|\s*\**\s*:|\s*\**\s*\n)|answer\s+is\b|answer\s*:|answer(?=\s*(?:\$|\\\[|\\\())",
    re.IGNORECASE,
)
_HOPE_RE = re.compile(r"\s*I hope it is correct.*$", re.IGNORECASE | re.DOTALL)
_NUMBER_RE = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
_WORD_RE = re.compile(r"[A-Za-z]{2,}")


def _balanced(text: str, open_idx: int) -> tuple[str | None, int]:
    """Content of the brace group opening at ``text[open_idx] == "{"`` and the index after it.

    Escaped braces (``\\{``, ``\\}``) do not count. Returns (None, len) when never closed.
    """
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_idx + 1 : i], i + 1
        i += 1
    return None, n


def _closing_braces(text: str) -> dict[int, int]:
    """Index of each ``{`` -> index of its matching ``}`` (escaped braces skipped); one O(n) pass."""
    stack: list[int] = []
    match: dict[int, int] = {}
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            match[stack.pop()] = i
        i += 1
    return match


def last_boxed(text: str) -> str | None:
    """Content of the last non-empty ``\\boxed{...}`` / ``\\fbox{...}`` (also ``\\boxed 5``).

    Linear in the text length, also for adversarial input (thousands of unclosed boxes).
    """
    found = None
    closing: dict[int, int] | None = None
    for m in _BOX_RE.finditer(text):
        j = m.end()
        if j < len(text) and text[j] == "{":
            if closing is None:
                closing = _closing_braces(text)
            end = closing.get(j)
            content = text[j + 1 : end] if end is not None else None
        else:
            mm = re.match(r"[^\s$]{1,200}", text[j : j + 201])
            content = mm.group(0) if mm else None
        if content is not None and content.strip():
            found = content
    return found


def _math_env_at(s: str) -> str | None:
    """If ``s`` starts with a math environment ($$..$$, \\[..\\], $..$, \\(..\\)), return its content."""
    for open_, close in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if s.startswith(open_):
            end = s.find(close, len(open_))
            if open_ == "$":  # skip escaped \$ inside inline math
                while end != -1 and s[end - 1] == "\\":
                    end = s.find(close, end + 1)
            if end == -1:
                return None
            content = s[len(open_) : end]
            if open_ in ("$", "\\(") and "\n" in content:  # inline math does not span lines
                return None
            return content
    return None


_ENV_RE = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<!\\)\$((?:\\\$|[^$])+?)(?<!\\)\$", re.DOTALL)


def _last_math_env(s: str) -> str | None:
    last = None
    for m in _ENV_RE.finditer(s):
        content = next(g for g in m.groups() if g is not None)
        if content.strip():
            last = content
    return last


def _answer_from_line(rest: str, *, after_phrase: bool = True) -> str | None:
    """The answer in the text that follows an answer phrase (or in a one-line completion)."""
    rest = rest.lstrip(" \t*:")
    if rest.startswith("\n"):  # "**Final Answer**\n\n42": the answer is on the next non-empty line
        rest = rest.lstrip(" \t\n*:")
    env = _math_env_at(rest)
    if env is not None and env.strip():
        return env
    line = rest.split("\n", 1)[0]
    line = _HOPE_RE.sub("", line).strip().rstrip(".").strip()
    # "Final Answer: the largest $n$ is 34." -> judge what follows the last " is ".
    if after_phrase and " is " in line:
        line = line.rsplit(" is ", 1)[1].strip()
        env = _math_env_at(line)
        if env is not None and env.strip():
            return env
    if "$" in line or "\\(" in line or "\\[" in line:
        env = _last_math_env(line)
        if env is not None:
            return env
    if len(_WORD_RE.findall(_strip_latex_commands(line))) >= 3:  # a sentence: take its last number
        nums = _NUMBER_RE.findall(line)
        return nums[-1] if nums else None
    line = line.strip("* ").rstrip(".")
    return line if re.search(r"\w", line) else None


def _strip_latex_commands(s: str) -> str:
    return re.sub(r"\\[A-Za-z]+", " ", s)


def _extract_region(text: str, lenient: bool) -> str | None:
    lower = text.lower()
    start = lower.rfind("<answer>")
    if start != -1:  # the last <answer>...</answer> (or <answer>... to the end)
        end = lower.find("</answer>", start)
        inner = text[start + len("<answer>") : end if end != -1 else len(text)]
        ans = _extract_region(inner, lenient)
        if ans:
            return ans
        inner = inner.strip()
        if inner and len(inner) <= 200:
            return _answer_from_line(inner) or inner
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    phrases = list(_PHRASE_RE.finditer(text))
    for m in reversed(phrases[-20:]):  # the last phrase that is followed by something usable
        ans = _answer_from_line(text[m.end() : m.end() + 2000])
        if ans:
            return ans
    stripped = text.strip()
    if stripped and "\n" not in stripped and len(stripped) <= MAX_ONE_LINE_CHARS:
        return _answer_from_line(stripped, after_phrase=False)
    if lenient:
        env = _last_math_env(text)
        if env is not None:
            return env
        nums = _NUMBER_RE.findall(text)
        return nums[-1] if nums else None
    return None


def extract_answer(completion: str, *, lenient: bool = False) -> str | None:
    """The final answer stated in ``completion``, as raw text, or None (see module docstring)."""
    if not isinstance(completion, str) or not completion:
        return None
    text = completion
    if any(marker in text for marker in _TURN_MARKERS):  # keep the first turn that has content
        pieces = re.split("|".join(re.escape(m) for m in _TURN_MARKERS), text)
        text = next((p for p in pieces if p.strip()), "")
    if "</think>" in text:
        ans = _extract_region(text.rsplit("</think>", 1)[1], lenient)
        if ans is not None:
            return ans
    return _extract_region(text, lenient)


# ---------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------

_TEXT_CMDS = ("text", "textbf", "textit", "textnormal", "textrm", "textsf", "texttt", "mathrm",
              "mathbf", "mathit", "mathsf", "mbox", "hbox", "rm")
_TEXT_CMD_RE = re.compile(r"\\(" + "|".join(_TEXT_CMDS) + r")(?![A-Za-z])\s*(?=\{)")
_UNITS = sorted(
    """cm mm km meters meter metres metre inches inch feet foot ft yards yard miles mile mph kph
    kmh kg grams gram pounds pound lbs lb ounces ounce oz liters liter litres litre ml gallons
    gallon degrees degree dollars dollar cents cent units unit hours hour hrs hr minutes minute
    mins min seconds second secs sec days day weeks week months month years year people
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
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SIMPLE_LHS_RE = re.compile(
    r"\s*(?:[A-Za-z]|\\[A-Za-z]+|[A-Z]{2,3})(?:_\{?[\w\\ ]+\}?)?'*(?:\([^()=]*\))?\s*"
)
_MIXED_RE = re.compile(r"([+-]?)(\d+)\s*(?:\s(\d+)/(\d+)|\\frac\{(\d+)\}\{(\d+)\})")


def _replace_text_commands(s: str, whole: bool) -> str:
    """Unwrap ``\\text{...}``-like commands: units are dropped, "and"/"or" become commas."""
    out = []
    i = 0
    for _ in range(100):  # bounded: at most 100 wrappers
        m = _TEXT_CMD_RE.search(s, i)
        if m is None:
            break
        content, end = _balanced(s, m.end())
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
_APPROX_RE = re.compile(r"\\approx(?![A-Za-z])|≈")


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


def normalize_answer(answer: str) -> str:
    """Canonical text of an answer (prediction or gold); see the module docstring for the rules."""
    s = str(answer).strip()
    if "\\boxed" in s or "\\fbox" in s:
        b = last_boxed(s)
        if b is not None:
            s = b
    s = _strip_delimiters(s)
    s = s.replace("\n", " ").replace("\t", " ")
    if "matrix" not in s and "array" not in s:  # "\\frac" written with a doubled backslash
        s = re.sub(r"\\\\(?=[A-Za-z])", r"\\", s)
    s = re.sub(r"\\[dtc]frac(?![A-Za-z])", r"\\frac", s)
    # "\sqrt2" / "\sqrt[3]2": an unbraced argument is one character, as in TeX
    s = re.sub(r"\\sqrt\s*(\[[^\]]*\])?\s*([0-9A-Za-z])", r"\\sqrt\1{\2}", s)
    s = re.sub(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![A-Za-z])\s*\.?", "", s)
    s = re.sub(r"\\(?:displaystyle|textstyle|limits)(?![A-Za-z])", "", s)
    # thousands separators written with spacing ("10,\!000", "1{,}000", "1\,000")
    s = re.sub(r"(?<=\d)(?:\{,\}|,\\!|\\,|\\!)(?=\d{3})", lambda m: "," if "," in m.group(0) else "", s)
    s = re.sub(r"\\[,;:! ]|\\q?quad(?![A-Za-z])|~", " ", s)
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
    s = re.sub(r"\binfinity\b", r"\\infty", s)
    s = s.replace("±", "\\pm").replace("+-", "\\pm")
    s = re.sub(r"(?<=\d)\.(?=[\s/),}\]]|$)", "", s)  # "-1./3" -> "-1/3"
    s = _SCI_RE.sub(r"\1\\times10^{\2}", s)
    # relations: "a \approx b" -> b; "x \in S" -> S; "x = 2+3 = 5" -> "x = 5"; "2+3 = 5" -> 5
    approx = _APPROX_RE.split(s)
    if len(approx) > 1 and approx[-1].strip():
        s = approx[-1]
    m = re.fullmatch(r"\s*[A-Za-z](?:_\{?\w+\}?)?\s*\\in(?![A-Za-z])(.+)", s)
    if m:
        s = m.group(1)
    if len(_split_top_level(s, _COMMA_RE)) == 1:
        parts = _split_top_level(s, _EQ_RE)
        if len(parts) >= 3 and parts[-1].strip():
            s = parts[0].strip() + " = " + parts[-1].strip()
        elif len(parts) == 2 and parts[1].strip() and _is_numeric(parts[0]) and _is_numeric(parts[1]):
            s = parts[1]  # "2+3 = 5", "\frac{1}{2} = 0.5": arithmetic shown, the value is on the right
    s = " ".join(s.split())
    s = s.strip().rstrip(".;,").strip()
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    # a mixed number as the whole answer: "4 4/9", "2\frac{1}{4}" (MATH's convention) -> 4 + 4/9
    m = _MIXED_RE.fullmatch(s)
    if m:
        sign, whole, num, den = m.group(1), m.group(2), m.group(3) or m.group(5), m.group(4) or m.group(6)
        s = f"{sign}({whole}+\\frac{{{num}}}{{{den}}})"
    # a bare word answer ("Evelyn", "even"): keep it one word, not a product of letters
    if re.fullmatch(r"[A-Za-z]{3,}(?: [A-Za-z]+)*", s) and s not in ("oo",):
        s = "\\text{" + s + "}"
    return s


def _simple_rhs(norm: str) -> str | None:
    """The right side of ``name = value`` (a single variable, subscripted name or f(x) on the left)."""
    if len(_split_top_level(norm, _COMMA_RE)) == 1:
        parts = _split_top_level(norm, _EQ_RE)
        if len(parts) == 2 and _SIMPLE_LHS_RE.fullmatch(parts[0]) and parts[1].strip():
            return parts[1].strip()
    return None


def _fast_key(norm: str) -> str:
    """A cheap canonical key: equal keys mean equal answers (no sympy needed)."""
    rhs = _simple_rhs(norm)
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


@lru_cache(maxsize=65536)
def _normalize_gold(gold: str) -> tuple[str, str]:
    """(normalised gold, fast key); cached because every rollout of a group shares its gold."""
    norm = normalize_answer(gold)
    return norm, _fast_key(norm)


# ---------------------------------------------------------------------------------------
# Symbolic comparison (runs inside worker processes; no time limit of its own)
# ---------------------------------------------------------------------------------------

_MV: dict = {}


def _math_verify():
    """Import math-verify once, with its own signal-based timeouts off and their warning silenced."""
    if not _MV:
        import math_verify.grader as grader
        import math_verify.parser as parser
        from math_verify import LatexExtractionConfig, parse, verify

        grader.TIMEOUT_WARNING_SHOWN = True  # we pass timeout None on purpose: limits are ours
        parser.TIMEOUT_WARNING_SHOWN = True
        _MV.update(parse=parse, verify=verify, config=[LatexExtractionConfig(boxed_match_priority=0)])
    return _MV


def _parse_latex(norm: str) -> list:
    mv = _math_verify()
    # LaTeX path only: ExprExtractionConfig would run sympy.parse_expr (eval) on model text.
    parsed = mv["parse"]("$" + norm + "$", extraction_config=mv["config"], parsing_timeout=None)
    if not any(not isinstance(x, str) for x in parsed):
        # "m_{\max} = n^2-n-1": if the equation does not parse, the value on the right may
        rhs = _simple_rhs(norm)
        if rhs is not None:
            parsed = mv["parse"]("$" + rhs + "$", extraction_config=mv["config"], parsing_timeout=None) or parsed
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


def answers_match(pred_norm: str, gold_norm: str) -> bool:
    """Symbolic equivalence of two *normalised* answers, in this process, with no time limit.

    This is the function the verification workers run; call it directly only on trusted input
    or where a hang is acceptable (use ``MathVerifier`` / ``math_reward`` otherwise).
    """
    if _fast_key(pred_norm) == _fast_key(gold_norm):
        return True
    gold_parsed = _parse_gold(gold_norm)
    if not gold_parsed:
        return False
    pred_parsed = _parse_latex(pred_norm)
    if not pred_parsed:
        return False
    ok = bool(_math_verify()["verify"](list(gold_parsed), pred_parsed, timeout_seconds=None))
    if ok and _exact_rational_mismatch(gold_parsed, pred_parsed):
        return False
    return ok


def _warm_up() -> None:
    """Worker initializer: import sympy/math-verify before the first task's clock starts."""
    answers_match("1", "\\frac{2}{2}")


# ---------------------------------------------------------------------------------------
# Batch API with hard time limits
# ---------------------------------------------------------------------------------------


@dataclass
class VerifyResult:
    """Scores of one batch and what happened while computing them.

    scores: 1.0 / 0.0 per completion, in input order.
    timeouts: answers whose symbolic check ran past the limit (scored 0).
    errors: answers whose check raised or whose worker died (scored 0).
    no_answer: completions with no extractable final answer (scored 0; not an error).
    fast_path: answers decided by string comparison alone.
    seconds: wall-clock time of the call.
    """

    scores: list[float]
    timeouts: int = 0
    errors: int = 0
    no_answer: int = 0
    fast_path: int = 0
    seconds: float = 0.0
    error_messages: list[str] = field(default_factory=list)


class MathVerifier:
    """Scores completions against gold answers with a hard per-answer time limit, from any thread.

    Args:
        num_workers: verification processes (default: all cores). Started on first need: a batch
            decided entirely by the fast path starts none.
        timeout_s: hard limit for the symbolic comparison of one answer.
        lenient: extraction fallback to the last math expression / number (see ``extract_answer``).
        max_memory_mb: address-space limit per worker process (None: unlimited).
        cache_size: (prediction, gold) results kept across calls; repeated answers (common across
            the rollouts of a group) are verified once. 0 disables.

    Use as a context manager or call ``close()``; ``score`` is thread-safe.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        lenient: bool = False,
        max_memory_mb: int | None = 4096,
        cache_size: int = 65536,
    ):
        self.pool = HardTimeoutPool(
            answers_match,
            num_workers=num_workers,
            timeout_s=timeout_s,
            max_memory_mb=max_memory_mb,
            initializer=_warm_up,
        )
        self.timeout_s = float(timeout_s)
        self.lenient = lenient
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self._cache_lock = threading.Lock()

    @property
    def num_workers(self) -> int:
        return self.pool.num_workers

    def score(self, completions: Sequence[str], golds: Sequence[str], *, timeout_s: float | None = None) -> VerifyResult:
        """Score ``completions[i]`` against ``golds[i]`` for every i (1.0 equivalent, else 0.0)."""
        t0 = time.perf_counter()
        if len(completions) != len(golds):
            raise ValueError(f"got {len(completions)} completions but {len(golds)} gold answers")
        scores = [0.0] * len(completions)
        res = VerifyResult(scores=scores)
        pending: dict[tuple[str, str], list[int]] = {}
        for i, (completion, gold) in enumerate(zip(completions, golds)):
            if not isinstance(gold, str) or not gold.strip():
                raise ValueError(f"gold answer {i} must be a non-empty string, got {gold!r}")
            gold_norm, gold_key = _normalize_gold(gold)
            pred = extract_answer(completion, lenient=self.lenient)
            if pred is None or not pred.strip() or len(pred) > MAX_ANSWER_CHARS:
                res.no_answer += 1
                continue
            pred_norm = normalize_answer(pred)
            if _fast_key(pred_norm) == gold_key:
                scores[i] = 1.0
                res.fast_path += 1
                continue
            key = (pred_norm, gold_norm)
            cached = self._cache_get(key)
            if cached is not None:
                scores[i] = float(cached)
                continue
            pending.setdefault(key, []).append(i)
        if pending:
            keys = list(pending)
            outcomes = self.pool.run(keys, timeout_s=timeout_s)
            for key, out in zip(keys, outcomes):
                idx = pending[key]
                if out.status == "ok":
                    for i in idx:
                        scores[i] = 1.0 if out.value else 0.0
                    self._cache_put(key, bool(out.value))
                elif out.status == "timeout":
                    res.timeouts += len(idx)
                else:
                    res.errors += len(idx)
                    res.error_messages.append(str(out.value))
        res.seconds = time.perf_counter() - t0
        return res

    def _cache_get(self, key):
        if self.cache_size <= 0:
            return None
        with self._cache_lock:
            v = self._cache.get(key)
            if v is not None:
                self._cache.move_to_end(key)
            return v

    def _cache_put(self, key, value: bool) -> None:
        if self.cache_size <= 0:
            return
        with self._cache_lock:
            self._cache[key] = value
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def close(self) -> None:
        """Stop the worker processes (idempotent)."""
        self.pool.close()

    def __enter__(self) -> "MathVerifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_DEFAULT: dict[str, MathVerifier] = {}
_DEFAULT_LOCK = threading.Lock()


def _default_verifier() -> MathVerifier:
    with _DEFAULT_LOCK:
        v = _DEFAULT.get("v")
        if v is None:
            v = _DEFAULT["v"] = MathVerifier(num_workers=1, timeout_s=DEFAULT_TIMEOUT_S)
            atexit.register(v.close)
        return v


def math_reward(completion: str, gold: str, *, timeout_s: float | None = None) -> float:
    """1.0 if the final answer in ``completion`` is mathematically equivalent to ``gold``, else 0.0.

    Safe from any thread: the symbolic step runs in a shared one-worker ``MathVerifier`` with a
    hard time limit (``DEFAULT_TIMEOUT_S`` unless ``timeout_s`` is given). For batches, create a
    ``MathVerifier`` and call ``score``: it verifies in parallel and reports timeouts.
    """
    return _default_verifier().score([completion], [gold], timeout_s=timeout_s).scores[0]

