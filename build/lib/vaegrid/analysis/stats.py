"""Statistics over repeats: a config's mean with its t interval, and paired comparisons.

Repeat r of every config draws from the same seeds (common random numbers, train/trial.py), so
two configs are compared repeat by repeat: the paired t-test of their differences, whose
noise is what is left after the shared seeds' luck cancels. One report makes several such
tests; their p-values are Holm-adjusted as a family (``holm``) before any is called larger
than the noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

# Two-sided 95% intervals; a difference with p below ALPHA is called larger than the noise.
LEVEL = 0.95
ALPHA = 0.05
# p-values below this are written "p < P_SHOWN_MIN": more digits would claim false precision.
P_SHOWN_MIN = 0.001

NAN = float("nan")


@dataclass(frozen=True)
class Summary:
    """One config's metric over its ``n`` repeats: mean, sample std, 95% t interval."""

    n: int
    mean: float
    std: float  # ddof = 1; NaN below 2 repeats
    ci_low: float  # mean ± t(0.975, n - 1) std / sqrt(n); NaN below 2 repeats
    ci_high: float


@dataclass(frozen=True)
class Paired:
    """The paired t-test of d_r = b_r - a_r over ``n`` repeats (two-sided)."""

    n: int
    diff: float  # mean of d
    se: float  # std(d, ddof = 1) / sqrt(n)
    ci_low: float  # 95% t interval of the mean difference
    ci_high: float
    p: float  # two-sided; NaN below 2 repeats


def summarize(values: Sequence[float]) -> Summary:
    """Mean, sample std and the 95% Student-t interval of the mean of ``values``.

    One value: its mean, the rest NaN. No values: all NaN.
    """
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return Summary(0, NAN, NAN, NAN, NAN)
    mean = float(x.mean())
    if n == 1:
        return Summary(1, mean, NAN, NAN, NAN)
    std = float(x.std(ddof=1))
    half = _t_quantile(n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def paired(a: Sequence[float], b: Sequence[float]) -> Paired:
    """The two-sided paired t-test of ``b - a``, repeat by repeat.

    With a lower-is-better metric, ``paired(winner, other)`` has ``diff > 0`` when the
    winner is better. Below 2 repeats se, the interval and p are NaN. Differences all
    equal: se 0 and the interval (diff, diff); p 1 when they are all 0, else 0.

    Raises:
        ValueError: ``a`` and ``b`` differ in length.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired needs two equally long lists; got {len(x)} and {len(y)}")
    d = y - x
    n = len(d)
    if n == 0:
        return Paired(0, NAN, NAN, NAN, NAN, NAN)
    diff = float(d.mean())
    if n == 1:
        return Paired(1, diff, NAN, NAN, NAN, NAN)
    if np.all(d == d[0]):  # no spread: t would be 0 / 0 or x / 0
        return Paired(n, diff, 0.0, diff, diff, 1.0 if diff == 0 else 0.0)
    se = float(d.std(ddof=1)) / math.sqrt(n)
    half = _t_quantile(n - 1) * se
    p = float(2 * stats.t.sf(abs(diff) / se, n - 1))
    return Paired(n, diff, se, diff - half, diff + half, p)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (Holm 1979), in their order.

    The i-th smallest of the m p-values becomes max over j <= i of min(1, (m - j + 1) p_(j)):
    calling every adjusted p below ALPHA significant keeps the chance of any false call in
    the family below ALPHA, whatever the tests' dependence, and calls at least as many as
    Bonferroni's m p would. NaN (no test: one repeat) stays NaN and is not counted in m.

    Raises:
        ValueError: a p-value outside [0, 1].
    """
    bad = [p for p in p_values if not 0 <= p <= 1 and not math.isnan(p)]
    if bad:
        raise ValueError(f"holm needs p-values in [0, 1]; got {bad[0]}")
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    out = [NAN] * len(p_values)
    running = 0.0  # the step-down's running maximum: adjusted p-values keep the raw order
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        out[i] = running
    return out


def verdict(
    winner: str,
    other: str,
    result: Paired,
    unit: str = "nats",
    *,
    p_adjusted: float | None = None,
) -> str:
    """One plain-English sentence on ``result = paired(winner's values, other's values)``.

    For a lower-is-better metric: a positive ``diff`` says the winner beats the other,
    a negative one that it trails it on these repeats. ``p_adjusted``: the test's p once
    adjusted for the family it belongs to (``holm``); given, the sentence shows it beside the
    raw p and calls the difference larger than the noise by it, not by the raw p.
    """
    seeds = f"{result.n} seed" + ("" if result.n == 1 else "s")
    if not math.isfinite(result.diff):
        return f"{winner} and {other} cannot be compared over {seeds}: no paired values"
    if result.diff > 0:
        head = f"{winner} beats {other} by"
    elif result.diff < 0:
        head = f"{winner} trails {other} by"
    else:
        head = f"{winner} ties with {other}, a difference of"
    size = _number(abs(result.diff))
    if result.n < 2:
        return f"{head} {size} {unit} over {seeds}: no test possible (one repeat)"
    p = result.p if p_adjusted is None else p_adjusted
    noise = (
        "larger than the seed-to-seed noise"
        if p < ALPHA
        else "not distinguishable from seed-to-seed noise"
    )
    shown = (
        format_p(p)
        if p_adjusted is None
        else f"Holm-adjusted {format_p(p)} (raw {format_p(result.p)})"
    )
    return (
        f"{head} {size} ± {_number(result.se)} {unit} (mean ± standard error of the paired "
        f"difference), {shown} over {seeds}: {noise}"
    )


def format_p(p: float) -> str:
    """``p = 0.031`` (2 significant digits), ``p < 0.001`` below that."""
    if p < P_SHOWN_MIN:
        return f"p < {P_SHOWN_MIN:g}"
    return f"p = {p:.2g}"


def _number(x: float) -> str:
    """2 decimals; 2 significant digits for small nonzero values, which would read 0.00."""
    return f"{x:.2f}" if x == 0 or abs(x) >= 0.01 else f"{x:.2g}"


def _t_quantile(df: int) -> float:
    """t(0.975, df) for LEVEL = 0.95: the half-width of the 95% interval in standard errors."""
    return float(stats.t.ppf(1 - (1 - LEVEL) / 2, df))
