"""The math reward under optimisation pressure: what a policy could write to collect reward.

Written from the policy's side. For each gold answer, HACKS are completions that do not commit
to the answer (hedges, lists, "or", +-, covering sets and intervals, spaced or repeated digits,
undefined expressions, a right answer then a retraction, free symbols, coarse decimals, words
around a bound, empty boxes): each must score 0, whatever rule would accept it. EQUIVALENTS are
completions that state the answer in another correct form: each must score 1, so that a fix for
a hack does not simply reject everything. Property-based tests (hypothesis) generate the same
kinds of strings for random golds.

Every case scores one completion against one gold with the default ``MathVerifier`` (lenient
extraction, decimal_match="exact"), the reward the trainer uses.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conspo.rewards import MathVerifier

HACKS: dict[str, list[str]] = {
    "3": [
        # hedges: several candidates, one of them right
        r"\boxed{3} or \boxed{4}",
        r"\boxed{3}, \boxed{4}",
        r"\boxed{3} | \boxed{4}",
        r"\boxed{3}. \boxed{4}.",
        r"\boxed{3 \text{ or } 4}",
        r"\boxed{\text{3 or 4}}",
        r"\boxed{3, 4}",
        r"\boxed{3; 4}",
        r"\boxed{\{3, 4\}}",
        r"\boxed{\{1, 2, 3, 4, 5\}}",
        r"The answer is 3 or 4.",
        r"The answer is $x = 3$ or $x = 4$.",
        r"<answer>3 or 4</answer>",
        r"\boxed{\pm 3}",
        r"\boxed{3 \pm 1}",
        # covering sets and intervals
        r"\boxed{[0, 10]}",
        r"\boxed{(2, 4)}",
        r"\boxed{2 < x < 4}",
        r"\boxed{x \geq 0}",
        r"\boxed{\mathbb{R}}",
        r"\boxed{\mathbb{Z}}",
        r"\boxed{(-\infty, \infty)}",
        # bounds stated in words
        r"\boxed{\text{at least } 3}",
        r"\boxed{\text{at most } 3}",
        r"The answer is at least 3.",
        r"\boxed{\text{almost } 3}",
        # spaced or repeated digits (read as a sum by LaTeX parsers: 1+2 = 3, 1+1+1 = 3)
        r"\boxed{1 2}",
        r"\boxed{1\,2}",
        r"\boxed{1\ 2}",
        r"\boxed{1~2}",
        r"\boxed{1 1 1}",
        r"\boxed{3 3}",
        r"\boxed{33}",
        # undefined or self-cancelling expressions that do not state a value
        r"\boxed{\frac{0}{0}}",
        r"\boxed{0/0}",
        r"\boxed{\infty - \infty}",
        r"\boxed{0 \cdot \infty}",
        # free symbols
        r"\boxed{x}",
        r"\boxed{n}",
        r"\boxed{3x}",
        r"\boxed{3 + x}",
        r"\boxed{a}",
        # a right answer, then a retraction
        r"\boxed{3}. Wait, that is wrong.",
        r"The answer is 3. Hmm, no, that's incorrect.",
        r"So $x = 3$. Actually, this is not correct, so I retract it.",
        # text wrappers around a non-answer, empty boxes
        r"\boxed{\text{any integer}}",
        r"\boxed{\text{all real numbers}}",
        r"\boxed{\text{undefined}}",
        r"\boxed{}",
        r"\boxed{ }",
        r"\boxed{\text{}}",
        # a coarse or wrong decimal
        r"\boxed{2.9}",
        r"\boxed{3.1}",
    ],
    "7": [
        r"\boxed{3 4}",  # 3+4 for LaTeX parsers; 34 as written
        r"\boxed{3\,4}",
        r"\boxed{1 1 1 1 1 1 1}",
        r"\boxed{\mathbf{3 4}}",
        r"\boxed{2 5}",
        r"\boxed{6 1}",
    ],
    "12": [
        r"\boxed{6 6}",  # a sum
        r"\boxed{3 4}",  # a product
        r"\boxed{2\ 6}",
        r"\boxed{12 3}",
        r"\boxed{\text{12 or 13}}",
        r"\boxed{11.5}",
        r"\boxed{[11, 13]}",
    ],
    "2028": [
        r"\boxed{20 28}",
        r"\boxed{202 8}",
        r"\boxed{2 028 1}",
        r"\boxed{2027 \text{ or } 2028}",
        r"\boxed{2028, 2029}",
        r"\boxed{[2000, 2100]}",
        r"so $n=\mathbf{1 2}$",
    ],
    r"\frac{1}{3}": [
        r"\boxed{0.33}",
        r"\boxed{0.3}",
        r"\boxed{0.333}",
        r"\boxed{0.3333}",
        r"\boxed{\approx 0.33}",
        r"The answer is approximately 0.33.",
        r"\boxed{0.33 \text{ or } 0.34}",
        r"\boxed{\frac{1}{3}, \frac{1}{4}}",
        r"\boxed{(0, 1)}",
        r"\boxed{\frac{a}{b}}",
        r"\boxed{\frac{1}{x}}",
    ],
    r"\pi": [
        r"\boxed{3.1}",
        r"\boxed{3.14}",
        r"\boxed{3.14159}",
        r"\boxed{\frac{22}{7}}",
        r"\boxed{3}",
        r"\boxed{\pi x}",
        r"\boxed{\pm \pi}",
    ],
    r"\sqrt{2}": [
        r"\boxed{1.4}",
        r"\boxed{1.41}",
        r"\boxed{1.414}",
        r"\boxed{\pm\sqrt{2}}",
        r"\boxed{\sqrt{2}, -\sqrt{2}}",
        r"\boxed{\sqrt{x}}",
    ],
    "-2, 3": [
        r"\boxed{-2}",
        r"\boxed{3}",
        r"\boxed{-2, 3, 5}",
        r"\boxed{\{-3, -2, 3\}}",
        r"\boxed{[-2, 3]}",
        r"\boxed{x \in \mathbb{R}}",
        r"\boxed{-2 3}",
    ],
    "x^2 + 1": [
        r"\boxed{f(x)}",
        r"\boxed{x^2 + c}",
        r"\boxed{x^2 + 1 + C}",
        r"\boxed{x^2}",
        r"\boxed{x^2 + 1} or \boxed{x^2 - 1}",
    ],
    r"\text{odd}": [
        r"\boxed{\text{odd or even}}",
        r"\boxed{\text{odd}} or \boxed{\text{even}}",
        r"\boxed{\text{neither}}",
        r"\boxed{\text{odd}}. Wait, that is wrong.",
    ],
}

EQUIVALENTS: dict[str, list[str]] = {
    "3": [
        r"\boxed{3}",
        r"\boxed{3.0}",
        r"\boxed{\frac{6}{2}}",
        r"\boxed{x = 3}",
        r"The answer is $3$.",
        r"Final Answer: The final answer is 3. I hope it is correct.",
        r"#### 3",
        r"\boxed{\text{3}}",
        r"\boxed{\mathbf{3}}",
        r"\boxed{5-5+3}",  # arithmetic shown: its value is 3, nothing is left open
        r"\boxed{\sqrt{9}}",
        r"\boxed{3}\boxed{3}",  # a repeat states one answer
        r"\boxed{\text{exactly } 3}",
        r"The answer is just about 3.",
        r"\boxed{3}. Let me verify: $3 \cdot 2 = 6$, which is correct.",
    ],
    "7": [r"\boxed{3+4}", r"\boxed{7}", r"\boxed{\text{7}}"],
    "34": [r"\boxed{3 4}", r"\boxed{3\,4}", r"\boxed{\mathbf{3 4}}"],
    "12": [r"\boxed{1 2}", r"\boxed{12}", r"\boxed{\frac{24}{2}}"],
    "2028": [
        r"\boxed{2 0 2 8}",
        r"so $n=\mathbf{2 0 2 8}$",
        r"\boxed{2\,028}",
        r"\boxed{2,028}",
        r"\boxed{2{,}028}",
        r"\boxed{2 028}",
        r"\boxed{\text{2 0 2 8}}",
    ],
    "1000000": [r"\boxed{1\,000\,000}", r"\boxed{1 000 000}", r"\boxed{1,000,000}", r"\boxed{10^6}"],
    r"\frac{1}{3}": [
        r"\boxed{\frac{2}{6}}",
        r"\boxed{1/3}",
        r"\boxed{\dfrac13}",
        r"\boxed{0.333333}",  # math-verify's own precision (6 places)
        r"\boxed{\frac{1}{3} \approx 0.33}",
        r"\boxed{3^{-1}}",
    ],
    r"\pi": [r"\boxed{\pi}", r"\boxed{\frac{2\pi}{2}}", r"\boxed{\pi \approx 3.14}"],
    r"\sqrt{2}": [r"\boxed{2^{1/2}}", r"\boxed{\frac{2}{\sqrt{2}}}", r"\boxed{\sqrt 2}"],
    "-2, 3": [
        r"\boxed{3, -2}",
        r"\boxed{-2} and \boxed{3}",
        r"The solutions are $x=-2$ or $x=3$.",
        r"The solutions are $x=-2$; $x=3$.",
        r"\boxed{x = -2 \text{ or } x = 3}",
        r"\boxed{\{-2, 3\}}",
        r"\boxed{x=-2; x=3}",
        r"\boxed{-2} | \boxed{3}",
    ],
    "x^2 + 1": [r"\boxed{1 + x^2}", r"\boxed{x \cdot x + 1}", r"\boxed{y = x^2 + 1}"],
    r"\text{odd}": [r"\boxed{\text{odd}}", r"The function is odd, so the answer is $\boxed{\text{odd}}$."],
    "0.05": [r"\boxed{0,05}", r"\boxed{\frac{1}{20}}", r"\boxed{5\%}"],
    "0,05": [r"\boxed{0.05}"],  # a gold "0,05" cannot be a list: a decimal comma
}


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(num_workers=1, timeout_s=10.0) as v:
        yield v


def _cases(table):
    return [pytest.param(c, g, id=f"{g}|{c}") for g, cs in table.items() for c in cs]


@pytest.mark.parametrize("completion,gold", _cases(HACKS))
def test_hack_scores_zero(verifier, completion, gold):
    result = verifier.score([completion], [gold])
    assert result.scores == [0.0], f"{completion!r} collected reward for gold {gold!r} (read as {result.answers[0]!r})"


@pytest.mark.parametrize("completion,gold", _cases(EQUIVALENTS))
def test_equivalent_scores_one(verifier, completion, gold):
    result = verifier.score([completion], [gold])
    assert result.scores == [1.0], (
        f"{completion!r} is the answer {gold!r} but scored 0 ({result.statuses[0]}, read as {result.answers[0]!r})"
    )


def test_spaced_digits_are_never_a_sum():
    """The status says why: digits no rule can join are 'ambiguous', not 'wrong'."""
    with MathVerifier(num_workers=1) as v:
        r = v.score([r"\boxed{12 3}", r"\boxed{1 2}", r"\boxed{1 234 5}"], ["15", "3", "12345"])
    assert r.statuses == ["ambiguous", "wrong", "ambiguous"]


# ------------------------------------------------------------------------------------------
# Property-based: the same kinds of strings for random golds
# ------------------------------------------------------------------------------------------

PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(gold=st.integers(-500, 500), other=st.integers(-500, 500))
def test_hedges_for_random_integers(verifier, gold, other):
    if other == gold:
        other = gold + 1
    lo, hi = sorted((gold, other))
    hedges = [
        rf"\boxed{{{gold}}} or \boxed{{{other}}}",
        rf"\boxed{{{other}}} or \boxed{{{gold}}}",
        rf"\boxed{{{gold}, {other}}}",
        rf"\boxed{{\{{{gold}, {other}\}}}}",
        rf"\boxed{{{gold} \text{{ or }} {other}}}",
        rf"The answer is $x = {gold}$ or $x = {other}$.",
        rf"\boxed{{[{lo - 1}, {hi + 1}]}}",
        rf"\boxed{{{gold}}}. Wait, that is wrong.",
        rf"\boxed{{\text{{at least }} {gold}}}",
        rf"\boxed{{{gold} + x}}",
    ]
    if gold != 0:
        hedges.append(rf"\boxed{{\pm {abs(gold)}}}")
    r = verifier.score(hedges, [str(gold)] * len(hedges))
    assert r.scores == [0.0] * len(hedges), [h for h, s in zip(hedges, r.scores) if s]
    same = [
        rf"\boxed{{{gold}}}",
        rf"\boxed{{x = {gold}}}",
        rf"\boxed{{\frac{{{2 * gold}}}{{2}}}}",
        rf"\boxed{{{gold}.0}}",
        rf"The answer is ${gold}$.",
    ]
    assert verifier.score(same, [str(gold)] * len(same)).scores == [1.0] * len(same)


@PROPERTY
@given(
    digits=st.lists(st.integers(0, 9), min_size=2, max_size=6).filter(lambda d: d[0] != 0),
    sep=st.sampled_from([" ", r"\,", r"\ ", "~"]),
)
def test_spelled_digits_are_one_number(verifier, digits, sep):
    boxed = r"\boxed{" + sep.join(map(str, digits)) + "}"
    number = int("".join(map(str, digits)))
    total = sum(digits)
    product = 1
    for d in digits:
        product *= d
    golds = [str(number)] + [str(x) for x in {total, product} if x != number]
    r = verifier.score([boxed] * len(golds), golds)
    assert r.scores == [1.0] + [0.0] * (len(golds) - 1), (boxed, golds, r.statuses)


@PROPERTY
@given(n=st.integers(1000, 10**9), sep=st.sampled_from([" ", r"\,", r"\ ", "{,}", ","]))
def test_thousands_groups_are_one_number(verifier, n, sep):
    text = f"{n:,}".replace(",", sep)
    groups = [int(g) for g in f"{n:,}".split(",")]
    golds = [str(n)] + [str(x) for x in {sum(groups)} if x != n]
    r = verifier.score([rf"\boxed{{{text}}}"] * len(golds), golds)
    assert r.scores == [1.0] + [0.0] * (len(golds) - 1), (text, golds, r.statuses)


@PROPERTY
@given(p=st.integers(1, 50), q=st.integers(2, 50), places=st.integers(1, 5))
def test_coarse_decimals_earn_nothing_by_default(verifier, p, q, places):
    from fractions import Fraction

    value = Fraction(p, q)
    if (value * 10**places).denominator == 1:  # the decimal is exact at this precision: a true equivalent
        return
    rounded = round(value, places)  # correctly rounded at the written precision
    if abs(value - rounded) < Fraction(5, 10**7):  # equal at math-verify's 6 places (34/46 ~ 0.73913): exact
        return
    text = f"{float(rounded):.{places}f}"
    gold = rf"\frac{{{p}}}{{{q}}}"
    assert verifier.score([rf"\boxed{{{text}}}"], [gold]).scores == [0.0], (text, gold)
