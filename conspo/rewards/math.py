"""Verifiable math reward: answer extraction and normalisation around math-verify.

The code lives in four modules, one job each, re-exported here: conspo/rewards/extract.py
(locating the answer), normalize.py (canonical text, the comparisons that need no sympy),
compare.py (math-verify, in worker processes) and verifier.py (``MathVerifier``,
``math_reward``). This docstring is the description of the whole pipeline.

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

from conspo.rewards.compare import (
    DECIMAL_MATCH_DEFAULT,
    answers_match,
    check_answer,
    gold_parses,
    parse_decimal_match,
    warm_up,
)
from conspo.rewards.extract import (
    MAX_ONE_LINE_CHARS,
    extract_answer,
    gold_answer,
    last_boxed,
)
from conspo.rewards.normalize import (
    fast_key,
    is_ambiguous,
    normalize_answer,
    normalize_cached,
    normalize_gold,
    number_verdict,
)
from conspo.rewards.verifier import (
    DEFAULT_TIMEOUT_S,
    MAX_ANSWER_CHARS,
    STATUSES,
    MathVerifier,
    VerifyResult,
    math_reward,
)

# Names of the single-module layout, for code that reached into it (benchmarks compare revisions).
_normalize_cached = normalize_cached
_normalize_gold = normalize_gold
_fast_key = fast_key
_number_verdict = number_verdict
_warm_up = warm_up

__all__ = [
    "DECIMAL_MATCH_DEFAULT",
    "DEFAULT_TIMEOUT_S",
    "MAX_ANSWER_CHARS",
    "MAX_ONE_LINE_CHARS",
    "STATUSES",
    "MathVerifier",
    "VerifyResult",
    "answers_match",
    "check_answer",
    "extract_answer",
    "gold_answer",
    "gold_parses",
    "is_ambiguous",
    "last_boxed",
    "math_reward",
    "normalize_answer",
    "parse_decimal_match",
]
