"""Properties of the per-volume label rule (docs/domain.md, "The label rule") on random observer episodes.

Times are multiples of 0.25 s so that shifting by 2 s is exact in floating point: the
properties are about the rule, not about rounding at an episode's edge.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monai_emotion.data.annotations import (
    EMOTION_TOKENS,
    OBSERVER_COLUMNS,
    Episode,
    read_observer_file,
)
from monai_emotion.data.labels import CLASSES, NONE, TIE, label_volumes, load_emotion_map
from monai_emotion.data.studyforrest import TR
from monai_emotion.errors import AnnotationError

# no example database: the tree is shared, and the cases are cheap to find again
SETTINGS = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
EMOTION_MAP = load_emotion_map()
TOKENS = sorted(EMOTION_TOKENS)
STARTS = (0.0, 100.0)  # two short runs, far apart
VOLUMES = (12, 9)
SPAN = 2 * max(VOLUMES) + 8.0  # episodes may start before and end after a run


def quarter_seconds(low: float, high: float) -> st.SearchStrategy[float]:
    return st.integers(int(low * 4), int(high * 4)).map(lambda q: q / 4)


@st.composite
def episodes(draw: st.DrawFn) -> Episode:
    run_start = draw(st.sampled_from(STARTS))
    start = run_start + draw(quarter_seconds(-8.0, SPAN))
    end = start + draw(quarter_seconds(0.0, 16.0))
    tokens = draw(st.lists(st.sampled_from(TOKENS), max_size=2, unique=True))
    return Episode(start, end, "X", "LOW", "POS", "SELF", tuple(tokens))


observer_sets = st.lists(st.lists(episodes(), max_size=6), min_size=1, max_size=6)
thresholds = st.sampled_from([0.2, 1 / 3, 0.5, 2 / 3, 1.0])
lags = quarter_seconds(0.0, 6.0)


def label(observers: list[list[Episode]], *, threshold: float = 0.5, lag: float = 4.0, outside_run: str = "none"):
    return label_volumes(observers, threshold=threshold, lag=lag, segment_starts=STARTS,
                         volumes_per_run=VOLUMES, outside_run=outside_run)


def shifted(observers: list[list[Episode]], seconds: float) -> list[list[Episode]]:
    return [[Episode(e.start + seconds, e.end + seconds, e.character, e.arousal, e.valence,
                     e.direction, e.emotions) for e in obs] for obs in observers]


def brute_force_votes(observers: list[list[Episode]], label_time: float) -> dict[str, int]:
    """Observers with an episode of each class covering ``label_time``: the rule, spelled out."""
    return {
        c: sum(
            any(e.start <= label_time < e.end and c in EMOTION_MAP.classes_of(e.emotions) for e in obs)
            for obs in observers
        )
        for c in CLASSES
    }


@SETTINGS
@given(observer_sets, thresholds, lags)
def test_a_label_only_where_enough_observers_agree(observers, threshold, lag):
    table = label(observers, threshold=threshold, lag=lag)
    needed = threshold * len(observers)
    for row in table.itertuples(index=False):
        votes = brute_force_votes(observers, row.label_time)
        assert [getattr(row, f"votes_{c}") for c in CLASSES] == [votes[c] for c in CLASSES]
        qualifying = {c: v for c, v in votes.items() if v >= needed - 1e-9}
        run_start = STARTS[row.run - 1]
        outside = not run_start <= row.label_time < run_start + 2 * VOLUMES[row.run - 1]
        assert row.outside_run == outside
        if outside:
            assert row.label == NONE  # read from a moment heard outside this run
        elif row.label in CLASSES:
            assert votes[row.label] >= needed - 1e-9
            assert all(v < votes[row.label] for c, v in qualifying.items() if c != row.label)
        elif row.label == TIE:
            top = max(qualifying.values())
            assert sum(v == top for v in qualifying.values()) >= 2
        else:
            assert not qualifying


@SETTINGS
@given(observer_sets, thresholds, lags)
def test_every_volume_gets_exactly_one_label(observers, threshold, lag):
    table = label(observers, threshold=threshold, lag=lag)
    assert list(table.groupby("run").size()) == list(VOLUMES)
    assert set(table["label"]) <= set(CLASSES) | {NONE, TIE}
    for name, index in zip(table["label"], table["label_index"], strict=True):
        assert index == (CLASSES.index(name) if name in CLASSES else -1)
    soft = table[[f"soft_{c}" for c in CLASSES]].to_numpy()
    assert ((soft >= 0) & (soft <= 1)).all()


@SETTINGS
@given(observer_sets, thresholds, lags, st.sampled_from([-4.0, -2.0, 2.0, 6.0]))
def test_shifting_episodes_equals_changing_the_lag(observers, threshold, lag, seconds):
    # without the run-edge rule (which moves with the lag, not with the episodes)
    moved = label(shifted(observers, seconds), threshold=threshold, lag=lag, outside_run="keep")
    relagged = label(observers, threshold=threshold, lag=lag + seconds, outside_run="keep")
    assert moved["label"].tolist() == relagged["label"].tolist()
    votes = [f"votes_{c}" for c in CLASSES]
    assert (moved[votes].to_numpy() == relagged[votes].to_numpy()).all()


@SETTINGS
@given(observer_sets, thresholds, lags)
def test_two_seconds_later_is_one_volume_later_away_from_run_edges(observers, threshold, lag):
    # without the run-edge rule, whose NONE volumes stay put while the episodes move
    base = label(observers, threshold=threshold, lag=lag, outside_run="keep")
    later = label(shifted(observers, TR), threshold=threshold, lag=lag, outside_run="keep")
    for run in (1, 2):
        a = base[base.run == run]["label"].to_numpy()
        b = later[later.run == run]["label"].to_numpy()
        # volume i of the later movie shows what volume i-1 showed; volume 0 has no precursor
        assert (b[1:] == a[:-1]).all()


@SETTINGS
@given(observer_sets, lags)
def test_a_stricter_threshold_never_creates_a_label(observers, lag):
    loose = label(observers, threshold=1 / 3, lag=lag)["label"].to_numpy()
    strict = label(observers, threshold=2 / 3, lag=lag)["label"].to_numpy()
    assert not np.any((loose == NONE) & (strict != NONE))


unknown_tokens = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=14).filter(
    lambda t: t not in EMOTION_TOKENS)


@SETTINGS
@given(unknown_tokens, st.lists(st.sampled_from(TOKENS), max_size=2), st.integers(0, 4))
def test_unknown_tokens_always_raise(token, known, n_good_rows):
    header = ",".join(OBSERVER_COLUMNS)
    good = [f"{10 * k}.0,{10 * k + 5}.0,FORREST,HIGH,NEG,SELF,FEAR,," for k in range(n_good_rows)]
    emotions = " ".join([*known, token])
    bad = f"900.5,903.0,JENNY,LOW,POS,OTHER,{emotions},FACE,"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "av1o01.csv"
        path.write_text("\n".join([header, *good, bad]) + "\n")
        with pytest.raises(AnnotationError) as info:
            read_observer_file(path)
    message = str(info.value)
    assert str(path) in message and f"line {n_good_rows + 2}" in message and repr(token) in message
