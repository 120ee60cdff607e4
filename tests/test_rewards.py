"""Tests for conspo.rewards: answer equivalence, time limits, threads, safety, custom rewards.

The equivalence table (EQUIVALENCE_CASES) is gathered from public graders' own tests and from
user reports; each group cites its source. A row is (completion or answer, gold, expected).
Where our documented policy (conspo/rewards/math.py) deliberately differs from the source's
expectation, the row carries OUR expected value and the comment says so. The test requires
a pass rate >= 97% and that every failure is listed in KNOWN_FAILURES (the README and
bench/VERIFY_RESULTS.md cite that list).
"""

from __future__ import annotations

import builtins
import os
import re
import threading
import time

import pytest

from conspo.rewards import (
    MathVerifier,
    answers_match,
    extract_answer,
    math_reward,
    normalize_answer,
)

# (completion or bare answer, gold, expected score)
EQUIVALENCE_CASES: list[tuple[str, str, int]] = [
    # --- huggingface/Math-Verify tests/test_all.py :: test_number_extraction -------------------
    ("-5", "-5", 1),
    ("7,425,000", "7425000", 1),
    ("1000.0", "1000", 1),
    ("1,000.0", "1000.0", 1),
    (".4", "0.4", 1),
    ("1,000.99", "1000.99", 1),
    ("$1,000.99", "1000.99", 1),
    ("1,000.99$", "1000.99", 1),
    ("the number is not 10 which is 1,000.99€", "1000.99", 1),
    ("so the number is 10 which is 1,000.99m²", "1000.99", 1),
    ("AZYUK2A", "2", 0),
    # --- Math-Verify tests/test_all.py :: test_simple_fraction_notation, test_sets_handling -----
    (r"\frac{10}{9}", "10/9", 1),
    (r"-\frac{10}{9}", "-10/9", 1),
    ("$[0,1)$", "$[0,1)$", 1),
    ("$[0,1)$", "$[0,9)$", 0),
    ("$[0,9)$", "$(0,9)$", 0),
    ("$-[0,1)$", "$1$", 0),
    # --- Math-Verify tests/test_all.py :: test_latex_notation ---------------------------------
    (r"Answer \[ 9 \]", "$9$", 1),
    ("Answer $ 9 $", "$9$", 1),
    ("Answer $$ 9 $$", "$9$", 1),
    (r"Answer \( 9 \)", "$9$", 1),
    (r"Answer \( (9+1) \)", "$10$", 1),
    ("Answer $ \n 9 \n $", "$9$", 0),
    ("Answer \\[ \n 9 \n \\]", "$9$", 1),
    ("Answer $$ \n 9 \n $$", "$9$", 1),
    (r"Answer $ \frac{1}{2} \$ = \frac{10}{9} $", "$10/9$", 1),
    (r"$\frac13 $", "$1/3$", 1),
    (r"$\frac3{3} $", "$1$", 1),
    (r"$\sqrt3 $", r"$\sqrt{3}$", 1),
    (r"$\cfrac{1}{3} $", "$1/3$", 1),
    (r"$\dfrac{1}{3} $", "$1/3$", 1),
    (r"$\tfrac{1}{3} $", "$1/3$", 1),
    ("$ 1/3 $", "$1/3$", 1),
    (r"$\left( \frac{1}{3} \right)$", "$1/3$", 1),
    (r"$\boxed{\frac{1}{3}}$", "$1/3$", 1),
    (r"$\frac{1}{3} \text{meters}$", "$1/3$", 1),
    (r"$\frac{1}{3} \textbf{meters}$", "$1/3$", 1),
    (r"$k = \frac{1}{3}$", "$1/3$", 1),
    # --- Math-Verify tests/test_all.py :: test_percent_notation --------------------------------
    ("28 percent", r"$28\%$", 1),
    ("28 pct", r"$28\%$", 1),
    ("28 %", r"$28\%$", 1),
    ("$28$ %", r"$28\%$", 1),
    (r"$\boxed{28 pct}", r"$28\%$", 1),
    (r"$\boxed{28 percent}", r"$28\%$", 1),
    (r"$\boxed{28 percentage}", r"$28\%$", 1),
    ("28", r"$28\%$", 1),
    ("28", "$0.28$", 0),
    ("28", "$28/100$", 0),
    ("28/100", "$28$", 0),
    ("28", r"$\frac{28}{100}$", 0),
    ("28", r"$28*\frac{1}{100}$", 0),
    # --- Math-Verify tests/test_all.py :: test_latex_notation_math -----------------------------
    (r"Since $x<2$, it follows that $|x-2|=2-x$. Thus $x-p=\boxed{2-2p}$.", "$2-2p$", 1),
    (r"Therefore, $\boxed{\text{Evelyn}}$ is our answer.", r"$\text{Evelyn}$", 1),
    (r"Hence, the angle between the lines is $\boxed{90^\circ}.$", r"$90^\circ$", 1),
    (r"\sqrt{117} = \boxed{3\sqrt{13}}. \end{align*}", r"$3\sqrt{13}$", 1),
    (r"\[p(8) = \frac{q(8) + 8}{8^2 - 1} = \boxed{\frac{3}{56}}.\]", r"$\frac{3}{56}$", 1),
    (r"Thus, there are $\boxed{2}$ distinct possible values for $B$.", "$2$", 1),
    (r"$$\frac{1}{2}\times 3 \times 10 = \boxed{15\mbox{ cm}^2}.$$", r"$15\mbox{ cm}^2$", 1),
    (r"Checking, we find that the only integer roots are $\boxed{-2,1}.$", "$-2,1$", 1),
    (r"Then, $129^{34}+96^{38} \equiv \boxed{9} \pmod{11}.$", "$9$", 1),
    (r"for a quotient of $\boxed{204_5}$.", "$204_5$", 1),
    (r"we find $(p,q,r) = \boxed{(6,31,-1)}.$", "$(6,31,-1)$", 1),
    (r"By the quadratic formula, $x = \boxed{1 \pm \sqrt{19}}.$", r"$1 \pm \sqrt{19}$", 1),
    (r"the roots are $x = \boxed{3 \pm 2 \sqrt{2}}.$", r"$3 \pm 2 \sqrt{2}$", 1),
    (r"so the answer is $\boxed{\{1\pm\sqrt{5},-2\}}.$", r"$\{1\pm\sqrt{5},-2\}$", 1),
    (r"Hence, $\boxed{f(2) < f(1) < f(4)}.$", "$f(2) < f(1) < f(4)$", 1),
    (r"\[\sin (a + b) - \sin (a - b) = \boxed{2 \sin b \cos a}.\]", r"$2 \sin b \cos a$", 1),
    (r"The answer is $\boxed{\frac{\pi r}{h+r}}$.", r"$\frac{\pi r}{h+r}$", 1),
    (r"The distance is $\boxed{125\textnormal{ miles}}.$", "$125$ miles", 1),
    (
        r"The solution set is $\boxed{[-1, -\tfrac12) \cup (-\tfrac12, 0) \cup (0, 1) \cup (1, \infty)}.$",
        r"$[-1, -\frac{1}{2}) \cup (-\frac{1}{2}, 0) \cup (0, 1) \cup (1, \infty)$",
        1,
    ),
    (r"The answer is $\boxed{\sqrt 2+\sqrt 5}$", r"$\sqrt{2}+\sqrt{5}$", 1),
    (r"Therefore $\boxed{\frac94\pi}$.", r"$\frac{9}{4}\pi$", 1),
    (r"x \in \boxed{\{-1\} \cup [0,7)}.$", r"x \in \boxed{\{-1\} \cup [0,7)}.$", 1),
    (r"the polar coordinates are $\boxed{\left( 3, \frac{\pi}{2} \right)}.$", r"$(3, \frac{\pi}{2})$", 1),
    # --- Math-Verify tests/test_all.py :: test_relations_math ----------------------------------
    (r"Therefore $x \geq 5$ is the solution.", "$x >= 5$", 1),
    (r"We find that $x \lt 3$.", "$x < 3$", 1),
    ("Thus $x <= 2$ is our answer.", r"$x \leq 2$", 1),
    (r"Therefore $x \gt 5$ is the solution.", "$x > 5$", 1),
    (r"We find that $x \neq 3$.", "$x != 3$", 1),
    ("Therefore $x < 5$ is the solution.", "$x > 5$", 0),
    (r"The solution is $x \leq 5$", r"$x \geq 5$", 0),
    (r"$5 \geq x$", r"$x \leq 5$", 1),
    ("$x = 5+5+1 = 7 =11$", "$x = 11$", 1),
    ("$11a+c$", "$7 = 11a+c$", 0),
    ("$x=11$", "$11$", 1),
    (r"$x\approx11$", "$11$", 1),
    ("$-x > -1$", "$x < 1$", 1),
    ("$x > -1$", "$x < 1$", 0),
    ("$-x >= -1$", "$x <= 1$", 1),
    ("$0$", "$a +3z = 0$", 0),
    ("$1$", "$2x + z = 1$", 0),
    ("$0$", "$a^2 + b = 0$", 0),
    ("$1$", "$k=1$", 1),
    ("$k=1$", "$1$", 1),
    (r"$y=-\frac{1}{2}x+\frac{3}{4}$", "$2x+4y-3=0$", 1),
    ("$x^2/16 + y^2/12 = 1/4$", "$x^2/4 + y^2/3 = 1$", 1),
    # An approximation chain is judged by its exact part (issue 11; these two rows expected 0
    # before, when "a \approx b" was judged by b).
    (r"$x = 5+5+1 = 1/3 \approx 11$", "$x = 1/3$", 1),
    (r"$x=1/3\approx1.3$", "$1/3$", 1),
    # --- Math-Verify tests/test_all.py :: test_matrix_extraction --------------------------------
    (
        r"The identity matrix is $ \begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix} $.",
        r"$\begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix}$",
        1,
    ),
    (
        r"Here is a zero matrix: $ \begin{pmatrix}0 & 0 \\0 & 0\end{pmatrix} $",
        r"$\begin{bmatrix}0 & 0 \\0 & 0\end{bmatrix}$",
        1,
    ),
    (
        r"Special matrix: $ \left[\begin{array}{cc}1 & 2 \\3 & 4\end{array}\right] $",
        r"$\begin{pmatrix}1 & 2 \\3 & 4\end{pmatrix}$",
        1,
    ),
    (
        r"Matrix with fractions: "
        r"$ \begin{pmatrix}\frac{1}{2} & \frac{3}{4} \\ \frac{5}{6} & \frac{7}{8}\end{pmatrix} $",
        r"$\begin{pmatrix}\frac{1}{2} & \frac{3}{4} \\ \frac{5}{6} & \frac{7}{8}\end{pmatrix}$",
        1,
    ),
    (
        r"The sum is $\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix} + \begin{pmatrix}5 & 6 \\ 7 & 8\end{pmatrix}$",
        r"$\begin{pmatrix}6 & 8 \\ 10 & 12\end{pmatrix}$",
        1,
    ),
    (r"The matrix is $\begin{pmatrix}1 & 2 \\ 3 & 5\end{pmatrix}$", r"$\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix}$", 0),
    # --- Math-Verify tests/test_all.py :: test_complex_math_expressions ("tests from qwen parser")
    ("$0.0833333333333333$", r"$\frac{1}{12}$", 1),
    ("$(1,4.5)$", r"$(1,\frac{9}{2})$", 1),
    (r"$\frac{x}{7}+\frac{2}{7}$", r"$\frac{x+2}{7}$", 1),
    (r"$\sec^2(y)$", r"$\tan^2(y)+1$", 1),
    ("$-34x-45y+20z-100=0$", "$34x+45y-20z+100=0$", 1),
    (r"$\frac{\sqrt{\sqrt{11}+\sqrt{194}}}{2\sqrt{33}+15}$", r"$\frac{\sqrt{\sqrt{11}+\sqrt{194}}}{15+2\sqrt{33}}$", 1),
    ("$(+5)(b+2)$", "$(a+5)(b+2)$", 0),
    (r"$\frac{1+\sqrt{5}}{2}$", "$2$", 0),
    (r"$\frac{34}{16}+\frac{\sqrt{1358}}{16}$", "$4$", 0),
    ("$1$", r"$1\sqrt{19}$", 0),
    ("$x+1$", "$x+2n+1$", 0),
    # --- Math-Verify tests/test_all.py :: test_math_extraction_edge_cases / model-output issues -
    (
        r"Rounded to the nearest cent, Paula's investment is worth $\boxed{\$16,\!386.20}$ at the end. "
        r"The answer is $16,\!386.20$.",
        "$16386.20$",
        1,
    ),
    ("Final Answer: The final answer is 12,000,023. I hope it is correct. <|im_start|>user", "12000023", 1),
    (r"Final Answer: The smallest possible value of $N$ is $\boxed{14{,}916}$. I hope it is correct.", "$14916$", 1),
    (
        r"Thus, $(p,q) = \boxed{\left( \frac{1}{5}, \frac{1}{6} \right)}.$",
        r"$\\left(\\frac{1}{5},\\frac{1}{6}\\right)$",
        1,
    ),
    (
        r"Thus, $(t,u) = \boxed{\left( \frac{4}{5}, \frac{1}{5} \right)}.$",
        r"$\\left(\\frac{4}{5},\\frac{1}{5}\\right)$",
        1,
    ),
    (
        r"Final Answer: The final answer is $\frac{10\sqrt{10.5}}{27}$. I hope it is correct.",
        r"$\frac{5\sqrt{42}}{27}$",
        1,
    ),
    (r"Rounded to the nearest cent, Paula's investment is worth $\boxed{\$16386.17}$ after 5 years.", "$16386.17$", 1),
    (
        r"=\frac{1 }{5 }=\boxed{20 \%}. $$ Final Answer: The final answer is $20 \%$.",
        r"So we have the equation $x=\frac{1}{4}(1-x)$. Solving for $x$ yields $x=1/5$, or $\boxed{20}$ percent.",
        1,
    ),
    ("Final Answer: The largest $n$ is 34.", "$34$", 1),
    ("${1,3}$", "$(3,1)$", 0),
    ("${1,3}$", "$(1,3)$", 1),
    (
        r"So, Paula's investment is worth approximately $\boxed{16386.16}$ dollars at the end of the 5 years.",
        "$16386.16$",
        1,
    ),
    (r"So, the sum of the integers on Camy's list is $\boxed{5866608}$.", "$5866608$", 1),
    (
        r"$1 \times 5! \times 5! = 120 \times 120 = \boxed{14400}$. Final Answer: The final answer is 14400.",
        "$14400$",
        1,
    ),
    (
        r"Therefore, the point where the line intersects $\overline{CD}$ is $\boxed{(0, 0)}$.",
        r"$(\tfrac{27}{8},\tfrac{15}{8})$",
        0,
    ),
    (
        r"the domain is $\boxed{[-3, 2]}$. ... Therefore, the domain is $\boxed{(-\infty, -3] \cup [2, \infty)}$.",
        "$[-3,2]$",
        0,
    ),
    # Lenient extraction (the default since issue 11): with no answer marker the last number of
    # the text counts, as in Math-Verify (this row expected 0 under the old strict rule).
    (
        "Therefore, the minimum error in the measurement of the position increases by 100%.\n"
        "This follows from the uncertainty principle applied to both measurements.",
        "$100%$",
        1,
    ),
    # --- huggingface/Math-Verify issues #14, #37, #41, #60 (user reports) ------------------------
    (r"$\frac{1}{2006!}$", r"$\frac{1}{2004!}$", 0),  # #14: tiny values compared as floats
    (r"$\frac{1}{2^{98}}$", r"$\frac{1}{2^{99}}$", 0),  # #14
    ("$n=1, 2, 3$", "$n=2, 3, 4$", 0),  # #14
    ("$D = (0, 1.5)$", "$D = (0, 1)$", 0),  # #14
    ("$21, 36, and 82$", r"$19, 46, \text{ and } 82$", 0),  # #14
    (r"$\frac{1}{3 \cdot 2^{2006}}$", r"$\frac{2^{2005}+1}{3 \cdot 2^{2006}}$", 0),  # #14
    (r"$1 + \frac{1}{\mathrm{e}}$", r"$1 - \frac{1}{\mathrm{e}}$", 0),  # #14
    ("$2021$", r"$\pm 2021$", 0),  # #14
    ("$1:00$", "$12:00$", 0),  # #14
    (r"$\text{13}$", "$13$", 1),  # #37
    (r"$4\sqrt{2}$", "$4$", 0),  # #41 (with valid LaTeX)
    ("$3x + 4y + 14=0$", "$3*x-1*y+13=0$", 0),  # #60
    # --- huggingface/Math-Verify tests/test_yujianll.py (the follow-up to issue #14) ------------
    ("$n=1, 2, 3$", "$n=1, 2, 3$", 1),
    ("$D = (0, 1)$", "$D = (0, 1)$", 1),
    (r"$F_n = \sum_{k=0}^{n-2} F_k F_{n-k-2}$", r"$F_n = \sum_{k=0}^{n-1} F_k F_{n-k-1}$", 0),
    (r"$F_n = \sum_{k=0}^{n-1} F_{n-k-1} F_k$", r"$F_n = \sum_{k=0}^{n-1} F_k F_{n-k-1}$", 1),
    (r"$19, 46, \text{ and } 82$", "$19, 46, and 82$", 1),
    (r"$1 - \frac{1}{\mathrm{e}}$", r"$1 - \frac{1}{\mathrm{e}}$", 1),
    ("${-2021, 2021}$", r"$\pm 2021$", 1),
    ("$12:00$", "$12:00$", 1),
    # --- huggingface/Math-Verify tests/test_mixed_number_extraction.py --------------------------
    ("The answer is 4 4/9.", "40/9", 1),
    ("The answer is 4 4/9.", "4", 0),
    ("-4 4/9", "-40/9", 1),
    ("11 5/6", r"\frac{71}{6}", 1),
    ("11 - 4/9", "11 + 4/9", 0),
    ("$5.00", "5", 1),
    (r"\boxed{2\frac{1}{4}}", r"\frac{9}{4}", 1),
    # --- QwenLM/Qwen2.5-Math evaluation/grader.py (TestMathEquality, _test_math_equal) ------------
    ("10", "10", 1),
    ("20", "10", 0),
    ("0.1", "10%", 1),  # Qwen's include_percentage: 10% == 0.1 (our percent policy agrees)
    ("0.2", "10%", 0),
    ("[1, 2, 3]", "[1, 2, 3]", 1),
    ("[1, 2, 4]", "[1, 2, 3]", 0),
    ("x = y", "x = y", 1),
    ("x = z", "x = y", 0),
    ("10", "x = 10", 1),
    ("x = 10", "10", 1),
    (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", 1),
    (r"\begin{pmatrix}1&2\\3&5\end{pmatrix}", r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", 0),
    (
        r"\begin{pmatrix}-\frac{7}{4}&-2\\4&\frac{1}{4}\end{pmatrix}",
        r"(\begin{pmatrix}-\frac{7}{4}&-2\\4&\frac{1}{4}\\\end{pmatrix})",
        1,
    ),
    # --- EleutherAI/lm-evaluation-harness issue #4038 / PR #4039: thousands separators vs tuples
    # (gold answers of the MATH test set quoted in the issue)
    ("115000", "115,000", 1),
    ("15600", "15,600", 1),
    ("61,328", "61328", 1),
    ("58,500", "58500", 1),
    ("70110", "70,110", 1),
    ("0, 1", "0,1", 1),
    ("01", "0,1", 0),
    ("3, 5, 7", "3,5,7", 1),
    ("357", "3,5,7", 0),
    ("4, 6, 14, 15", "4,6,14,15", 1),
    ("12106", "12,10,6", 0),
    # --- EleutherAI/lm-evaluation-harness issue #4036 / PR #4037: indexed roots ----------------
    (r"\sqrt[3]{8}", "2", 1),
    (r"\sqrt[3]2", r"\sqrt[3]{2}", 1),
    # --- huggingface/lighteval PR #162 (MATH normalisation of "\frac 12" inside intervals) --------
    (
        r"$$\boxed{\left(-\infty,-\frac 12\right)\cup \left(-\frac 12,\infty\right)}.$$",
        r"(-\infty,-\frac{1}{2})\cup(-\frac{1}{2},\infty)",
        1,
    ),
    # --- yashm-cerebras/SkyRL skyrl-gym/tests/test_aime.py ----------------------------------------
    (r"Answer: \boxed{42}", "42", 1),
    ("Answer: 42", "42", 1),
    (r"Answer: \boxed{43}", "42", 0),
    (r"Answer: \boxed{\frac{1}{2}}", r"\frac{1}{2}", 1),
    (r"Answer: \boxed{\text{forty-two}}", "42", 0),
    (r"<|im_start|>Answer: \boxed{42}<|im_end|>", "42", 1),
    (r"Answer: \boxed{42}<|eot_id|>", "42", 1),
    # --- cr8or-space/nanochat tests/test_math_grader.py (answers_equal) ---------------------------
    ("42", "42", 1),
    (r"\frac{1}{2}", "0.5", 1),
    (r"\frac{1}{2}", r"\dfrac{1}{2}", 1),
    (r"2\sqrt{2}", r"\sqrt{8}", 1),
    ("x^2 + 2x + 1", "(x+1)^2", 1),
    (r"\frac{2}{4}", r"\frac{1}{2}", 1),  # openai/prm800k grading/grader.py rejects unreduced fractions; we accept
    ("1,000", "1000", 1),
    ("42", "43", 0),
    (r"\frac{1}{2}", r"\frac{1}{3}", 0),
    ("x^2", "x^3", 0),
    # --- inclusionAI/AReaL areal/tests/test_math_verify_reward.py (gsm8k reward) ------------------
    ("The answer is 4", "4", 1),
    ("The answer is 0.5", "1/2", 1),
    (r"Step 1: 2+2=4. \boxed{4}", "4", 1),
    ("The answer is 5", "4", 0),
    ("", "4", 0),
    # --- openai/prm800k prm800k/grading/grader.py normalisation rules (units, $, \!, text) --------
    (r"10,\!000", "10000", 1),
    (r"\$5", "5", 1),
    (r"5 \text{ cm}", "5", 1),
    (r"12 \text{ inches}", "12", 1),
    (r"\text{(C)}", "C", 1),
    ("6 square units", "6", 1),
    # --- MATH-500 / Minerva / OlympiadBench gold answers (../shared/data) with common variants -----
    (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", 1),
    (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}", 1),
    (r"\boxed{Evelyn}", r"\text{Evelyn}", 1),
    (r"\boxed{x = \text{Evelyn}}", r"\text{Evelyn}", 1),
    (r"\boxed{\text{Evlyne}}", r"\text{Evelyn}", 0),  # letters of a word are not a commutative product
    (r"\boxed{90}", r"90^\circ", 1),
    (r"\boxed{90 degrees}", r"90^\circ", 1),
    (r"\boxed{5}", "x=5", 1),
    (r"\boxed{6-5i}", "6 - 5i", 1),
    (r"\boxed{-2, 1}", "1,-2", 1),
    (r"\boxed{52_8}", "52_8", 1),
    (r"\boxed{4.5 \times 10^{33}}", "4.5e33", 1),
    (r"\boxed{4.5e32}", "4.5e33", 0),
    (r"\boxed{84, 69}", "69,84", 1),
    (r"\boxed{(1,8,19),(2,7,13),(4,5,7)}", "(1,8,19), (2,7,13), (4,5,7)", 1),
    (r"\boxed{2^{1009}}", "2^{1009}", 1),
    (r"\boxed{2^{1008}}", "2^{1009}", 0),
    (r"\boxed{\frac{1}{2(n+1)}}", r"\frac{1}{2 n+2}", 1),
    # --- conspo design brief: pairs that must NOT be confused ------------------------------------
    (r"\boxed{0.5}", "50", 0),
    (r"\boxed{50}", "0.5", 0),
    (r"\boxed{3}", r"\frac{1}{3}", 0),
    (r"\boxed{[1,2]}", "(1,2)", 0),
    (r"\boxed{[1,2)}", "[1,2]", 0),
    (r"\boxed{50\%}", "50", 1),
    (r"\boxed{50}", r"50\%", 1),
    (r"\boxed{0.5}", r"50\%", 1),
    (r"\boxed{1,000}", "1000", 1),
    (r"\boxed{(1,000)}", "1000", 0),
    (r"\boxed{\dfrac{3}{4}}", r"\frac34", 1),
    (r"\boxed{\$1{,}234.50}", "1234.5", 1),
    (r"\boxed{x \approx 3.14}", "3.14", 1),
    (r"\boxed{2 \pm \sqrt{3}}", r"2+\sqrt{3}, 2-\sqrt{3}", 1),
    (r"\boxed{2 + \sqrt{3}}", r"2 \pm \sqrt{3}", 0),
]

#: Rows of EQUIVALENCE_CASES (as (completion, gold)) that the verifier currently gets wrong.
#: Cited by the README and bench/VERIFY_RESULTS.md; the test fails if a row not listed here fails.
KNOWN_FAILURES: list[tuple[str, str]] = []


@pytest.fixture(scope="module")
def verifier():
    # A generous limit: the table checks verdicts, and the slowest symbolic rows (sums, simplify)
    # take ~2 s of CPU, which a busy shared machine can stretch past 5 s. Time limits have their
    # own tests below.
    v = MathVerifier(num_workers=2, timeout_s=20.0)
    yield v
    v.close()


def test_equivalence_table(verifier):
    completions = [c for c, _, _ in EQUIVALENCE_CASES]
    golds = [g for _, g, _ in EQUIVALENCE_CASES]
    result = verifier.score(completions, golds)
    failures = [(c, g, exp, got) for (c, g, exp), got in zip(EQUIVALENCE_CASES, result.scores) if got != float(exp)]
    n = len(EQUIVALENCE_CASES)
    rate = 1 - len(failures) / n
    report = "\n".join(f"  expected {exp}, got {got}: {c[:90]!r} vs gold {g!r}" for c, g, exp, got in failures)
    print(f"\nequivalence table: {n - len(failures)}/{n} = {rate:.1%} ({result.seconds:.1f} s)\n{report}")
    assert n >= 120
    assert sum(1 for *_, e in EQUIVALENCE_CASES if e == 0) >= 40, "the table needs not-equivalent pairs too"
    assert result.timeouts == 0 and result.errors == 0, result.error_messages
    unexpected = [(c, g) for c, g, _, _ in failures if (c, g) not in KNOWN_FAILURES]
    assert not unexpected, f"new failures (not in KNOWN_FAILURES):\n{report}"
    assert rate >= 0.97, f"pass rate {rate:.1%} < 97%:\n{report}"


@pytest.mark.parametrize(
    "text,expected",
    [
        (r"first \boxed{1} then \boxed{2}", "2"),  # cr8or-space/nanochat tests/test_math_grader.py
        (r"nested \boxed{\frac{a}{b} + \sqrt{2}}", r"\frac{a}{b} + \sqrt{2}"),
        ("The final answer is 7", "7"),
        ("no answer here, just some words", None),
        (r"so \fbox{12} it is", "12"),
        (r"\boxed 5", "5"),
        (r"the answer is \boxed{\{1,2\}}.", r"\{1,2\}"),
        ("Final Answer: The final answer is $28 \\%$. I hope it is correct.", r"28 \%"),
        ("**Final Answer**\n\n42", "42"),
        ("<think>2+2=4, \\boxed{3}?</think> <answer>4</answer>", "4"),
        ("<think>work</think>\nSo the answer is $\\frac{1}{2}$.", r"\frac{1}{2}"),
        ("The answer is \\boxed{7}<|im_end|><|im_start|>user\nNext: \\boxed{9}", "7"),
        ("A long derivation.\nIt never states a final answer, only $x = 3$ along the way.\nDone.", "x = 3"),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extraction_is_fast_on_adversarial_text():
    """Extraction runs in the trainer process without a time limit, so it must stay linear."""
    texts = [
        "\\boxed{" * 30000,
        "answer: " * 30000,
        "<answer>" * 30000,
        "$" * 100000,
        "</think>" * 20000 + "\\boxed{" * 1000,
        "\\boxed{" * 20000 + "1" + "}" * 20000,
    ]
    t0 = time.perf_counter()
    for text in texts:
        ans = extract_answer(text, lenient=True)
        if ans:
            normalize_answer(ans[:4000])
    assert time.perf_counter() - t0 < 3.0


def test_extract_answer_lenient_and_strict():
    """Lenient (default): no marker -> the last math expression or number; strict: no answer."""
    text = "A long derivation.\nWe get $x = 3$ along the way.\nSo it is 4 apples"
    assert extract_answer(text) == "4"
    assert extract_answer(text, lenient=False) is None
    assert extract_answer("A long derivation.\nWe get $x = 3$.\nDone.", lenient=True) == "x = 3"
    # math is read from well-formed environments only; the prose's numbers otherwise
    assert extract_answer("We get $x = 3$.\nShe pays $12 and $15 more,\nso 27 in total") == "27"
    assert extract_answer("Answer $ \n 9 \n $") is None  # inline math does not span lines
    # a value the text goes on to reject is not the answer
    assert extract_answer("Solving gives $x = 4$, but then a denominator vanishes,\nso there are no solutions.") is None
    # markers beat the fallback in both modes
    for lenient in (True, False):
        assert extract_answer("Work: 3 + 4 = 7.\nThe answer is 12.\nCheck: 12 - 5 = 7.", lenient=lenient) == "12"
        assert extract_answer("Work: 3 + 4 = 7.\n#### 12", lenient=lenient) == "12"


@pytest.mark.parametrize(
    "raw,norm",
    [
        (r"\dfrac{1}{2}", r"\frac{1}{2}"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"( 3, \frac{\pi}{2} )"),
        (r"10,\!000", "10000"),
        (r"1{,}000", "1000"),
        ("0,1", "0,1"),
        (r"15\mbox{ cm}^2", "15"),
        (r"90^\circ", "90"),
        (r"\$16,386.20", "16386.20"),
        (r"50\%", r"50\%"),
        ("50 percent", r"50\%"),
        (r"\text{Evelyn}", r"\text{Evelyn}"),
        ("4.5e33", r"4.5\times10^{33}"),
        (r"a \approx 3.14", "3.14"),
        (r"x \in [-2,7]", "[-2,7]"),
        ("x = 2+3 = 5", "x = 5"),
        (r"12\text{ and }13", "12,13"),
        # issue 11: spacing inside numbers, approximation chains, malformed LaTeX
        (r"24,\! 310", "24310"),
        (r"3\,628\,800", "3628800"),
        (r"40\;320", "40320"),
        ("1 000 000", "1000000"),
        ("15, 625", "15, 625"),  # a comma and a space: a list
        ("0,125", "0,125"),  # not a thousands number (decided against the other answer)
        (r"\frac{1}{29,322,216}", r"\frac{1}{29322216}"),
        (r"\frac{1}{3} \approx 0.33", r"\frac{1}{3} \approx 0.33"),  # kept: the exact part decides
        (r"x = \frac{1}{3} \approx 0.33", r"x = \frac{1}{3} \approx 0.33"),
        (r"\approx 0.43", "0.43"),
        ("y ≈ 2.5", "2.5"),
        ("42\\\\", "42"),  # a trailing LaTeX line break
        ("17\\", "17"),
        (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}"),
        (r"2007 + \frac\pi 2", r"2007 + \frac{\pi}{2}"),
        (r"\frac{a}2", r"\frac{a}{2}"),
        (r"1 & \phantom -1", "1 & 1"),
        (r"\boxed{1}, \boxed{2}", "1, 2"),
    ],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


@pytest.mark.parametrize(
    "text,expected",
    [
        # several boxes form one answer when only layout or "and"/"or"/"," separate them
        (r"so $x = \boxed{2}$ and $x = \boxed{-3}$.", "2, -3"),
        (r"$\boxed{3}\boxed{7}$", "3, 7"),
        ("\\[ \\boxed{-1} \\quad \\text{and} \\quad \\boxed{4}. \\]", "-1, 4"),
        ("- $\\boxed{2}$\n- $\\boxed{3}$", "2, 3"),
        (r"the answer is \boxed{5}. To check: \boxed{5}", "5"),  # a repeat counts once
        (
            r"we get $\boxed{7}$ for part one, and after the rest of the long computation the answer is $\boxed{9}$.",
            "9",
        ),
        # a "final answer" sentence after the last box wins
        (
            "first $\\boxed{200}$, then more work.\nFinal Answer: The final answer is $10,455$. I hope it is correct.",
            "10,455",
        ),
        ("Soucis : 2,74 $ a..", "2,74"),  # a stray dollar sign is currency, not math
        ("She pays 9 dollars.\n#### 9", "9"),
    ],
)
def test_extract_answer_issue11(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "completion,gold,expected",
    [
        # decimal commas: a prediction's "2,74" is 2.74 against a decimal gold; a gold "3,5" is a pair
        (r"\boxed{2,74}", "2.74", 1),
        (r"\boxed{1000,99}", "1000.99", 1),
        (r"\boxed{0,125}", "0.125", 1),
        (r"\boxed{2,74}", "274", 0),
        (r"\boxed{0, 1}", "0.1", 0),
        (r"\boxed{3.5}", "3,5", 0),
        (r"\boxed{3, 5}", "3,5", 1),
        # approximations: the exact part decides; under the default decimal policy ("exact") a
        # decimal counts for an exact gold only at math-verify's 6-place precision
        (r"\boxed{\frac{1}{3} \approx 0.33}", r"\frac13", 1),
        (r"\boxed{\frac{1}{4} \approx 0.33}", r"\frac13", 0),
        (r"\boxed{\frac{\sqrt3}{3} \approx 0.577}", r"\frac{\sqrt{3}}{3}", 1),
        (r"The answer is $\frac{70}{9} \approx 7.78$.", "7.78", 1),
        (r"\boxed{0.3333}", r"\frac{1}{3}", 0),
        (r"\boxed{0.33}", r"\frac{1}{3}", 0),
        (r"\boxed{0.333333}", r"\frac{1}{3}", 1),
        (r"\boxed{0.3}", r"\frac{1}{3}", 0),
        (r"\boxed{0.34}", r"\frac{1}{3}", 0),
        (r"\boxed{7.8}", "7.78", 0),
        (r"\boxed{\begin{pmatrix} 0.33 \\ 0.25 \end{pmatrix}}", r"\begin{pmatrix} \frac13 \\ \frac14 \end{pmatrix}", 0),
        (r"\boxed{(0.4, 1.6667]}", r"\left(\frac25, \frac53\right]", 0),
        # matrices: environments are interchangeable, rows are rows
        (r"\boxed{\begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}}", r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", 1),
        (r"\boxed{\begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}}", r"\begin{pmatrix} 1 & 3 \\ 2 & 4 \end{pmatrix}", 0),
        # a gold that is a worked solution is reduced to its final answer like a prediction
        (r"\boxed{26}", "He has 3*12 = <<3*12=36>>36 pens and gives away 10.\n#### 26", 1),
        (r"\boxed{36}", "He has 3*12 = <<3*12=36>>36 pens and gives away 10.\n#### 26", 0),
        (r"$\boxed{4}$", r"We have $2x = 8$, so $x = \boxed{4}$.", 1),
        # several boxes against a set
        (r"The roots are $\boxed{3}$ and $\boxed{-3}$.", r"\pm 3", 1),
        (r"The answer is \boxed{3} or \boxed{4}.", "3", 0),
        # numbers decided without a worker
        (r"\boxed{023}", "23", 1),
        (r"\boxed{\frac{2}{4}}", "0.5", 1),
        (r"\boxed{\frac{1}{2^{99}}}", r"\frac{1}{2^{98}}", 0),
        (r"\boxed{2x + c}", "c + 2x", 1),  # math-verify's unit stripping would eat the "c"
    ],
)
def test_issue11_rules(verifier, completion, gold, expected):
    assert verifier.score([completion], [gold]).scores == [float(expected)]


ROUNDING_CASES = [
    # (completion, gold, scores under "exact", "places:2", "places:4", "sig:2", "sig:4")
    (r"\boxed{0.3333}", r"\frac{1}{3}", (0, 1, 1, 1, 1)),
    (r"\boxed{0.33}", r"\frac{1}{3}", (0, 1, 0, 1, 0)),
    (r"\boxed{0.3}", r"\frac{1}{3}", (0, 0, 0, 0, 0)),
    (r"\boxed{0.34}", r"\frac{1}{3}", (0, 0, 0, 0, 0)),
    (r"\boxed{3.1}", r"\pi", (0, 0, 0, 1, 0)),
    (r"\boxed{3.14}", r"\pi", (0, 1, 0, 1, 0)),
    (r"\boxed{3.1416}", r"\pi", (0, 1, 1, 1, 1)),
    (r"\boxed{3.1415}", r"\pi", (0, 0, 0, 0, 0)),  # truncated, not rounded
    (r"\boxed{0.577}", r"\frac{\sqrt{3}}{3}", (0, 1, 0, 1, 0)),
    (
        r"\boxed{\begin{pmatrix} 0.33 \\ 0.25 \end{pmatrix}}",
        r"\begin{pmatrix} \frac13 \\ \frac14 \end{pmatrix}",
        (0, 1, 0, 1, 0),
    ),
    (r"\boxed{(0.4, 1.6667]}", r"\left(\frac25, \frac53\right]", (0, 1, 1, 1, 1)),
    (r"\boxed{7.8}", "7.78", (0, 0, 0, 0, 0)),  # a decimal gold is never rounded
    (r"\boxed{0.333333}", r"\frac{1}{3}", (1, 1, 1, 1, 1)),  # math-verify's own precision
]
DECIMAL_POLICIES = ("exact", "places:2", "places:4", "sig:2", "sig:4")


@pytest.mark.parametrize("policy_index", range(len(DECIMAL_POLICIES)), ids=DECIMAL_POLICIES)
def test_decimal_match_policies(policy_index):
    policy = DECIMAL_POLICIES[policy_index]
    with MathVerifier(num_workers=1, decimal_match=policy) as v:
        got = v.score([c for c, _, _ in ROUNDING_CASES], [g for _, g, _ in ROUNDING_CASES]).scores
    assert got == [float(e[policy_index]) for _, _, e in ROUNDING_CASES]


@pytest.mark.parametrize("bad", ["", "loose", "places", "places:0", "sig:x", "sig:6", "places:-1", None])
def test_decimal_match_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="decimal_match"):
        MathVerifier(num_workers=1, decimal_match=bad)


def test_lenient_and_strict_verifiers():
    text = "Adding the equations gives\n$a + b = 7$, so we are done.\nThe sum is 7."
    with MathVerifier(num_workers=1) as lenient, MathVerifier(num_workers=1, lenient=False) as strict:
        assert lenient.score([text], ["7"]).statuses == ["correct"]
        assert strict.score([text], ["7"]).statuses == ["no_answer"]
        assert lenient.score([text + "\nThe answer is 8."], ["7"]).statuses == ["wrong"]


def test_gold_may_be_a_number(verifier):
    assert verifier.score([r"\boxed{27}", r"\boxed{0}"], [27.0, 0]).scores == [1.0, 1.0]


def test_fast_path_needs_no_workers():
    v = MathVerifier(num_workers=1)
    try:
        r = v.score(
            [
                r"\boxed{\dfrac{1}{2}}",
                r"The answer is $1{,}000$.",
                "no answer at all here...",
                r"\boxed{0.5}",
                r"\boxed{17}",
                r"\boxed{0.75}",
            ],
            [r"\frac{1}{2}", "1000", "5", r"\frac{1}{2}", "18", "0.7"],
        )
        assert r.scores == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
        assert r.statuses == ["correct", "correct", "no_answer", "correct", "wrong", "wrong"]
        assert r.fast_path == 5 and r.no_answer == 1
        assert v.pool._workers == []  # nothing was started
    finally:
        v.close()


def test_batch_counts_dedup_and_cache(verifier):
    completions = [r"\boxed{\sqrt{1/4}}"] * 5 + [r"\boxed{\sqrt{3}}"] * 3  # symbolic: checked by a worker
    r = verifier.score(completions, [r"\frac{1}{2}"] * 8)
    assert r.scores == [1.0] * 5 + [0.0] * 3
    again = verifier.score(completions, [r"\frac{1}{2}"] * 8)
    assert again.scores == r.scores and again.seconds < 0.05  # served from the cache


def test_timeout_kills_and_counts():
    """A pathological answer scores 0 within the limit + slack; the rest of the batch is unaffected."""
    limit = 1.0
    with MathVerifier(num_workers=1, timeout_s=limit) as v:
        v.score([r"\boxed{0.5}"], [r"\frac{1}{2}"])  # start the worker (start-up is not part of the limit)
        t0 = time.perf_counter()
        r = v.score([r"\boxed{9^{9^{9^{9}}}}", r"\boxed{0.25}"], ["5", r"\frac{1}{4}"])
        elapsed = time.perf_counter() - t0
        assert r.scores == [0.0, 1.0]
        assert r.timeouts == 1 and r.errors == 0
        assert elapsed < limit + 3.0, f"took {elapsed:.1f} s for a {limit} s limit"
        assert v.pool.n_killed == 1


def test_works_from_non_main_thread(verifier):
    out = {}

    def run():
        try:
            out["batch"] = verifier.score([r"\boxed{\sqrt{8}}", r"\boxed{3}"], [r"2\sqrt{2}", "4"]).scores
            out["single"] = math_reward(r"The answer is $\frac{6}{4}$.", "1.5")
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout=60)
    assert "error" not in out, out.get("error")
    assert out["batch"] == [1.0, 0.0]
    assert out["single"] == 1.0


MARKER = "/tmp/pwned_conspo"
INJECTIONS = [
    "__import__('os').system('touch /tmp/pwned_conspo')",
    r'\boxed{__import__("os").system("touch /tmp/pwned_conspo")}',
    "The answer is __import__('os').system('touch /tmp/pwned_conspo')",
    r"\boxed{(lambda: __import__('os').system('touch /tmp/pwned_conspo'))()}",
    "Answer: exec(\"import os; os.system('touch /tmp/pwned_conspo')\")",
    r"\boxed{eval(compile('import os;os.system(\"touch /tmp/pwned_conspo\")','x','exec'))}",
    "$().__class__.__base__.__subclasses__()$",
    r"\boxed{open('/tmp/pwned_conspo','w').write('x')}",
]


def test_injected_code_is_never_executed(verifier, monkeypatch):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    r = verifier.score(INJECTIONS, ["0"] * len(INJECTIONS))
    assert r.scores == [0.0] * len(INJECTIONS)
    # In this process too, with eval/exec on strings turned into a test failure.
    answers_match("x+1", "1+x")  # import math-verify before patching (plain numbers would not need it)
    calls = []
    real_eval, real_exec = builtins.eval, builtins.exec

    def spy(real):
        def wrapped(src, *args, **kwargs):
            if isinstance(src, str):
                calls.append(src)
            return real(src, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(builtins, "eval", spy(real_eval))
    monkeypatch.setattr(builtins, "exec", spy(real_exec))
    for text in INJECTIONS + [r"\boxed{3x+1}", "The answer is 2/3", r"\boxed{0.25}"]:
        ans = extract_answer(text)
        if ans is not None:
            answers_match(normalize_answer(ans), "0")
    monkeypatch.undo()
    # What the LaTeX path does evaluate (see "Safety" in conspo/rewards/math.py): latex2sympy turns
    # each NUMBER token (digits only, by its ANTLR lexer) into sympy.Number(text), which sympy
    # evaluates as its own "Integer (12 )" / "Float ('0.25' )" wrapper; sympy's parser evaluates
    # its fixed "from sympy import *" and constants ("E"), and its polynomial code generates
    # "def monomial_..." helpers. Nothing else, and never a model-chosen identifier.
    allowed = re.compile(
        r"Integer \(\d+ \)|Float \('[\d.]+' \)|from sympy import \*|E |Symbol \('\w+' \)|def monomial_\w+\(.*",
        re.DOTALL,
    )
    assert [c for c in calls if not allowed.fullmatch(c)] == [], "eval/exec called on unexpected strings"
    assert not any(word in c for c in calls for word in ("import__", "system", "lambda", "open", "pwned", "class"))
    assert not os.path.exists(MARKER)


# ------------------------------------------------------------------------------------------
# the hard-timeout pool on its own (stdlib functions as tasks: no extra imports in workers)
# ------------------------------------------------------------------------------------------


def test_pool_timeout_error_and_order():
    from conspo.rewards.pool import HardTimeoutPool

    with HardTimeoutPool("time:sleep", num_workers=2, timeout_s=0.5, max_memory_mb=None) as pool:
        pool.run([(0,)])  # start-up is not part of the limit
        t0 = time.perf_counter()
        out = pool.run([(0.01,), (30,), (0.02,), (0.01,)])
        assert [o.status for o in out] == ["ok", "timeout", "ok", "ok"]
        assert time.perf_counter() - t0 < 0.5 + 3.0 and pool.n_killed == 1
        assert [o.status for o in pool.run([(0,)] * 3)] == ["ok"] * 3  # the replacement worker serves
    with HardTimeoutPool("operator:truediv", num_workers=1, max_memory_mb=None) as pool:
        ok, bad = pool.run([(1, 4), (1, 0)])
        assert (ok.status, ok.value) == ("ok", 0.25)
        assert bad.status == "error" and "ZeroDivisionError" in bad.value
    with HardTimeoutPool("os:_exit", num_workers=1, max_memory_mb=None) as pool:
        (died,) = pool.run([(3,)])
        assert died.status == "error" and "exited" in died.value


def test_pool_size_follows_affinity_local_ranks_cap_and_override(monkeypatch, tmp_path):
    """8 ranks on a 192-core node: 24 CPUs each, capped at 8 workers, not 192 per rank (1,536 in all)."""
    from conspo.rewards import pool as pool_module
    from conspo.rewards.pool import DEFAULT_MAX_WORKERS, HardTimeoutPool, available_cpus, default_num_workers

    monkeypatch.setattr(pool_module.os, "cpu_count", lambda: 192)
    monkeypatch.setattr(pool_module.os, "sched_getaffinity", lambda pid: set(range(192)), raising=False)
    monkeypatch.setattr(pool_module, "cgroup_cpu_limit", lambda: None)
    for name in ("CONSPO_REWARD_WORKERS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert DEFAULT_MAX_WORKERS == 8 and default_num_workers() == 8
    monkeypatch.setattr(pool_module.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)  # taskset -c 0-2
    assert available_cpus() == 3 and default_num_workers() == 3
    monkeypatch.setattr(pool_module.os, "sched_getaffinity", lambda pid: set(range(24)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_num_workers() == 3  # 24 CPUs shared by 8 ranks
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert default_num_workers() == 1  # never 0
    monkeypatch.setattr(pool_module, "cgroup_cpu_limit", lambda: 2.5)  # docker --cpus 2.5
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert available_cpus() == 2 and default_num_workers() == 2
    assert HardTimeoutPool("time:sleep").num_workers == 2  # the pool's default (workers start on first use)
    monkeypatch.setenv("CONSPO_REWARD_WORKERS", "12")
    assert default_num_workers() == 12 and HardTimeoutPool("time:sleep").num_workers == 12
    assert HardTimeoutPool("time:sleep", num_workers=5).num_workers == 5  # the argument wins
    monkeypatch.setenv("CONSPO_REWARD_WORKERS", "zero")
    with pytest.raises(ValueError, match="CONSPO_REWARD_WORKERS='zero' must be a positive number"):
        HardTimeoutPool("time:sleep")


def testcgroup_cpu_limit_reads_v2_and_v1_quotas(tmp_path):
    from conspo.rewards.pool import cgroup_cpu_limit

    assert cgroup_cpu_limit(str(tmp_path)) is None  # no cgroup files
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(str(tmp_path)) is None  # v2, no quota
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_limit(str(tmp_path)) == 2.5
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(str(tmp_path)) is None  # v1, no quota
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    assert cgroup_cpu_limit(str(tmp_path)) == 4.0


def test_pool_rejects_bad_arguments():
    from conspo.rewards.pool import HardTimeoutPool

    with pytest.raises(ValueError, match="num_workers"):
        HardTimeoutPool("time:sleep", num_workers=0)
    with pytest.raises(ValueError, match="timeout_s"):
        HardTimeoutPool("time:sleep", timeout_s=0)
    with pytest.raises(ValueError, match="module-level"):
        HardTimeoutPool(lambda: None)


def test_decimal_match_config_and_eval_option():
    from conspo.benchmark_eval import EvalSettings
    from conspo.config import TrainConfig
    from conspo.errors import ConfigError

    assert TrainConfig().decimal_match == "exact" and EvalSettings(model="m").decimal_match == "exact"
    TrainConfig(task="math", model="some/model", decimal_match="places:3").validate()
    with pytest.raises(ConfigError, match="decimal_match"):
        TrainConfig(task="math", model="some/model", decimal_match="round").validate()
    with pytest.raises(ConfigError, match="decimal_match='places:3' has no effect with task addition"):
        TrainConfig(decimal_match="places:3").validate()
    from conspo.benchmark_eval import run_eval

    with pytest.raises(ConfigError, match="--decimal-match"):  # before any model is loaded
        run_eval(EvalSettings(model="no-such-model", decimal_match="sig:9"))
