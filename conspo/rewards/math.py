"""Verifiable math reward: answer extraction and normalisation around math-verify.

Pipeline for one (completion, gold) pair
----------------------------------------
1. ``extract_answer(completion)``: the model's final answer as a string, or None (the rules
   follow math-verify's own extraction priorities; see "Extraction policy" below).
2. The gold goes through the same extraction when it is itself a worked solution (it holds a
   ``\\boxed{}``, a "final answer"/"the answer is" phrase, a GSM8K ``#### N`` line, or is prose);
   a plain gold answer is used as it is.
3. ``normalize_answer(answer)`` (prediction and gold alike): strip math delimiters and
   ``\\boxed``; ``\\dfrac``/``\\tfrac``/``\\cfrac`` -> ``\\frac``; drop ``\\left``/``\\right``,
   spacing commands, ``\\displaystyle``, units (``\\text{ cm}^2``, "125 miles"), ``\\$``, degrees;
   thousands separators (``1,000``, ``1{,}000``, ``10,\\! 000``, ``3\\,628\\,800``, ``1 000 000``)
   only when the whole answer is one number (``0,1`` stays a pair: lm-evaluation-harness#4038);
   digits separated by spaces are one number when they are thousands groups (``10 000``) or,
   as the whole answer, the right side of ``name =`` or a ``\\mathbf``/``\\text`` group, single
   digits (``2 0 2 8``); never a sum or product (see "Spaced digits" below);
   scientific ``4.5e33`` -> ``4.5\\times10^{33}``; ``x \\in S`` -> ``S``; a mixed number
   ``4 4/9`` -> ``4+\\frac{4}{9}``; a trailing LaTeX line break (``42\\\\``) is dropped.
4. Fast path, in the calling process: if the two normalised strings agree (spaces ignored, a
   leading ``x =`` ignored, words compared case-insensitively, ``(C)`` == ``C``) the answer is
   correct; if both are plain numbers (integers, decimals, ``\\frac{a}{b}``) they are compared
   exactly when no rounding rule can apply. Nothing else runs for these (most integer answers).
5. Otherwise a worker process parses both with math-verify (``LatexExtractionConfig`` with
   ``boxed_match_priority=0``; LaTeX path only, see "Safety") and compares them with
   ``math_verify.verify``, plus the rules under "Choices worth knowing".

Each completion gets a status (``VerifyResult.statuses``): "correct", "wrong", "no_answer" (no
final answer could be extracted, or the text retracted it), "ambiguous" (digits separated by a
space that no rule reads as one number: ``\\boxed{12 3}``), "timeout" (the check ran past its limit), "gold_unparsable"
(math-verify cannot parse the gold; such a gold still matches a prediction with the same
normalised text) or "error" (the check raised or its worker died). ``conspo audit-rewards``
(conspo/audit.py) prints them for a run or an evaluation.

Extraction policy (``extract_answer``)
--------------------------------------
Text after a chat special token (``<|im_start|>``, ``<|im_end|>``, ...) is ignored, so a
hallucinated next turn cannot supply the answer; the text after the last ``</think>`` is
searched first, then the whole text. Inside it, in this order:

* the last ``<answer>...</answer>``;
* the last ``\\boxed{...}`` / ``\\fbox{...}``, together with the boxes just before it when only
  layout or "and" / "or" / "," separate them (``\\boxed{-2} and \\boxed{1}`` is the answer
  ``-2, 1``; "first \\boxed{1} then \\boxed{2}" answers 2): math-verify's multiple-box rule. A
  "final answer" sentence written after the last box wins over the box (as in math-verify,
  where both have the top priority);
* the last "final answer is" / "the answer is" / "Answer:" phrase, or GSM8K's ``#### N``; math
  right after it is read with the environments joined to it ("$x=1$ or $x=-1$");
* a completion that is a single line (at most ``MAX_ONE_LINE_CHARS``) is its own answer;
* **lenient** (the default): otherwise the last math expression of the text, i.e. the last
  well-formed ``$...$`` / ``\\(...\\)`` / ``\\[...\\]`` (with the ones joined to it by
  "and"/"or"/",") or the last number of the prose outside math, whichever ends later. This is
  math-verify's "no anchor" fallback; ours adds that a value the text then rejects ("... so
  there are no solutions") is no answer. With ``lenient=False`` (**strict**), text with no
  answer marker has no answer (reward 0).

Why lenient by default: it is what math-verify and the graders behind published tables do, so
``conspo eval`` numbers compare with papers, and a correct answer stated in prose ("so she has
10 apples left") is not scored as wrong. Its cost: when a model ends on a number that is not its
answer ("... the remainder is 3 when divided by 7") the last number is read. Strict mode is a
format requirement on top of correctness; use it when training should also teach the model to
mark its answer (e.g. with the "qwen_math_boxed" prompt, which asks for a box).

Choices worth knowing
---------------------
* Percentages: ``50\\%`` equals both ``50`` and ``0.5``; ``50`` and ``0.5`` differ.
* ``x = 5`` equals ``5`` (and ``y = 2x+3`` equals ``2x+3`` and ``2x - y + 3 = 0``).
* Approximation chains are judged by the exact part: ``\\frac{1}{3} \\approx 0.33`` equals
  ``\\frac{1}{3}`` (not ``0.33``); a named quantity (``x \\approx 3.14``) is judged by its value. The
  approximate part counts as well when the gold itself is a decimal number
  (``\\frac{70}{9} \\approx 7.78`` equals ``7.78``).
* A decimal for an exact gold follows the policy ``decimal_match`` (``parse_decimal_match``):
  by default ("exact") only math-verify's own comparison (6 places) counts, so ``0.333333``
  equals ``\\frac{1}{3}`` and ``0.33`` or ``3.14`` (for pi) do not; "places:N" / "sig:N" also accept
  a correctly rounded decimal with at least N places / significant digits, inside matrices,
  tuples and intervals too. A decimal gold is compared at math-verify's precision (6 places):
  ``7.8`` does not equal ``7.78``.
* Decimal commas, by context: a prediction's ``2,74`` (one comma, no space; also ``1.000,5``) is
  read as 2.74 when the gold is a decimal number written with a point. A gold ``3,5`` is the
  pair it is in MATH/OlympiadBench answer keys (all 34 such golds in ../shared/data are lists),
  and ``15, 625`` (comma and space) is always a list; a number whose comma cannot be a list
  separator (``0,05``, ``2,05``: no list element is written ``05``; ``1.000,5``) is a decimal
  on either side.
* Hedges score 0: several boxes, environments or ``\\text{ or }`` alternatives form one list
  answer (boxes join across layout, punctuation and short junk such as ``|``; environments across
  ",", ";", "and", "or"), which does not equal a single value; a bound in words ("at least 5",
  "almost 5") is not the value, while a qualifier ("just about 1", "exactly 5") is dropped. An
  answer the text then calls wrong ("\\boxed{3}. Wait, that is wrong.") is no answer.
* Spaced digits: LaTeX parsers read ``3 4`` as 3 + 4 (math-verify accepts ``\\boxed{3 4}`` for 7).
  Here digit groups separated by spaces or spacing commands are joined when they are thousands
  groups, or single digits that make up the whole answer / ``name =`` right side / text group
  (``\\mathbf{2 0 2 8}`` = 2028, ``\\boxed{3 4}`` = 34); any other such run makes the answer
  "ambiguous" (score 0).
* Intervals keep their brackets: ``(1,2)`` != ``[1,2]``; a bare ``1, 2`` is a set.
* Unreduced fractions count: ``\\frac{2}{4}`` == ``\\frac{1}{2}``.
* Exact rationals are compared exactly (math-verify compares them as floats, so
  ``1/2^{99}`` == ``1/2^{98}`` there: huggingface/Math-Verify#14).

Time limits
-----------
math-verify guards itself with ``signal.alarm``, which only works in a main thread. We call
it with ``parsing_timeout=None`` / ``timeout_seconds=None`` and enforce the limit ourselves:
``MathVerifier`` runs the symbolic step in worker processes (``conspo.rewards.pool``) and
kills any worker that passes ``timeout_s``; that answer scores 0 and its status is ``timeout``.
``math_reward`` uses a shared one-worker verifier, started on first need.

Safety
------
Model text is never executed. Our code applies no ``eval``/``exec``/``sympify``/``parse_expr``
to it. math-verify's ``ExprExtractionConfig`` path calls ``sympy.parse_expr`` (which uses
``eval``) on regex-matched substrings of the text (math_verify/parser.py,
``parse_expr_cached``); we never use that config: only ``LatexExtractionConfig``. Its latex2sympy
parser builds sympy objects from an ANTLR parse tree. One narrow exception there, checked by
tests/test_rewards.py: each NUMBER token (digits, separators and a decimal point only, by the
lexer) becomes ``sympy.Number(text)``, and sympy evaluates that as its own ``Integer (12 )`` /
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
from typing import NamedTuple, Sequence

from conspo.rewards.pool import HardTimeoutPool

__all__ = [
    "DECIMAL_MATCH_DEFAULT",
    "DEFAULT_TIMEOUT_S",
    "STATUSES",
    "MathVerifier",
    "VerifyResult",
    "answers_match",
    "check_answer",
    "extract_answer",
    "gold_answer",
    "math_reward",
    "normalize_answer",
    "parse_decimal_match",
]

#: Default hard limit for the symbolic comparison of one answer, in seconds.
DEFAULT_TIMEOUT_S = 5.0
#: Extracted answers longer than this are not verified (score 0): no real final answer is this long.
MAX_ANSWER_CHARS = 4000
#: A completion with no answer marker that is one line of at most this many characters is taken
#: as the answer line (the "plain" prompt template ends in "Answer:").
MAX_ONE_LINE_CHARS = 300
#: Why a completion scored what it did (``VerifyResult.statuses``). "error": the check raised or
#: its worker died (e.g. at the memory limit); rare, and also counted in ``VerifyResult.errors``.
#: "ambiguous": the answer has digits separated by spaces that are neither thousands groups nor a
#: spelled-out number (``\\boxed{3 4}`` against 7 or 34: see ``normalize_answer``); scored 0.
STATUSES = ("correct", "wrong", "no_answer", "ambiguous", "timeout", "gold_unparsable", "error")
#: How a decimal may stand for an exact gold (``MathVerifier(decimal_match=...)``): "exact" (the
#: default), "places:N" or "sig:N"; see ``parse_decimal_match``.
DECIMAL_MATCH_DEFAULT = "exact"

# ---------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------
#
# What is math-verify's and what is ours. The comparison, the LaTeX normalisation
# (NormalizationConfig), the joining of "a and b" inside an answer, and the parsing all run in
# math-verify (``_parse_latex``: ``parse`` with ``LatexExtractionConfig(boxed_match_priority=0)``).
# Locating the answer in the completion is ours, but it follows math-verify's priorities (boxes
# and "final answer is" first, then "answer" phrases, then the last expression) and its
# multiple-box rule. It stays ours because it measurably adds (bench/VERIFY_RESULTS.md):
# it runs in the trainer process without importing sympy, in linear time on any input, so
# that the fast path and the number path decide most completions without a worker (throughput),
# and on the development set it beats math-verify's own extraction on 7 of 8 families (multiple
# boxes, separators, decimal commas, approximations, unboxed answers, LaTeX formats), with the
# chat-turn cut, <answer> tags, GSM8K "####" and the strict switch that math-verify lacks.

#: Chat/special tokens after which text belongs to another turn (decoders sometimes keep them).
_TURN_MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>",
                 "<｜end▁of▁sentence｜>", "</s>")
_TURN_RE = re.compile("|".join(re.escape(m) for m in _TURN_MARKERS))
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
_PHRASE_RE = re.compile(
    r"final\s+answer(?:\s+is\b|\s*\**\s*:|\s*\**\s*\n)|answer\s+is\b|answer\s*:|answer(?=\s*(?:\$|\\\[|\\\())"
    r"|^[ \t]*####",  # GSM8K's "#### 42" line
    re.IGNORECASE | re.MULTILINE,
)
_FINAL_PHRASE_RE = re.compile(r"final\s+answer|####", re.IGNORECASE)
_HOPE_RE = re.compile(r"\s*I hope it is correct.*$", re.IGNORECASE | re.DOTALL)
#: A number in running text for the lenient fallback: thousands or decimal commas, a decimal
#: point, a simple fraction, a percent sign. Not preceded by a letter, digit, "_", "^", "\\" or
#: "." (so "x_2", "2^{10}" and "\\frac" do not supply numbers), as in math-verify's number regex.
_LOOSE_NUMBER_RE = re.compile(
    r"(?<![\w.^\\])-?(?:\d+(?:[,.]\d+)*|\.\d+)(?:\s*/\s*\d+(?![.,]\d))?(?:\s*(?:\\?%|percent\b))?"
)
_WORD_RE = re.compile(r"[A-Za-z]{2,}")
#: Between two boxes that form one answer (math-verify's rule): "and", "or", "," or ";".
_BOX_SEPARATOR_RE = re.compile(r"\b(?:and|or)\b|,|;")
#: Layout between boxes that carries no words: math delimiters, spacing, \text{...} braces.
_GAP_NOISE_RE = re.compile(r"\$|\\[()\[\]]|\\q?quad(?![A-Za-z])|\\[,;:! ]|\\\\|\\(?:text|mathrm|textbf|mbox)\s*\{|[{}]")
_GAP_PUNCT_RE = re.compile(r"[\s,;:*\-]*")
#: Other short gaps without words, digits or relations ("|", ".", "/", "&", "..."): also one answer,
#: as math-verify joins boxes less than 10 characters apart.
_GAP_JUNK_RE = re.compile(r"[^\w=<>\\]{0,9}")


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


_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.DOTALL)
#: Boxes examined, from the last one back: enough for any answer, and it keeps extraction linear
#: on adversarial text (thousands of unclosed boxes).
_MAX_BOXES = 64


def _closing_brace(text: str, open_idx: int) -> int | None:
    """Index of the ``}`` matching ``text[open_idx] == "{"`` (escaped braces skipped), or None."""
    depth = 0
    for m in _BRACE_TOKEN_RE.finditer(text, open_idx):
        tok = m.group(0)
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth == 0:
                return m.start()
    return None


class _Box(NamedTuple):
    start: int  # index of the backslash of \boxed
    end: int  # index after the closing brace
    content: str


def _boxes(text: str) -> list[_Box]:
    """The last (up to ``_MAX_BOXES``) non-empty ``\\boxed{...}`` / ``\\fbox{...}`` (also
    ``\\boxed 5``), in order of position."""
    if "box" not in text:
        return []
    starts = list(_BOX_RE.finditer(text))[-_MAX_BOXES:]
    found: list[_Box] = []
    for m in starts:
        j = m.end()
        if j < len(text) and text[j] == "{":
            end = _closing_brace(text, j)
            if end is None:
                continue
            content, stop = text[j + 1 : end], end + 1
        else:
            mm = re.match(r"[^\s$]{1,200}", text[j : j + 201])
            if not mm:
                continue
            content, stop = mm.group(0), j + mm.end()
        if content.strip():
            found.append(_Box(m.start(), stop, content))
    return found


def _box_run(text: str) -> _Box | None:
    """The last box together with the boxes before it that belong to the same answer.

    math-verify's rule (latex2sympy2_extended ``extract_boxed_content``, mode "last"), restated
    here so that the trainer process needs no sympy import and stays linear on any input: walking
    back from the last box, the previous box joins when only spacing, math delimiters and
    punctuation separate them (math-verify: any gap under 10 characters; we do not join across
    other words: "first \\boxed{1} then \\boxed{2}" answers 2), or less than 70 characters
    containing "and", "or", "," or ";" while its content differs. Consecutive repeats of one
    content count once. Contents are joined with ", ".
    """
    boxes = _boxes(text)
    if not boxes:
        return None
    run = [boxes[-1]]
    for prev in reversed(boxes[:-1]):
        if prev.end > run[-1].start:  # a box inside another box: the outer one was taken
            continue
        gap = text[prev.end : run[-1].start]
        bare = _GAP_NOISE_RE.sub(" ", gap) if len(gap) < 70 else gap
        if _GAP_PUNCT_RE.fullmatch(bare) or _GAP_JUNK_RE.fullmatch(bare.strip()) or (len(gap) < 70 and prev.content.strip() != run[-1].content.strip()
                                            and _BOX_SEPARATOR_RE.search(bare)):
            run.append(prev)
        else:
            break
    contents: list[str] = []
    for box in reversed(run):
        c = box.content.strip()
        if not contents or contents[-1] != c:
            contents.append(c)
    return _Box(run[-1].start, run[0].end, ", ".join(contents))


def last_boxed(text: str) -> str | None:
    """Content of the last non-empty ``\\boxed{...}`` / ``\\fbox{...}`` (also ``\\boxed 5``)."""
    boxes = _boxes(text)
    return boxes[-1].content if boxes else None


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


#: Math delimiters. Spans are found by pairing these tokens in one pass (not by a lazy regex,
#: which is quadratic on text such as "\\(" repeated thousands of times).
_DELIM_RE = re.compile(r"\$\$|(?<!\\)\$|\\\[|\\\]|\\\(|\\\)")
_CLOSER = {"$$": "$$", "$": "$", "\\[": "\\]", "\\(": "\\)"}


def _math_spans(text: str, *, well_formed: bool) -> list[tuple[int, int, str]]:
    """(start, end, content) of each math span: $$..$$, \\[..\\], \\(..\\), $..$, in order.

    ``well_formed``: inline math ($..$, \\(..\\)) may not span lines (a closing "$" after a line
    break then opens the next span); otherwise every delimiter pair counts, malformed or not.
    """
    spans: list[tuple[int, int, str]] = []
    if "$" not in text and "\\" not in text:
        return spans
    open_m = None
    for m in _DELIM_RE.finditer(text):
        tok = m.group(0)
        if open_m is None:
            if tok in _CLOSER:
                open_m = m
            continue
        opener = open_m.group(0)
        if tok != _CLOSER[opener]:
            continue
        a, b = open_m.end(), m.start()
        if well_formed and opener in ("$", "\\(") and text.find("\n", a, b) != -1:
            open_m = m if tok == "$" else None
            continue
        spans.append((open_m.start(), m.end(), text[a:b]))
        open_m = None
    return spans


#: What may join consecutive math environments into one answer ("$-2$ and $5$", "$x=1$; $x=2$"), as
#: in math-verify's LaTeX extraction (up to 5 environments).
_ENV_JOIN_RE = re.compile(r"\s*(?:[,;]?\s*(?:and|or)|[,;])\s*", re.IGNORECASE)


def _env_runs(s: str) -> tuple[str, int] | None:
    """The last math environment (joined with up to 5 before it by and/or/,) and its end index."""
    envs = [e for e in _math_spans(s, well_formed=True) if e[2].strip()]
    if not envs:
        return None
    run = [envs[-1]]
    for prev in reversed(envs[:-1]):
        if len(run) >= 6 or not _ENV_JOIN_RE.fullmatch(s[prev[1] : run[-1][0]]):
            break
        run.append(prev)
    return ", ".join(e[2].strip() for e in reversed(run)), envs[-1][1]


def _last_math_env(s: str) -> str | None:
    found = _env_runs(s)
    return found[0] if found else None


#: A conclusion that there is no answer ("... so there are no solutions."). Our addition to
#: math-verify's fallback: a value the text goes on to reject is not its answer.
_NO_ANSWER_RE = re.compile(
    r"\bno\s+(?:real\s+|integer\s+|positive\s+|valid\s+)?(?:solutions?|such\b|roots?\b)|\b(?:does|do)\s+not\s+exist"
    r"|\bdoesn't\s+exist|\bnot\s+possible\b|\bimpossible\b|\bcannot\s+be\s+determined",
    re.IGNORECASE,
)


#: The text goes on to say that the answer it just gave is wrong ("\\boxed{3}. Wait, that is wrong."):
#: then that answer is not the completion's answer (a retracted guess must not collect reward).
_RETRACT_RE = re.compile(
    r"\b(?:that|this|it|which|the\s+above|my\s+answer|this\s+answer|the\s+answer)(?:'s|\s+is|\s+was|\s+seems|\s+must\s+be)"
    r"\s+(?:(?:clearly|definitely|actually|probably)\s+)?(?:wrong|incorrect|not\s+(?:right|correct|the\s+answer))\b"
    r"|\b(?:I|we)\s+retract\b|\bscratch\s+that\b|\bignore\s+(?:that|the\s+above|this)\s+answer\b",
    re.IGNORECASE,
)


def _blank(text: str, spans: list[tuple[int, int, str]]) -> str:
    """``text`` with the given spans replaced by spaces (positions kept)."""
    if not spans:
        return text
    out, last = [], 0
    for a, b, _ in spans:
        out.append(text[last:a])
        out.append(" " * (b - a))
        last = b
    out.append(text[last:])
    return "".join(out)


def _last_plain_answer(text: str) -> str | None:
    """Lenient fallback: the last math environment or the last number of the prose, whichever
    ends later, unless the text after it concludes that there is no answer."""
    env = _env_runs(text)
    # numbers are read from the prose only: every math span, also a malformed one (inline math
    # across lines), is blanked; math is read from well-formed environments (above)
    prose = _blank(text, _math_spans(text, well_formed=False))
    num = None
    for m in _LOOSE_NUMBER_RE.finditer(prose):
        num = m
    if env is None and num is None:
        return None
    if num is not None and (env is None or num.end() > env[1]):
        answer, end = num.group(0), num.end()
    else:
        answer, end = env
    return None if _NO_ANSWER_RE.search(text, end) or _RETRACT_RE.search(text, end) else answer


def _env_chain_at(s: str) -> str | None:
    """The math environment ``s`` starts with, joined with the ones that follow it by "and" /
    "or" / "," ("$x = 1$ or $x = -1$" -> "x = 1, x = -1", as math-verify joins them); or None."""
    first = _math_env_at(s)
    if first is None or not first.strip():
        return None
    spans = _math_spans(s[:4000], well_formed=True)
    if not spans or spans[0][0] != 0:
        return first
    run = [spans[0]]
    for nxt in spans[1:6]:
        if not _ENV_JOIN_RE.fullmatch(s[run[-1][1] : nxt[0]]) or not nxt[2].strip():
            break
        run.append(nxt)
    return ", ".join(e[2].strip() for e in run)


def _answer_from_line(rest: str, *, after_phrase: bool = True) -> str | None:
    """The answer in the text that follows an answer phrase (or in a one-line completion)."""
    rest = rest.lstrip(" \t*:")
    if rest.startswith("\n"):  # "**Final Answer**\n\n42": the answer is on the next non-empty line
        rest = rest.lstrip(" \t\n*:")
    env = _env_chain_at(rest)
    if env is not None:
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
    if len(_WORD_RE.findall(_strip_latex_commands(line))) >= 3 or line.count("$") % 2:
        # a sentence, or text with a stray "$" (currency): its last math expression or number
        return _last_plain_answer(line)
    line = line.strip("* ").rstrip(".")
    return line if re.search(r"\w", line) else None


def _strip_latex_commands(s: str) -> str:
    return re.sub(r"\\[A-Za-z]+", " ", s)


def _phrase_answers(text: str, start: int = 0) -> list[tuple[re.Match, str]]:
    """(phrase match, answer) for the last answer phrase after ``start`` that is followed by
    something usable (an empty list if there is none)."""
    out = []
    for m in reversed(list(_PHRASE_RE.finditer(text, start))[-20:]):
        ans = _answer_from_line(text[m.end() : m.end() + 2000])
        if ans:
            out.append((m, ans))
            break
    return out


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
    run = _box_run(text)
    if run is not None:
        # A "final answer" sentence after the last box is the later statement (math-verify gives
        # "final answer is" and boxes the same top priority and then prefers the later match).
        phrases = _phrase_answers(text, run.end)
        if phrases and _FINAL_PHRASE_RE.search(phrases[0][0].group(0)):
            return phrases[0][1]
        return "" if _RETRACT_RE.search(text, run.end) else run.content
    phrases = _phrase_answers(text)
    if phrases:
        return "" if _RETRACT_RE.search(text, phrases[0][0].end()) else phrases[0][1]
    stripped = text.strip()
    if stripped and "\n" not in stripped and len(stripped) <= MAX_ONE_LINE_CHARS:
        ans = _answer_from_line(stripped, after_phrase=False)
        pos = stripped.rfind(ans) if ans else -1
        return "" if pos >= 0 and _RETRACT_RE.search(stripped, pos + len(ans)) else ans
    return _last_plain_answer(text) if lenient else None


def extract_answer(completion: str, *, lenient: bool = True) -> str | None:
    """The final answer stated in ``completion``, as raw text, or None (see module docstring).

    ``lenient=False`` (strict): text without an answer marker (box, answer phrase, ``<answer>``,
    ``#### N``, a one-line completion) has no answer.
    """
    if not isinstance(completion, str) or not completion:
        return None
    text = completion
    if _TURN_RE.search(text):  # keep the first turn that has content
        text = next((p for p in _TURN_RE.split(text) if p.strip()), "")
    after = text.rsplit("</think>", 1)[1] if "</think>" in text else None
    # Marked answers first (after </think>, then anywhere), then the lenient fallback.
    for region in ([after] if after is not None else []) + [text]:
        ans = _extract_region(region, False)
        if ans is not None:
            return ans
    if lenient:
        for region in ([after] if after is not None else []) + [text]:
            ans = _last_plain_answer(region)
            if ans is not None:
                return ans
    return None


#: A gold answer that is a worked solution rather than an answer: it has a box, an answer
#: phrase or a GSM8K "#### N" line, or it is prose (many words outside math).
def _is_solution(gold: str) -> bool:
    if "\\boxed" in gold or "\\fbox" in gold or _PHRASE_RE.search(gold):
        return True
    prose = _blank(gold, _math_spans(gold, well_formed=False))
    return len(_WORD_RE.findall(_strip_latex_commands(prose))) >= 8 and ("." in prose or "\n" in gold.strip())


def gold_answer(gold: str) -> str:
    """The final answer of a gold string: the gold itself, or, for a worked solution, its answer
    extracted like a prediction's (lenient)."""
    if _is_solution(gold):
        ans = extract_answer(gold, lenient=True)
        if ans is not None and ans.strip():
            return ans
    return gold


# ---------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------

_TEXT_CMDS = ("text", "textbf", "textit", "textnormal", "textrm", "textsf", "texttt", "mathrm",
              "mathbf", "mathit", "mathsf", "mbox", "hbox", "rm")
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
_SIMPLE_LHS_RE = re.compile(
    r"\s*(?:[A-Za-z]|\\[A-Za-z]+|[A-Z]{2,3})(?:_\{?[\w\\ ]+\}?)?'*(?:\([^()=]*\))?\s*"
)
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
    s = _SPACED_RUN_RE.sub(lambda m: m.group(0).replace(" ", "") if _THOUSANDS_RUN_RE.fullmatch(m.group(0))
                           else m.group(0), s)
    m = re.fullmatch(r"([+-]?)(\d(?: \d)+)", s)
    if m:
        return m.group(1) + m.group(2).replace(" ", "")
    if len(_split_top_level(s, _COMMA_RE)) == 1:
        parts = _split_top_level(s, _EQ_RE)
        if len(parts) == 2 and _SIMPLE_LHS_RE.fullmatch(parts[0]) \
                and re.fullmatch(r"\s*[+-]?\d(?: \d)+\s*", parts[1]):
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
_APPROX_TOKEN = " \\approx "


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
    if not exact or (_SIMPLE_LHS_RE.fullmatch(exact) and exact.strip() != "\\pi") or (len(eq) == 2 and not eq[1].strip()):
        return approx  # "x \approx 3.14", "\approx 0.43": a named value, judged by the value
    return exact + _APPROX_TOKEN + approx


_PLAIN_DECIMAL_RE = re.compile(r"-?\d+(?:\.\d+)?")


def normalize_answer(answer: str) -> str:
    """Canonical text of an answer (prediction or gold); see the module docstring for the rules."""
    s = str(answer).strip()
    if _PLAIN_DECIMAL_RE.fullmatch(s):  # most answers: nothing to do
        return s
    return _normalize_cached(s)


@lru_cache(maxsize=8192)
def _normalize_cached(s: str) -> str:
    """``normalize_answer`` of a stripped answer; cached: the rollouts of a group repeat answers."""
    if "\\boxed" in s or "\\fbox" in s:
        run = _box_run(s)
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
    exact, sep, approx = s.partition(_APPROX_TOKEN)
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


def _simple_rhs(norm: str) -> str | None:
    """The right side of ``name = value`` (a single variable, subscripted name or f(x) on the left)."""
    if len(_split_top_level(norm, _COMMA_RE)) == 1:
        parts = _split_top_level(norm, _EQ_RE)
        if len(parts) == 2 and _SIMPLE_LHS_RE.fullmatch(parts[0]) and parts[1].strip():
            return parts[1].strip()
    return None


def _fast_key(norm: str) -> str:
    """A cheap canonical key: equal keys mean equal answers (no sympy needed)."""
    norm = norm.partition(_APPROX_TOKEN)[0]  # an approximation chain is judged by its exact part
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


def _number_verdict(pred_norm: str, gold_norm: str) -> str | None:
    """"correct"/"wrong" when both answers are plain numbers and the verdict needs no rounding
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
def _normalize_gold(gold: str) -> tuple[str, str]:
    """(normalised gold, fast key); cached because every rollout of a group shares its gold."""
    norm = normalize_answer(gold_answer(gold))
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
    rhs = _simple_rhs(norm)
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
    raise ValueError(f"decimal_match {spec!r} is not one of 'exact', 'places:N', 'sig:N' (N from 1 to 5; "
                     "6 or more places is math-verify's own precision, i.e. 'exact')")


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

    return all((_single_value(g) and big_set(p)) or (big_set(g) and _single_value(p))
               for g in g_items for p in p_items)


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
    if gold_items and pred_items and not any(g.has(sympy.Float) for g in gold_items if hasattr(g, "has")) \
            and any(p.has(sympy.Float) for p in pred_items if hasattr(p, "has")):
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
    exact, _, approx = norm.partition(_APPROX_TOKEN)
    other_exact = other.partition(_APPROX_TOKEN)[0]
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
    if _fast_key(pred_norm) == _fast_key(gold_norm):
        return "correct"
    verdict = _number_verdict(pred_norm, gold_norm)
    if verdict is not None:
        return verdict
    gold_exact = gold_norm.partition(_APPROX_TOKEN)[0]
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
            if _fast_key(pred_text) == _fast_key(gold_text):
                return "correct"
            pred_parsed = _parse_latex(pred_text)
            if pred_parsed and _verify(gold_parsed, pred_parsed, pred_text, decimal_match):
                return "correct"
    return "wrong" if any_gold else "gold_unparsable"


def gold_parses(gold: str) -> bool:
    """True when math-verify parses the final answer of ``gold`` (after ``gold_answer`` and
    ``normalize_answer``). A gold that does not parse still matches a prediction with the same
    normalised text (``_fast_key``: spaces ignored, words case-insensitive); otherwise such a
    completion's status is "gold_unparsable". Runs sympy: call it in a worker, with a time limit."""
    return bool(_sympy_items(_parse_gold(_normalize_gold(gold)[0])))


def answers_match(pred_norm: str, gold_norm: str) -> bool:
    """True when two *normalised* answers are equivalent (``check_answer(...) == "correct"``)."""
    return check_answer(pred_norm, gold_norm) == "correct"


def _warm_up() -> None:
    """Worker initializer: import sympy/math-verify before the first task's clock starts."""
    check_answer("x + 1", "1 + x")  # parse + symbolic comparison
    check_answer("0.33", "\\frac{1}{3}", "sig:2")  # decimals and the rounding rule


# ---------------------------------------------------------------------------------------
# Batch API with hard time limits
# ---------------------------------------------------------------------------------------


@dataclass
class VerifyResult:
    """Scores of one batch and what happened while computing them.

    scores: 1.0 / 0.0 per completion, in input order.
    statuses: why, per completion: one of ``STATUSES`` ("correct", "wrong", "no_answer",
        "ambiguous", "timeout", "gold_unparsable", "error").
    answers: the extracted final answer per completion (None when there is none).
    timeouts: answers whose symbolic check ran past the limit (scored 0).
    errors: answers whose check raised or whose worker died (scored 0).
    no_answer: completions with no extractable final answer (scored 0; not an error).
    gold_unparsable: completions whose gold answer could not be parsed (and did not match as text).
    fast_path: answers decided without a worker (same normalised text, or two plain numbers).
    seconds: wall-clock time of the call.
    """

    scores: list[float]
    timeouts: int = 0
    errors: int = 0
    no_answer: int = 0
    fast_path: int = 0
    seconds: float = 0.0
    error_messages: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    answers: list[str | None] = field(default_factory=list)
    gold_unparsable: int = 0

    def status_counts(self) -> dict[str, int]:
        """Completions per status (every status in ``STATUSES``, zeros included)."""
        counts = dict.fromkeys(STATUSES, 0)
        for s in self.statuses:
            counts[s] = counts.get(s, 0) + 1
        return counts

    def fraction(self, status: str) -> float:
        """Share of the batch with this status (0.0 for an empty batch)."""
        return self.statuses.count(status) / len(self.statuses) if self.statuses else 0.0


class MathVerifier:
    """Scores completions against gold answers with a hard per-answer time limit, from any thread.

    Args:
        num_workers: verification processes (default: all cores). Started on first need: a batch
            decided entirely by the fast path starts none.
        timeout_s: hard limit for the symbolic comparison of one answer.
        lenient: extraction fallback to the last math expression / number when a completion has
            no answer marker (default True; False is the strict "no marker, no answer" rule;
            see ``extract_answer``).
        max_memory_mb: address-space limit per worker process (None: unlimited).
        cache_size: (prediction, gold) results kept across calls; repeated answers (common across
            the rollouts of a group) are verified once. 0 disables.
        decimal_match: when a decimal may stand for an exact gold: "exact" (default: math-verify's
            own comparison; a coarse ``3.1`` for pi scores 0), "places:N" or "sig:N"
            (``parse_decimal_match``). A bad value raises ValueError here.

    Use as a context manager or call ``close()``; ``score`` is thread-safe.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        lenient: bool = True,
        max_memory_mb: int | None = 4096,
        cache_size: int = 65536,
        decimal_match: str = DECIMAL_MATCH_DEFAULT,
    ):
        parse_decimal_match(decimal_match)  # fail here, not in a worker
        self.decimal_match = decimal_match.strip().lower()
        self.pool = HardTimeoutPool(
            check_answer,
            num_workers=num_workers,
            timeout_s=timeout_s,
            max_memory_mb=max_memory_mb,
            initializer=_warm_up,
        )
        self.timeout_s = float(timeout_s)
        self.lenient = lenient
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._cache_lock = threading.Lock()

    @property
    def num_workers(self) -> int:
        return self.pool.num_workers

    def score(self, completions: Sequence[str], golds: Sequence[str], *, timeout_s: float | None = None) -> VerifyResult:
        """Score ``completions[i]`` against ``golds[i]`` for every i (1.0 equivalent, else 0.0)."""
        t0 = time.perf_counter()
        if len(completions) != len(golds):
            raise ValueError(f"got {len(completions)} completions but {len(golds)} gold answers")
        n = len(completions)
        scores = [0.0] * n
        statuses = ["wrong"] * n
        res = VerifyResult(scores=scores, statuses=statuses, answers=[None] * n)
        pending: dict[tuple[str, str], list[int]] = {}
        for i, (completion, gold) in enumerate(zip(completions, golds)):
            if isinstance(gold, (int, float)) and not isinstance(gold, bool):
                gold = str(gold)  # a numeric gold (27, 27.0) is its decimal text
            if not isinstance(gold, str) or not gold.strip():
                raise ValueError(f"gold answer {i} must be a non-empty string or a number, got {gold!r}")
            gold_norm, gold_key = _normalize_gold(gold)
            pred = extract_answer(completion, lenient=self.lenient)
            res.answers[i] = pred
            if pred is None or not pred.strip() or len(pred) > MAX_ANSWER_CHARS:
                statuses[i] = "no_answer"
                continue
            pred_norm = normalize_answer(pred)
            if is_ambiguous(pred_norm):
                statuses[i] = "ambiguous"
                continue
            if _fast_key(pred_norm) == gold_key:
                scores[i], statuses[i] = 1.0, "correct"
                res.fast_path += 1
                continue
            verdict = _number_verdict(pred_norm, gold_norm)
            if verdict is not None:
                scores[i], statuses[i] = float(verdict == "correct"), verdict
                res.fast_path += 1
                continue
            key = (pred_norm, gold_norm, self.decimal_match)
            cached = self._cache_get(key)
            if cached is not None:
                scores[i], statuses[i] = float(cached == "correct"), cached
                continue
            pending.setdefault(key, []).append(i)
        if pending:
            keys = list(pending)
            outcomes = self.pool.run(keys, timeout_s=timeout_s)
            for key, out in zip(keys, outcomes):
                idx = pending[key]
                if out.status == "ok":
                    status = out.value if out.value in STATUSES else "error"
                    self._cache_put(key, status)
                elif out.status == "timeout":
                    status = "timeout"
                else:
                    status = "error"
                    res.error_messages.append(str(out.value))
                for i in idx:
                    statuses[i] = status
                    scores[i] = 1.0 if status == "correct" else 0.0
        res.no_answer = statuses.count("no_answer")
        res.timeouts = statuses.count("timeout")
        res.errors = statuses.count("error")
        res.gold_unparsable = statuses.count("gold_unparsable")
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

    def _cache_put(self, key, value: str) -> None:
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


def _default_verifier(decimal_match: str = DECIMAL_MATCH_DEFAULT) -> MathVerifier:
    parse_decimal_match(decimal_match)
    key = decimal_match.strip().lower()
    with _DEFAULT_LOCK:
        v = _DEFAULT.get(key)
        if v is None:
            v = _DEFAULT[key] = MathVerifier(num_workers=1, timeout_s=DEFAULT_TIMEOUT_S, decimal_match=key)
            atexit.register(v.close)
        return v


def math_reward(completion: str, gold: str, *, timeout_s: float | None = None,
                decimal_match: str = DECIMAL_MATCH_DEFAULT) -> float:
    """1.0 if the final answer in ``completion`` is mathematically equivalent to ``gold``, else 0.0.

    Safe from any thread: the symbolic step runs in a shared one-worker ``MathVerifier`` with a
    hard time limit (``DEFAULT_TIMEOUT_S`` unless ``timeout_s`` is given). For batches, create a
    ``MathVerifier`` and call ``score``: it verifies in parallel and reports timeouts.
    ``decimal_match``: the decimal policy (``parse_decimal_match``).
    """
    return _default_verifier(decimal_match).score([completion], [gold], timeout_s=timeout_s).scores[0]
