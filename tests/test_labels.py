"""The per-volume label rule on the real annotations and on hand-made episodes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monai_emotion.data.annotations import Episode
from monai_emotion.data.labels import (
    CLASSES,
    class_by_run_table,
    derive_labels,
    label_volumes,
    load_emotion_map,
    read_label_tables,
    write_label_tables,
)
from monai_emotion.data.studyforrest import VOLUMES_PER_RUN
from monai_emotion.errors import ConfigError


@pytest.fixture(scope="module")
def av4(real_annotations):
    return derive_labels(real_annotations, "av", lag=4)


def _row(table, run, volume):
    return table[(table.run == run) & (table.volume == volume)].iloc[0]


def test_all_3599_volumes_labelled(av4):
    assert len(av4) == sum(VOLUMES_PER_RUN) == 3599
    assert set(av4["label"]) <= set(CLASSES) | {"NONE", "TIE"}
    assert (av4.groupby("run").size().to_numpy() == np.array(VOLUMES_PER_RUN)).all()
    assert av4["n_observers"].eq(9).all()


def test_hand_checked_volumes(av4):
    # run 4 volume 69: movie 2750 s, label time 2747 s; 8 of 9 AV observers mark FEAR
    # (av1o07 has no episode then) -> FEAR
    row = _row(av4, 4, 69)
    assert row.movie_time == 2750 and row.label_time == 2747
    assert row.label == "FEAR" and row.votes_FEAR == 8 and row.soft_FEAR == pytest.approx(8 / 9)
    # run 2 volume 15 (label time 913 s): FEAR 6 (av1o01,02,04,06,08,09), ANGER 6
    # (CONTEMPT/HATE/ANGERRAGE of the BOY scene), LOVE 3 (LOVE, ADMIRATION, COMPASSION) -> TIE
    row = _row(av4, 2, 15)
    assert (row.votes_FEAR, row.votes_ANGER, row.votes_LOVE) == (6, 6, 3)
    assert row.label == "TIE" and row.label_index == -1


def test_segment_starts_not_cumulative_durations(av4):
    # run 8 starts at movie second 6410 (not the cumulative 2*sum of runs 1-7 = 6522)
    assert _row(av4, 8, 0).movie_time == 6410
    assert _row(av4, 2, 0).movie_time == 886


def test_lag_shifts_by_two_volumes(real_annotations, av4):
    lag0 = derive_labels(real_annotations, "av", lag=0)
    for run in range(1, 9):
        a = lag0[lag0.run == run]["label"].to_numpy()
        b = av4[av4.run == run]["label"].to_numpy()
        # label time at lag 4 for volume i+2 equals label time at lag 0 for volume i
        assert (b[2:] == a[:-2]).all(), run


def test_threshold_and_observer_sets(real_annotations, av4):
    strict = derive_labels(real_annotations, "av", threshold=0.9, lag=4)
    loose = derive_labels(real_annotations, "av", threshold=0.2, lag=4)
    assert (strict.label == "NONE").sum() > (av4.label == "NONE").sum() > (loose.label == "NONE").sum()
    # a label at threshold t always has >= t * n votes for its class
    for table, t in ((strict, 0.9), (av4, 0.5), (loose, 0.2)):
        labelled = table[table.label_index >= 0]
        top = labelled[[f"votes_{c}" for c in CLASSES]].to_numpy()[
            np.arange(len(labelled)), labelled.label_index.to_numpy()
        ]
        assert (top >= t * 9 - 1e-9).all()
    ao = derive_labels(real_annotations, "ao", lag=4)
    assert ao["n_observers"].eq(3).all()
    labelled = ao[ao.label_index >= 0]
    top = labelled[[f"votes_{c}" for c in CLASSES]].max(axis=1)
    assert (top >= 2).all()  # 2 of 3 AO observers


def test_write_and_read_tables(tmp_path, av4):
    paths = write_label_tables(av4, tmp_path)
    assert [p.name for p in paths] == [f"labels_run-{r}.tsv" for r in range(1, 9)]
    header = paths[0].read_text().splitlines()[0].split("\t")
    assert header[:5] == ["run", "volume", "movie_time", "label_time", "label"]
    assert all(f"votes_{c}" in header for c in CLASSES)
    back = read_label_tables(tmp_path)
    assert (back["label"].to_numpy() == av4["label"].to_numpy()).all()
    table = class_by_run_table(av4)
    assert table.drop(index="NONE_OUTSIDE_RUN")["total"].sum() == 3599
    assert table.loc["NONE_OUTSIDE_RUN"].drop("total").eq(2).all()  # 2 volumes per run at lag 4


@pytest.mark.parametrize("lag, lost", [(4.0, 8), (6.0, 12)])
def test_labels_outside_their_run_become_none(real_annotations, lag, lost):
    """At lag 4 s the first two volumes of a run read movie seconds heard in the previous run."""
    new = derive_labels(real_annotations, "av", lag=lag)
    old = derive_labels(real_annotations, "av", lag=lag, outside_run="keep")
    labelled = ~old["label"].isin(["NONE", "TIE"])
    changed = new["label"] != old["label"]
    assert int(changed.sum()) == int((labelled & changed).sum()) == lost  # measured on the real AV files
    assert new.loc[changed, "label"].eq("NONE").all() and new.loc[changed, "outside_run"].all()
    starts = new.groupby("run")["movie_time"].transform("min")
    assert (new.loc[new["outside_run"], "label_time"] < starts[new["outside_run"]]).all()
    assert (new["outside_run"] == (new["volume"] < int(np.ceil((lag - 1) / 2)))).all()
    assert int(labelled.sum()) - lost == int((~new["label"].isin(["NONE", "TIE"])).sum())
    assert "NONE_OUTSIDE_RUN" not in class_by_run_table(old).index
    with pytest.raises(ConfigError, match="outside_run"):
        derive_labels(real_annotations, "av", outside_run="drop")


def _ep(start, end, *tokens):
    return Episode(start, end, "X", "LOW", "POS", "SELF", tuple(tokens))


def test_rule_on_hand_made_episodes():
    observers = [
        [_ep(0, 10, "FEAR"), _ep(0, 10, "FEARSCONFIRMED")],  # one vote per class, not two
        [_ep(0, 10, "FEAR", "LOVE")],
        [_ep(0, 4, "LOVE")],
        [_ep(0, 10, "GLOATING")],  # maps to no class
    ]
    table = label_volumes(observers, threshold=0.5, lag=0, segment_starts=[0.0], volumes_per_run=[6])
    # label times 1, 3, 5, 7, 9, 11
    assert table.votes_FEAR.tolist() == [2, 2, 2, 2, 2, 0]
    assert table.votes_LOVE.tolist() == [2, 2, 1, 1, 1, 0]
    assert table.label.tolist() == ["TIE", "TIE", "FEAR", "FEAR", "FEAR", "NONE"]


def test_custom_emotion_map(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"classes": ["POSITIVE", "NEGATIVE"],
                                "map": {"HAPPINESS": "POSITIVE", "FEAR": "NEGATIVE", "JOY": "POSITIVE"}}))
    emap = load_emotion_map(path)
    table = label_volumes([[_ep(0, 4, "JOY")], [_ep(0, 4, "HAPPINESS")]], emotion_map=emap, lag=0,
                          segment_starts=[0.0], volumes_per_run=[3])
    assert table.label.tolist() == ["POSITIVE", "POSITIVE", "NONE"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"classes": ["A"], "map": {"FEAR": "B"}}))
    with pytest.raises(ConfigError, match="not in 'classes'") as info:
        load_emotion_map(bad)
    assert str(bad) in str(info.value)
