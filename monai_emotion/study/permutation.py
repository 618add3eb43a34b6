"""Chance levels by permutation that keeps autocorrelation, with p-values.

Each permutation circularly shifts the label sequence of every run (``data#label_permutation``,
:func:`~monai_emotion.data.labels.circular_shift_labels`; the BOLD is untouched) and repeats
the *whole* fit of every model of a protocol: splits, training, model selection, testing. The
scores of all permutations form the null distribution of each unit's balanced accuracy.

Single-subject models (within, leaky) are shifted by their subject's own stream
(:meth:`~monai_emotion.study.plan.ModelSpec.permuted`), so per-subject nulls are independent.
The tests, intervals and verdicts the study reports are :mod:`~monai_emotion.study.chance`'s
(group test, single-model test, FDR/Holm correction). :func:`chance_interval` and
:func:`p_value` remain for callers of the earlier helpers; the normal approximation of
:func:`chance_interval` is not used for any verdict.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from monai_emotion.fileio import atomic_write_text
from monai_emotion.study.baseline import LinearBaseline
from monai_emotion.study.plan import ModelSpec
from monai_emotion.study.scoring import unit_scores

__all__ = ["MIN_EMPIRICAL", "chance_interval", "p_value", "chance_table", "permutation_seeds",
           "read_null", "stored_permutations", "LinearPermutations"]

#: fewest permutations for which quantiles (rather than a normal approximation) give the interval
MIN_EMPIRICAL = 40
_COLUMNS = ["decoder", "permutation", "experiment", "test_set", "unit", "balanced_accuracy"]


def permutation_seeds(first: int, count: int) -> list[int]:
    """The seeds of ``count`` permutations (the same for every decoder, so their nulls pair up)."""
    return list(range(int(first), int(first) + int(count)))


def chance_interval(null: Sequence[float], level: float = 0.95) -> tuple[float, float, str]:
    """``(low, high, method)`` of the permutation scores ``null``.

    ``method`` is ``"quantile"`` or ``"normal"`` (see the module notes); ``(nan, nan, "none")``
    without permutations.
    """
    values = np.asarray([v for v in null if np.isfinite(v)], dtype=float)
    if values.size == 0:
        return float("nan"), float("nan"), "none"
    tail = (1.0 - level) / 2.0
    if values.size >= MIN_EMPIRICAL:
        low, high = np.quantile(values, [tail, 1.0 - tail])
        return float(low), float(high), "quantile"
    from scipy.stats import norm

    sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
    z = float(norm.ppf(1.0 - tail))
    return float(values.mean() - z * sd), float(values.mean() + z * sd), "normal"


def p_value(observed: float, null: Sequence[float]) -> float:
    """One-sided permutation p-value of ``observed`` (``nan`` without permutations)."""
    values = np.asarray([v for v in null if np.isfinite(v)], dtype=float)
    if values.size == 0 or not np.isfinite(observed):
        return float("nan")
    return float((1 + np.sum(values >= observed - 1e-12)) / (1 + values.size))


def chance_table(null: pd.DataFrame) -> pd.DataFrame:
    """Per (decoder, experiment, test set, unit): chance mean, interval, method and count."""
    rows = []
    keys = ["decoder", "experiment", "test_set", "unit"]
    for key, group in null.groupby(keys, sort=True):
        values = group["balanced_accuracy"].to_numpy(dtype=float)
        low, high, method = chance_interval(values)
        rows.append((*key, float(np.nanmean(values)), low, high, method, int(np.isfinite(values).sum())))
    return pd.DataFrame(rows, columns=[*keys, "chance_mean", "chance_low", "chance_high", "chance_method",
                                       "n_permutations"])


def _append(path: Path, rows: pd.DataFrame) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(_COLUMNS)
        writer.writerows(rows[_COLUMNS].itertuples(index=False, name=None))
        fh.flush()
        os.fsync(fh.fileno())


def read_null(path: Path) -> pd.DataFrame:
    """The permutation scores stored at ``path`` (empty table if none yet)."""
    if not Path(path).is_file():
        return pd.DataFrame(columns=_COLUMNS)
    return pd.read_csv(path, dtype={"unit": str})


def stored_permutations(path: Path, experiments: set[str]) -> set[int]:
    """Permutations whose scores ``path`` holds for every one of ``experiments``."""
    null = read_null(path)
    have = null.groupby("permutation")["experiment"].agg(lambda e: set(e) >= experiments)
    return {int(p) for p, ok in have.items() if ok}


class LinearPermutations:
    """Refit the linear baseline for every model under each permutation; one CSV, resumable.

    Parameters
    ----------
    baseline
        The fitted decoder factory.
    specs
        The (unpermuted) models of the study.
    path
        The CSV of permutation scores (rows are appended permutation by permutation, so an
        interrupted run keeps what it finished).
    """

    def __init__(self, baseline: LinearBaseline, specs: Sequence[ModelSpec], path: Path) -> None:
        self.baseline = baseline
        self.specs = list(specs)
        self.path = Path(path)

    def done(self) -> set[int]:
        """Permutations already stored for every experiment of the specs."""
        return stored_permutations(self.path, {s.experiment for s in self.specs})

    def run(self, seeds: Sequence[int], log: Callable[[str], None] = print) -> int:
        """Compute the missing permutations among ``seeds``; returns how many were computed."""
        todo = [s for s in seeds if s not in self.done()]
        if self.path.is_file() and todo:
            # drop partial rows of an interrupted permutation before redoing it
            null = read_null(self.path)
            keep = null[~null["permutation"].isin(todo)]
            if len(keep) != len(null):
                atomic_write_text(self.path, keep.to_csv(index=False))
        start = time.perf_counter()
        for n, seed in enumerate(todo, start=1):
            frames = []
            for spec in self.specs:
                for test, frame in self.baseline.fit_predict(spec.permuted(seed)).items():
                    frames.append(frame.assign(decoder="linear", experiment=spec.experiment, test_set=test))
            scores = unit_scores(pd.concat(frames, ignore_index=True), self.baseline.classes)
            _append(self.path, scores.assign(permutation=seed))
            if n == 1 or n % 20 == 0 or n == len(todo):
                elapsed = time.perf_counter() - start
                log(f"  linear permutations: {n}/{len(todo)} ({elapsed / n:.2f} s each)")
        return len(todo)
