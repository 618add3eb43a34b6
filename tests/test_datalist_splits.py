"""Data lists from discovered runs and labels; leak-free splits."""

from __future__ import annotations

import warnings

import pytest

from monai_emotion.data.datalist import load_datalist, make_datalist, save_datalist
from monai_emotion.data.labels import derive_labels
from monai_emotion.data.splits import (
    HRF_SECONDS,
    LeakySplitWarning,
    _movie_intervals,
    default_gap,
    leaky_random_split,
    run_folds,
    split_by_runs,
    split_by_subjects,
    subject_folds,
)
from monai_emotion.data.studyforrest import SEGMENT_STARTS, VOLUMES_PER_RUN, RunInfo


def _runs(subjects=("01", "02"), short=None):
    short = short or {}
    return [
        RunInfo(s, r, f"/bids/sub-{s}_run-0{r}_bold.nii.gz", short.get((s, r), VOLUMES_PER_RUN[r - 1]),
                VOLUMES_PER_RUN[r - 1], (4, 4, 4), ((1.0,) * 4,) * 4, (1.2,) * 3, 2.0, "header")
        for s in subjects for r in range(1, 9)
    ]


@pytest.fixture(scope="module")
def items(real_annotations):
    table = derive_labels(real_annotations, "av", lag=4)
    return make_datalist(_runs(short={("02", 8): 263}), table)


def test_datalist_items(items, tmp_path):
    data = items
    assert data["classes"] == ["HAPPINESS", "SADNESS", "FEAR", "LOVE", "ANGER"]
    assert all(i["label"] >= 0 and i["label_name"] == data["classes"][i["label"]] for i in data["items"])
    # the short run keeps only volumes that exist
    assert max(i["frame"] for i in data["items"] if i["subject"] == "02" and i["run"] == 8) < 263
    assert max(i["frame"] for i in data["items"] if i["subject"] == "01" and i["run"] == 8) >= 263
    path = save_datalist(data, tmp_path / "list.json")
    assert load_datalist(path)["items"] == data["items"]


def test_keep_all_volumes(real_annotations):
    table = derive_labels(real_annotations, "av", lag=4)
    data = make_datalist(_runs(subjects=("01",)), table, drop=())
    assert len(data["items"]) == 3599
    assert {i["label"] for i in data["items"] if i["label_name"] in ("NONE", "TIE")} == {-1}


def test_split_by_runs_never_shares_a_movie_moment(items):
    train, test = split_by_runs(items["items"], test_runs=[3])
    assert {i["run"] for i in test} == {3}
    lo, hi = SEGMENT_STARTS[2], SEGMENT_STARTS[2] + 2 * VOLUMES_PER_RUN[2]
    assert not [i for i in train if lo - 2 < i["movie_time"] < hi]
    dropped = [i for i in items["items"] if i["run"] in (2, 4) and lo - 2 < i["movie_time"] < hi]
    assert dropped, "runs 2 and 4 overlap run 3 by 16 s: those volumes must leave training"
    gap_train, _ = split_by_runs(items["items"], test_runs=[3], gap=60)
    assert len(gap_train) < len(train)


def _near(train, test, seconds):
    """Training items whose acquisition window lies within ``seconds`` of a test acquisition window."""
    spans = _movie_intervals([{"movie_time": i["movie_time"]} for i in test])
    return [i for i in train if any(i["movie_time"] < b + seconds and a - seconds < i["movie_time"] + 2
                                    for a, b in spans)]


def test_default_gap_keeps_bold_responses_off_the_test_moments(items):
    """Real AV labels, lag 4: gap 0 left 8-16 training volumes within 16 s of a test fold; 20 s leaves none."""
    assert default_gap(4.0) == 4.0 + HRF_SECONDS == 20.0
    one = [i for i in items["items"] if i["subject"] == "01"]
    near_before = []
    for fold in run_folds(one, 4):
        acquisition_only = [{**i, "label_time": i["movie_time"]} for i in one]  # the rule before: no label time
        train, test = split_by_runs(acquisition_only, fold, 0.0)
        near_before.append(len(_near(train, test, HRF_SECONDS)))
        train, test = split_by_runs(one, fold, default_gap(4.0))
        assert not _near(train, test, HRF_SECONDS + 4.0), fold
        # the label time counts too: no kept label reads a second inside a held-out window + gap
        for a, b in _movie_intervals(test):
            assert not [i for i in train if a - 20.0 < i["label_time"] < b + 20.0]
    assert sorted(near_before) == [0, 8, 11, 17]  # measured (outside-run labels dropped)


def test_split_by_subjects_with_and_without_held_runs(items):
    train, test = split_by_subjects(items["items"], ["02"])
    assert {i["subject"] for i in test} == {"02"} and {i["subject"] for i in train} == {"01"}
    train, test = split_by_subjects(items["items"], ["02"], test_runs=[7, 8])
    test_times = {i["movie_time"] for i in test}
    assert not [i for i in train if i["movie_time"] in test_times]


def test_leaky_split_warns(items):
    with pytest.warns(LeakySplitWarning):
        train, test = leaky_random_split(items["items"], 0.2, seed=0)
    assert len(test) == round(0.2 * len(items["items"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = leaky_random_split(items["items"], 0.2, seed=0)[1]
    assert again == test


def test_run_folds_cover_every_class(items):
    folds = run_folds(items["items"], 4)
    assert sorted(r for f in folds for r in f) == list(range(1, 9))
    for fold in folds:
        labels = {i["label"] for i in items["items"] if i["run"] in fold}
        assert labels == set(range(5)), fold


def test_subject_folds():
    nineteen = [f"{i:02d}" for i in range(1, 21) if i != 10]
    folds = subject_folds(nineteen, "seed")
    assert [len(f) for f in folds] == [4, 6, 5, 4]
    assert folds[1][0] == "05" and folds[3][-1] == "20"  # positions, not labels: sub-10 is absent
    assert subject_folds(["01", "02", "03"], "loso") == [["01"], ["02"], ["03"]]
    assert sum(len(f) for f in subject_folds(["01", "02", "03", "04"])) == 4
