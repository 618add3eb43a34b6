"""Leak-free train/test splits: by run, by subject, and the seed's leaky random split by name.

All subjects heard the same movie, and neighbouring runs share 16 s of it. A clean split
therefore keeps every *movie moment* on one side: training items whose stimulus window
overlaps a test run's movie interval (plus a gap) are dropped from training.

An item's *stimulus window* spans its acquisition window ``[movie_time, movie_time + TR)``
and the second its label is read at (``label_time = movie_time + 1 - lag``): both the BOLD
and the label of the item refer to movie seconds in it. The gap widens the held-out windows
on both sides. It should cover the lag plus the span of a BOLD response (:data:`HRF_SECONDS`):
a volume acquired within that distance of a test moment still carries that moment's
response. :func:`default_gap` is the value the study uses (20 s at the default 4 s lag).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from monai_emotion.data.studyforrest import TR, normalize_subject
from monai_emotion.errors import ConfigError

__all__ = [
    "LeakySplitWarning",
    "split_by_runs",
    "split_by_subjects",
    "leaky_random_split",
    "run_folds",
    "subject_folds",
    "drop_movie_overlap",
    "HRF_SECONDS",
    "default_gap",
]

#: seconds over which one brief stimulus moment shapes the BOLD signal: the canonical
#: (Glover) HRF peaks at 5-6 s and is back near baseline by ~16 s (its undershoot is small)
HRF_SECONDS = 16.0


def default_gap(lag: float) -> float:
    """The gap (seconds) around held-out runs for labels read ``lag`` s back: ``lag + HRF_SECONDS``."""
    return float(max(lag, 0.0) + HRF_SECONDS)


class LeakySplitWarning(UserWarning):
    """A split that puts temporally adjacent volumes on both sides of train/test."""


def _window(item: dict) -> tuple[float, float]:
    """An item's stimulus window: its acquisition window and its label time (module notes)."""
    start = float(item["movie_time"])
    label = float(item.get("label_time", start))
    return min(start, label), max(start, label) + TR


def _movie_intervals(items: Iterable[dict]) -> list[tuple[float, float]]:
    """Merged movie-second intervals covered by the items' stimulus windows."""
    spans = sorted(_window(i) for i in items)
    merged: list[list[float]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def drop_movie_overlap(train: list[dict], test: list[dict], gap: float = 0.0) -> list[dict]:
    """Training items whose stimulus window misses every test item's window widened by ``gap`` s."""
    intervals = _movie_intervals(test)
    if not intervals:
        return list(train)
    starts = np.array([a for a, _ in intervals]) - gap
    ends = np.array([b for _, b in intervals]) + gap
    kept = []
    for item in train:
        t0, t1 = _window(item)
        k = np.searchsorted(starts, t1, side="left") - 1
        if k >= 0 and t0 < ends[k]:
            continue
        kept.append(item)
    return kept


def split_by_runs(
    items: Sequence[dict], test_runs: Iterable[int], gap: float = 0.0
) -> tuple[list[dict], list[dict]]:
    """Hold out whole runs; drop training volumes that share movie moments with them.

    ``gap`` (seconds) widens the exclusion around each held-out interval, for the lag and
    the BOLD response across the boundary (the study passes :func:`default_gap`).
    """
    held = {int(r) for r in test_runs}
    present = {int(i["run"]) for i in items}
    if not held:
        raise ConfigError("no test runs given", fix="name at least one run to hold out")
    if not held & present:
        raise ConfigError(f"held-out runs {sorted(held)} are not in the data (runs {sorted(present)})",
                          fix="choose held-out runs that exist")
    test = [i for i in items if int(i["run"]) in held]
    train = drop_movie_overlap([i for i in items if int(i["run"]) not in held], test, gap)
    return train, test


def split_by_subjects(
    items: Sequence[dict],
    test_subjects: Iterable[str | int],
    test_runs: Iterable[int] | None = None,
    gap: float = 0.0,
) -> tuple[list[dict], list[dict]]:
    """Hold out subjects; with ``test_runs``, also hold those runs out of training.

    Without ``test_runs`` the unseen subjects heard the same movie moments the training
    subjects did (stimulus leakage): the report must say so.
    """
    unseen = {normalize_subject(s) for s in test_subjects}
    test = [i for i in items if i["subject"] in unseen]
    train = [i for i in items if i["subject"] not in unseen]
    if test_runs is not None:
        held = {int(r) for r in test_runs}
        test = [i for i in test if int(i["run"]) in held]
        train = drop_movie_overlap([i for i in train if int(i["run"]) not in held], test, gap)
    if not test:
        raise ConfigError(f"no items for test subjects {sorted(unseen)}",
                          fix="check the subject labels and runs")
    return train, test


def leaky_random_split(
    items: Sequence[dict], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """The seed paper's random per-volume split. It leaks: neighbouring volumes land on both sides.

    Kept only to reproduce (and expose) the seed's protocol; warns every time.
    """
    warnings.warn(
        "leaky_random_split puts temporally adjacent volumes (near-duplicates of one BOLD "
        "response) in train and test; its accuracy is not evidence of decoding. Use "
        "split_by_runs for results.",
        LeakySplitWarning,
        stacklevel=2,
    )
    order = np.random.default_rng(seed).permutation(len(items))
    n_test = int(round(test_fraction * len(items)))
    test_idx = set(order[:n_test].tolist())
    test = [items[k] for k in sorted(test_idx)]
    train = [items[k] for k in range(len(items)) if k not in test_idx]
    return train, test


def run_folds(items: Sequence[dict], n_folds: int = 4, n_classes: int | None = None) -> list[list[int]]:
    """Group runs into folds so that every class has test items in every fold.

    Among all partitions of the runs into ``n_folds`` groups of near-equal size, returns
    the one whose rarest class-in-fold count is largest (ties: the earliest in order), so
    each fold's held-out runs contain every class whenever any partition allows it.
    """
    runs = sorted({int(i["run"]) for i in items})
    if n_folds < 2 or n_folds > len(runs):
        raise ConfigError(f"n_folds must be in [2, {len(runs)}], got {n_folds}",
                          fix="use fewer folds than runs")
    k = n_classes or (max(int(i["label"]) for i in items) + 1)
    counts = np.zeros((len(runs), k), dtype=int)
    for i in items:
        if int(i["label"]) >= 0:
            counts[runs.index(int(i["run"])), int(i["label"])] += 1
    sizes = [len(a) for a in np.array_split(np.arange(len(runs)), n_folds)]
    best, best_score = None, None
    for assignment in _balanced_assignments(len(runs), sizes):
        per_fold = np.zeros((n_folds, k), dtype=int)
        for run_pos, fold in enumerate(assignment):
            per_fold[fold] += counts[run_pos]
        score = (int((per_fold > 0).all(axis=1).sum()), int(per_fold.min()))
        if best_score is None or score > best_score:
            best, best_score = assignment, score
    assert best is not None
    return [[runs[p] for p, f in enumerate(best) if f == fold] for fold in range(n_folds)]


def _balanced_assignments(n: int, sizes: Sequence[int]) -> Iterable[tuple[int, ...]]:
    """Canonical fold labels for every partition of n runs into groups of the given sizes."""
    seen = set()
    for perm in itertools.permutations(range(n)):
        assignment = [0] * n
        pos = 0
        for fold, size in enumerate(sizes):
            for p in perm[pos : pos + size]:
                assignment[p] = fold
            pos += size
        # relabel folds by first appearance so equivalent partitions collapse
        relabel: dict[int, int] = {}
        canon = tuple(relabel.setdefault(f, len(relabel)) for f in assignment)
        if canon not in seen:
            seen.add(canon)
            yield canon


def subject_folds(subjects: Sequence[str | int], scheme: str = "seed") -> list[list[str]]:
    """Folds of subjects for unseen-subject tests.

    ``"seed"``: the seed's four folds by position (1-4, 5-10, 11-15, 16-19 of 19); with a
    number of subjects other than 19 the same proportions are applied. ``"loso"``:
    leave one subject out.
    """
    labels = [normalize_subject(s) for s in subjects]
    if scheme == "loso":
        return [[s] for s in labels]
    if scheme != "seed":
        raise ConfigError(f"unknown subject fold scheme '{scheme}'", fix="use 'seed' or 'loso'")
    if len(labels) < 2:
        raise ConfigError("unseen-subject folds need at least 2 subjects", fix="add subjects")
    bounds = np.array([0, 4, 10, 15, 19]) / 19 * len(labels)
    edges = sorted({int(round(b)) for b in bounds})
    folds = [labels[a:b] for a, b in itertools.pairwise(edges) if b > a]
    return folds
