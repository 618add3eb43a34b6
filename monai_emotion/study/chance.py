"""Chance tests believable by a methods reviewer: the group test, single-model tests, verdicts.

Two tests, both one-sided (is the decoder better than chance?), both exact permutation tests
under their stated exchangeability:

- **Single model** (a cross-subject or unseen-subject model, a pooled score, one subject):
  ``p = (1 + #{null >= observed}) / (1 + n)`` over ``n`` whole refits with labels circularly
  shifted within runs. Its smallest possible value is ``1 / (n + 1)``: with fewer than 19
  permutations it cannot reach 0.05, and the verdict is ``untested``.
- **Group** (the mean over subjects of single-subject models: within, leaky): subjects are the
  replication unit. Each subject's models are refitted under that subject's own independent
  shifts (:func:`~monai_emotion.study.plan.subject_seed`), so under the null each subject's
  observed score is exchangeable with its ``n_s`` permutation scores, independently across
  subjects. The statistic is the mean over subjects of (score minus that subject's own null
  mean): the per-subject constants cancel, so it is the mean score. Its null is every
  combination of one value per subject from ``{observed_s} + null_s`` (Stelzer et al. 2013,
  NeuroImage 65:69, with the observed value kept in each pool, which makes the test exact):
  enumerated when there are at most ``draws`` combinations, else ``draws`` Monte Carlo draws.
  ``p`` = the share of combinations whose mean reaches the observed mean; smallest possible
  value ``1 / prod(n_s + 1)``.

A verdict follows the p-value, corrected across a table of tests (Benjamini-Hochberg FDR by
default, or Holm): ``above`` when the corrected upper-tail p is at most ``alpha``, ``below``
when the corrected lower-tail p is, else ``inside``; ``untested`` when even the smallest
possible p exceeds ``alpha`` (too few permutations) or there is no null at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["MIN_SINGLE", "Test", "single_test", "group_test", "adjust", "verdicts", "VERDICTS"]

#: fewest permutations with which a single-model p-value can reach 0.05
MIN_SINGLE = 19
VERDICTS = ("above", "inside", "below", "untested")
_EPS = 1e-12


@dataclass(frozen=True)
class Test:
    """One test against chance.

    Attributes
    ----------
    p_value, p_lower
        Upper-tail (better than chance) and lower-tail p-values (``nan`` without a null).
    min_p
        The smallest p-value the test could give (``1 / (n + 1)``, ``1 / prod(n_s + 1)``).
    n_permutations
        Permutations behind the test (per subject, the smallest count, for the group test).
    chance_mean, chance_low, chance_high, method
        The null's mean and its 2.5-97.5 % quantiles (``method``: ``"group"``, ``"quantile"``
        with at least 40 values, ``"range"``: min-max of fewer values, not a 95 % interval).
    """

    p_value: float
    p_lower: float
    min_p: float
    n_permutations: int
    chance_mean: float
    chance_low: float
    chance_high: float
    method: str

    def testable(self, alpha: float) -> bool:
        """Whether enough permutations exist for the test to reach ``alpha`` at all."""
        return bool(np.isfinite(self.p_value)) and self.min_p <= alpha + _EPS


_NO_TEST = Test(float("nan"), float("nan"), 1.0, 0, float("nan"), float("nan"), float("nan"), "none")


def _interval(values: np.ndarray, min_quantile: int = 40) -> tuple[float, float, str]:
    if values.size >= min_quantile:
        low, high = np.quantile(values, [0.025, 0.975])
        return float(low), float(high), "quantile"
    return float(values.min()), float(values.max()), "range"


def single_test(observed: float, null: Sequence[float]) -> Test:
    """The single-model permutation test of ``observed`` against its permutation scores ``null``."""
    values = np.asarray([v for v in null if np.isfinite(v)], dtype=float)
    if values.size == 0 or not np.isfinite(observed):
        return _NO_TEST
    n = values.size
    low, high, method = _interval(values)
    return Test(float((1 + np.sum(values >= observed - _EPS)) / (1 + n)),
                float((1 + np.sum(values <= observed + _EPS)) / (1 + n)), 1.0 / (n + 1), n,
                float(values.mean()), low, high, method)


def group_test(observed: Mapping[str, float], null: Mapping[str, Sequence[float]], draws: int = 10000,
               seed: int = 0) -> Test:
    """The group test of the mean over subjects (module notes).

    Parameters
    ----------
    observed
        Each subject's score.
    null
        Each subject's permutation scores (from its own, independent shifts).
    draws
        Monte Carlo draws when the exact enumeration has more combinations.
    seed
        Seed of the Monte Carlo draws.

    Returns
    -------
    Test
        ``method`` ``"group"``; the interval is the group null's 2.5-97.5 % quantiles.
    """
    pools = []
    for subject, value in sorted(observed.items()):
        values = np.asarray([v for v in null.get(subject, ()) if np.isfinite(v)], dtype=float)
        if values.size == 0 or not np.isfinite(value):
            return _NO_TEST
        pools.append(np.concatenate([[value], values]))
    if not pools:
        return _NO_TEST
    target = float(np.mean([p[0] for p in pools]))
    combinations = math.prod(p.size for p in pools)
    if combinations <= draws:
        sums = np.zeros(1)
        for pool in pools:
            sums = (sums[:, None] + pool[None, :]).ravel()
        means = sums / len(pools)
        p_upper = float(np.mean(means >= target - _EPS))
        p_lower = float(np.mean(means <= target + _EPS))
    else:
        rng = np.random.default_rng(seed)
        means = np.mean([pool[rng.integers(0, pool.size, draws)] for pool in pools], axis=0)
        p_upper = float((1 + np.sum(means >= target - _EPS)) / (1 + draws))
        p_lower = float((1 + np.sum(means <= target + _EPS)) / (1 + draws))
    null_means = [float(np.mean(p[1:])) for p in pools]
    low, high = np.quantile(means, [0.025, 0.975])
    return Test(p_upper, p_lower, max(1.0 / combinations, 1.0 / (1 + draws) if combinations > draws else 0.0),
                int(min(p.size - 1 for p in pools)), float(np.mean(null_means)), float(low), float(high), "group")


def adjust(p_values: Sequence[float], method: str = "fdr") -> np.ndarray:
    """Corrected p-values: ``"fdr"`` (Benjamini-Hochberg) or ``"holm"``; ``nan`` entries stay out."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    ranked = p[order]
    if method == "holm":
        adjusted = np.maximum.accumulate((m - np.arange(m)) * ranked)
    elif method == "fdr":
        adjusted = np.minimum.accumulate((m / np.arange(1, m + 1) * ranked)[::-1])[::-1]
    else:
        from monai_emotion.errors import ConfigError

        raise ConfigError(f"unknown correction {method!r}", where="statistics.correction", fix="use 'fdr' or 'holm'")
    out[order] = np.minimum(adjusted, 1.0)
    return out


def verdicts(tests: Sequence[Test], alpha: float = 0.05, method: str = "fdr") -> tuple[list[str], np.ndarray]:
    """Verdicts of a table of tests, corrected together; returns ``(verdicts, corrected p)``.

    Untestable tests (:meth:`Test.testable`) are ``untested`` and stay out of the correction.
    """
    testable = [t.testable(alpha) for t in tests]
    upper = adjust([t.p_value if ok else np.nan for t, ok in zip(tests, testable, strict=True)], method)
    lower = adjust([t.p_lower if ok else np.nan for t, ok in zip(tests, testable, strict=True)], method)
    out = []
    for ok, up, low in zip(testable, upper, lower, strict=True):
        out.append("untested" if not ok else "above" if up <= alpha + _EPS else
                   "below" if low <= alpha + _EPS else "inside")
    return out, upper
