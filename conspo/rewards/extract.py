"""Answer extraction: the final answer a completion (or a worked-solution gold) states, as raw text.

``extract_answer`` and ``gold_answer``; the policy is described in conspo/rewards/math.py
("Extraction policy"). Linear time on any input; no sympy import.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["MAX_ONE_LINE_CHARS", "balanced_group", "box_run", "extract_answer", "gold_answer", "last_boxed"]

#: A completion with no answer marker that is one line of at most this many characters is taken
#: as the answer line (the "plain" prompt template ends in "Answer:").
MAX_ONE_LINE_CHARS = 300

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
_TURN_MARKERS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<｜end▁of▁sentence｜>",
    "</s>",
)
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


def balanced_group(text: str, open_idx: int) -> tuple[str | None, int]:
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


def box_run(text: str) -> _Box | None:
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
        if (
            _GAP_PUNCT_RE.fullmatch(bare)
            or _GAP_JUNK_RE.fullmatch(bare.strip())
            or (len(gap) < 70 and prev.content.strip() != run[-1].content.strip() and _BOX_SEPARATOR_RE.search(bare))
        ):
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
    run = box_run(text)
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
