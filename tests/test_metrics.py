"""The Wilson score interval against published and independently computed values."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from monai_emotion.metrics import wilson_interval

#: Newcombe (1998), "Two-sided confidence intervals for the single proportion: comparison of
#: seven methods", Statistics in Medicine 17:857-872: its worked examples, method 3 (Wilson
#: score, no continuity correction), 95 %: (successes, n) -> (lower, upper), printed to 4 decimals
NEWCOMBE_1998 = {
    (81, 263): (0.2553, 0.3662),
    (15, 148): (0.0624, 0.1605),
    (0, 20): (0.0000, 0.1611),
    (1, 29): (0.0061, 0.1718),
}


@pytest.mark.parametrize("counts", sorted(NEWCOMBE_1998))
def test_wilson_matches_newcombe_1998(counts):
    low, high = wilson_interval(*counts)
    assert (round(low, 4), round(high, 4)) == NEWCOMBE_1998[counts]


@pytest.mark.parametrize("successes, n", [(0, 1), (3, 7), (29, 29), (120, 253), (1, 1000)])
def test_wilson_matches_scipy(successes, n):
    reference = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    # wilson_interval uses z = 1.959964, scipy the exact normal quantile: equal to ~1e-7
    assert wilson_interval(successes, n) == pytest.approx((reference.low, reference.high), abs=1e-6)


def test_wilson_edges():
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(1 - high) and 0 < low < 0.5 < high < 1  # symmetric about 1/2
    assert wilson_interval(5, 10, z=1.0)[0] > low  # a smaller z gives a narrower interval
