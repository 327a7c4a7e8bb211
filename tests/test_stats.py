"""Repeat statistics against numbers worked out by hand, not by calling scipy again.

The references: t-table quantiles, and the closed forms of Student's t distribution for
1 and 2 degrees of freedom (two-sided p = 1 - (2/pi) atan|t| and 1 - |t| / sqrt(2 + t^2)).
"""

from __future__ import annotations

import itertools
import math

import pytest

from vaegrid.analysis.stats import (
    Paired,
    Summary,
    format_p,
    holm,
    paired,
    summarize,
    verdict,
)

T_975_1 = 12.706205  # t-table: t(0.975, 1 degree of freedom)
T_975_2 = 4.302653
T_975_4 = 2.776445


def close(x: float, y: float) -> bool:
    return math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)


def test_summarize_known_sample_against_the_t_table() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    std = math.sqrt(2.5)  # squares of the deviations: 4 + 1 + 0 + 1 + 4 = 10, over n - 1 = 4
    half = T_975_4 * std / math.sqrt(5)
    assert s.n == 5 and s.mean == 3.0 and close(s.std, std)
    assert close(s.ci_low, 3 - half) and close(s.ci_high, 3 + half)
    assert close(s.ci_low, 1.036757) and close(s.ci_high, 4.963243)  # worked out by hand


@pytest.mark.filterwarnings("error")  # no "degrees of freedom <= 0" from numpy
def test_summarize_one_value_and_none() -> None:
    one = summarize([7.5])
    assert one.n == 1 and one.mean == 7.5
    assert math.isnan(one.std) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    none = summarize([])
    assert none.n == 0 and all(math.isnan(v) for v in (none.mean, none.std, none.ci_low))
    assert math.isnan(none.ci_high)


def test_summarize_constant_sample_has_a_zero_width_interval() -> None:
    assert summarize([2.0, 2.0, 2.0]) == Summary(3, 2.0, 0.0, 2.0, 2.0)


def test_paired_one_degree_of_freedom() -> None:
    r = paired([10.0, 20.0], [11.0, 23.0])  # d = 1, 3: mean 2, sd sqrt(2), se 1, t 2
    assert r.n == 2 and close(r.diff, 2.0) and close(r.se, 1.0)
    assert close(r.p, 1 - 2 / math.pi * math.atan(2.0))  # 0.2951672...
    assert close(r.ci_low, 2 - T_975_1) and close(r.ci_high, 2 + T_975_1)


def test_paired_two_degrees_of_freedom() -> None:
    r = paired([0.0, 0.0, 0.0], [1.0, 2.0, 6.0])  # d: mean 3, variance (4 + 1 + 9) / 2 = 7
    se = math.sqrt(7 / 3)
    t = 3 / se
    assert r.n == 3 and close(r.diff, 3.0) and close(r.se, se)
    assert close(r.p, 1 - t / math.sqrt(2 + t * t))  # 0.18845...
    assert close(r.ci_low, 3 - T_975_2 * se) and close(r.ci_high, 3 + T_975_2 * se)


def test_paired_is_b_minus_a_and_symmetric_in_p() -> None:
    forward = paired([5.0, 6.0, 9.0], [4.0, 4.0, 3.0])  # d = -1, -2, -6
    backward = paired([4.0, 4.0, 3.0], [5.0, 6.0, 9.0])
    assert close(forward.diff, -3.0) and close(backward.diff, 3.0)
    assert close(forward.p, backward.p) and close(forward.se, backward.se)
    assert close(forward.ci_low, -backward.ci_high)


def test_paired_without_spread() -> None:
    assert paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == Paired(3, 0.0, 0.0, 0.0, 0.0, 1.0)
    shifted = paired([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])  # d = 0.5 every repeat
    assert shifted == Paired(3, 0.5, 0.0, 0.5, 0.5, 0.0)


@pytest.mark.filterwarnings("error")
def test_paired_one_repeat_and_none() -> None:
    one = paired([1.0], [3.0])
    assert one.n == 1 and one.diff == 2.0
    assert all(math.isnan(v) for v in (one.se, one.ci_low, one.ci_high, one.p))
    assert paired([], []).n == 0 and math.isnan(paired([], []).diff)


def test_paired_refuses_lists_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="2 and 3"):
        paired([1.0, 2.0], [1.0, 2.0, 3.0])


def test_format_p() -> None:
    assert format_p(0.31234) == "p = 0.31"
    assert format_p(0.012345) == "p = 0.012"
    assert format_p(0.001) == "p = 0.001"
    assert format_p(0.000999) == "p < 0.001"
    assert format_p(0.0) == "p < 0.001"


def test_verdict_winner_beats_other_beyond_the_noise() -> None:
    r = Paired(5, 0.3312, 0.1234, 0.0, 0.7, 0.0123)
    assert verdict("H400/Z100", "H600/Z100", r) == (
        "H400/Z100 beats H600/Z100 by 0.33 ± 0.12 nats (mean ± standard error of the paired "
        "difference), p = 0.012 over 5 seeds: larger than the seed-to-seed noise"
    )


def test_verdict_within_the_noise_and_other_units() -> None:
    r = Paired(5, 0.05, 0.04, -0.06, 0.16, 0.31)
    text = verdict("A", "B", r, unit="bits")
    assert text.startswith("A beats B by 0.05 ± 0.04 bits")
    assert text.endswith("p = 0.31 over 5 seeds: not distinguishable from seed-to-seed noise")
    just_above = verdict("A", "B", Paired(5, 0.05, 0.04, -0.06, 0.16, 0.05))
    assert just_above.endswith("p = 0.05 over 5 seeds: not distinguishable from seed-to-seed noise")


def test_verdict_negative_difference_trails_by_its_absolute_value() -> None:
    r = paired([1.0, 1.0, 1.0], [0.2, 0.5, 0.1])  # the "winner" is worse on every repeat
    text = verdict("A", "B", r)
    assert text.startswith("A trails B by 0.73 ± 0.12 nats") and "-0." not in text
    assert text.endswith("over 3 seeds: larger than the seed-to-seed noise")


def test_verdict_tiny_p_one_repeat_tie_and_nothing() -> None:
    assert "p < 0.001 over 3 seeds" in verdict("A", "B", paired([0, 0, 0], [2, 2, 2]))
    assert verdict("A", "B", paired([1.0], [1.25])) == (
        "A beats B by 0.25 nats over 1 seed: no test possible (one repeat)"
    )
    tie = verdict("A", "B", paired([1.0, 2.0], [1.0, 2.0]))
    assert tie.startswith("A ties with B") and "p = 1 over 2 seeds: not distinguishable" in tie
    assert verdict("A", "B", paired([], [])) == (
        "A and B cannot be compared over 0 seeds: no paired values"
    )


def test_holm_against_a_hand_worked_family() -> None:
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06
    # (the step-down's running maximum); returned in the order given
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1: 0.3 x 3 = 0.9, 0.4 x 2 = 0.8 -> 0.9, 0.6 x 1 -> 0.9; 0.5 x 3 = 1.5 -> 1
    assert holm([0.4, 0.3, 0.6]) == pytest.approx([0.9, 0.9, 0.9])
    assert holm([0.5, 0.9, 0.2]) == pytest.approx([1.0, 1.0, 0.6])


def test_holm_keeps_the_order_of_the_raw_p_and_never_lowers_one() -> None:
    raw = [0.001, 0.2, 0.011, 0.04, 0.012, 0.9, 0.012, 0.03]
    adjusted = holm(raw)
    for (p, a), (q, b) in itertools.product(zip(raw, adjusted, strict=True), repeat=2):
        assert a >= p and a <= 1
        if p <= q:
            assert a <= b  # a smaller raw p never gets a larger adjusted one
    # sorted: 0.008, 0.077, 0.072 -> 0.077, 0.06 -> 0.077, 0.12, 0.12, 0.4, 0.9
    assert adjusted == pytest.approx([0.008, 0.4, 0.077, 0.12, 0.077, 0.9, 0.077, 0.12])


def test_holm_of_one_p_is_that_p_and_untested_ones_stay_out_of_the_family() -> None:
    assert holm([0.031]) == [0.031]
    assert holm([]) == []
    nan = float("nan")
    found = holm([nan, 0.02, 0.01])  # m = 2: the NaN (one repeat, no test) does not count
    assert math.isnan(found[0]) and found[1:] == pytest.approx([0.02, 0.02])
    with pytest.raises(ValueError, match=r"p-values in \[0, 1\]; got 1.5"):
        holm([0.1, 1.5])


def test_verdict_calls_by_the_adjusted_p_and_shows_both() -> None:
    r = Paired(5, 0.3312, 0.1234, 0.0, 0.7, 0.0123)  # raw p alone would call it
    text = verdict("A", "B", r, p_adjusted=0.0492)
    assert text.endswith(
        "Holm-adjusted p = 0.049 (raw p = 0.012) over 5 seeds: larger than the seed-to-seed noise"
    )
    text = verdict("A", "B", r, p_adjusted=0.072)
    assert text.endswith(
        "Holm-adjusted p = 0.072 (raw p = 0.012) over 5 seeds: "
        "not distinguishable from seed-to-seed noise"
    )
