"""Paired differences between objectives over seeds, with a Student-t 95% confidence interval.

Written out because scipy is not a dependency. For n paired seeds with differences d_1..d_n:

    mean = (1/n) sum d_i,   s = sample std (n - 1 in the denominator),
    95% CI = mean +- t_{0.975, n-1} * s / sqrt(n)

t_{0.975, df} is tabulated for df = 1..30 (the standard two-sided 5% critical values of Student's t
distribution, e.g. Abramowitz and Stegun 1964, Table 26.10); above 30 it is the Cornish-Fisher expansion
of A&S 26.7.5 around the normal quantile z = 1.959964, whose error there is below 1e-4 (tested against the
table at df = 30 and against a numerical integral of the t density).
"""

from __future__ import annotations

import math
import statistics

#: t_{0.975, df} for df = 1..30.
T_975 = (
    12.7062,
    4.3027,
    3.1824,
    2.7764,
    2.5706,
    2.4469,
    2.3646,
    2.3060,
    2.2622,
    2.2281,
    2.2010,
    2.1788,
    2.1604,
    2.1448,
    2.1314,
    2.1199,
    2.1098,
    2.1009,
    2.0930,
    2.0860,
    2.0796,
    2.0739,
    2.0687,
    2.0639,
    2.0595,
    2.0555,
    2.0518,
    2.0484,
    2.0452,
    2.0423,
)
Z_975 = 1.959964


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (the half-width factor of a 95% CI)."""
    if not isinstance(df, int) or df < 1:
        raise ValueError(f"degrees of freedom must be an int >= 1, got {df!r}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975  # A&S 26.7.5, terms up to df^-3
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def paired_difference(values: dict[int, float], reference: dict[int, float]) -> dict:
    """Mean of ``values[seed] - reference[seed]`` over the seeds both have, with its 95% CI (None for one seed)."""
    seeds = sorted(set(values) & set(reference))
    diffs = [values[s] - reference[s] for s in seeds]
    if not diffs:
        return {"seeds": 0, "mean": None, "low": None, "high": None}
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return {"seeds": 1, "mean": mean, "low": None, "high": None}
    half = t_quantile_975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return {"seeds": len(diffs), "mean": mean, "low": mean - half, "high": mean + half}
