"""The synthetic studyforrest generator: BIDS tree, annotations, planted signal, oracle."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from monai_emotion.data.annotations import read_observer_file
from monai_emotion.data.labels import CLASSES, class_by_run_table, derive_labels, label_volumes
from monai_emotion.data.studyforrest import bold_path, discover_runs
from monai_emotion.data.synthetic import make_synthetic, oracle_decode
from monai_emotion.data.synthetic.timeline import plan_timeline, simulate_observers
from monai_emotion.errors import ConfigError, LayoutError

TINY = dict(scale=6, volumes_per_run=40, progress=False)
SHAPE = (22, 30, 8)  # ceil of 132x175x48 / 6
SHORT = 32  # sub-02 run 8, cut short like the real sub-04 run 8


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "planted"
    summary = make_synthetic(root, subjects=2, short_runs={("02", 8): SHORT}, seed=0, **TINY)
    return root, summary


@pytest.fixture(scope="module")
def labels(planted):
    return derive_labels(planted[0] / "annotations", "av", volumes_per_run=[40] * 8)


def _md5(path) -> str:
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def test_discover_runs_reads_the_tree(planted):
    root, summary = planted
    found = discover_runs(root, "nonlinear")
    assert found.subjects == ["01", "02"] and len(found.runs) == 16
    for info in found.runs:
        short = (info.subject, info.run) == ("02", 8)
        assert info.n_volumes == (SHORT if short else 40)
        assert info.shape == SHAPE and info.zooms == pytest.approx((7.2,) * 3)
        assert info.tr == 2.0 and info.tr_source == "header"
    # capped runs are all "short" of the real counts; the cut run says its own length
    assert f"sub-02: run 8 is short ({SHORT} of 338 volumes)" in found.problems
    assert summary["volumes"]["02"][8] == SHORT and summary["volumes"]["01"][8] == 40
    assert json.loads((root / "task-forrestgump_bold.json").read_text()) == {
        "RepetitionTime": 2.0, "TaskName": "forrestgump"}
    description = json.loads((root / "dataset_description.json").read_text())
    assert description["GeneratedBy"][0]["Name"] == "monai-emotion synthetic"
    assert (root / "participants.tsv").read_text().split() == ["participant_id", "sub-01", "sub-02"]


def test_header_and_brain_shape(planted):
    root, _ = planted
    img = nib.load(bold_path(root, "01", 3))
    header = img.header
    assert header.get_xyzt_units() == ("mm", "sec") and header["pixdim"][4] == 2.0
    assert int(header["qform_code"]) > 0 and int(header["sform_code"]) > 0
    assert np.allclose(img.affine[:3, :3], np.diag([7.2] * 3))
    assert header.get_data_dtype() == np.int16 and 0 < img.dataobj.slope < 1
    mask = np.asarray(nib.load(root / "ground_truth" / "brain_mask.nii.gz").dataobj) > 0
    assert 0.2 < mask.mean() < 0.8  # a brain slab, not the whole box
    data = np.asarray(img.dataobj)
    assert (data[mask] > 0).all() and (data[~mask] == 0).all()
    assert 500 < data[mask].mean() < 1500


def test_observer_files_look_like_the_real_ones(planted):
    raw = planted[0] / "annotations" / "raw"
    files = sorted(raw.glob("av1o*.csv"))
    assert [f.name for f in files] == [f"av1o{i:02d}.csv" for i in range(1, 10)]
    audio_only = sorted(raw.glob("ao1o*.csv"))  # the other set, written as ds000113 ships both
    assert [f.name for f in audio_only] == [f"ao1o{i:02d}.csv" for i in range(1, 4)]
    assert [read_observer_file(f) for f in audio_only] and audio_only[0].read_text() != files[0].read_text()
    assert files[0].read_text().splitlines()[0] == (
        "start,end,character,arousal,valence,direction,emotion,oncue,offcue")
    episodes = [read_observer_file(f) for f in files]  # validates every row
    flat = [e for eps in episodes for e in eps]
    assert any(not e.emotions for e in flat) and any(len(e.emotions) > 1 for e in episodes[3])
    assert any(b.start < a.end for eps in episodes for a, b in zip(eps, eps[1:], strict=False))
    assert any(e.start != int(e.start) for e in flat)


def test_labels_recover_the_planted_classes(planted, labels):
    truth = pd.read_csv(planted[0] / "ground_truth" / "true_classes.tsv", sep="\t")
    merged = labels.merge(truth, on=["run", "volume"])
    assert len(merged) == len(labels) == 320
    labelled = merged[merged["label"].isin(CLASSES)]
    assert (labelled["label"] == labelled["true_class"]).mean() >= 0.8
    assert 0.15 < (merged["label"] == "NONE").mean() < 0.6


@pytest.mark.parametrize("lag", [0.0, 4.0, 6.0])
def test_every_class_in_every_run(planted, lag):
    lengths = [40] * 7 + [SHORT]  # the shortest version of each run over subjects
    table = class_by_run_table(derive_labels(planted[0] / "annotations", "av", lag=lag,
                                             volumes_per_run=lengths))
    assert (table.loc[list(CLASSES)].drop(columns="total") > 0).all().all()


def test_audio_only_observers_keep_every_class():
    lengths = [30] * 8  # the smallest runs allowed
    timeline = plan_timeline(lengths, np.random.default_rng(5))
    files = simulate_observers(timeline, "ao", np.random.default_rng(6))
    assert sorted(files) == ["ao1o01", "ao1o02", "ao1o03"]
    for threshold in (0.5, 0.7):
        table = class_by_run_table(label_volumes(files, threshold=threshold, volumes_per_run=lengths))
        assert (table.loc[list(CLASSES)].drop(columns="total") > 0).all().all()


def test_oracle_far_above_chance(planted):
    root, summary = planted
    assert set(summary["oracle"]) == {"01", "02"}
    assert min(summary["oracle"].values()) > 0.6
    recorded = json.loads((root / "ground_truth" / "oracle.json").read_text())
    assert recorded["01"]["balanced_accuracy"] == summary["oracle"]["01"]
    # scored while writing == scored from the files read back
    assert oracle_decode(root, "01")["balanced_accuracy"] == pytest.approx(summary["oracle"]["01"])
    true = oracle_decode(root, "01", labels="true")
    assert true["balanced_accuracy"] > 0.6 and sum(true["n_volumes"].values()) > 100


def test_null_oracle_at_chance(tmp_path):
    summary = make_synthetic(tmp_path / "null", subjects=2, null=True, seed=0, **TINY)
    assert max(summary["oracle"].values()) < 0.35


def test_deterministic_given_seed(planted, tmp_path):
    root, _ = planted
    # the timeline depends on the shortest run lengths, so short_runs must match too
    again = make_synthetic(tmp_path / "again", subjects=2, runs=[2], short_runs={("02", 8): SHORT},
                           seed=0, oracle=False, **TINY)
    assert _md5(again["runs"]["01"][2]) == _md5(bold_path(root, "01", 2))
    for name in ("av1o01.csv", "av1o09.csv"):
        assert (tmp_path / "again/annotations/raw" / name).read_text() == (
            root / "annotations/raw" / name).read_text()
    other = make_synthetic(tmp_path / "other", subjects=["01"], runs=[2], seed=1, oracle=False, **TINY)
    assert other["subjects"] == ["01"] and list(other["runs"]["01"]) == [2]
    assert _md5(other["runs"]["01"][2]) != _md5(bold_path(root, "01", 2))


def test_ground_truth_files(planted):
    gt = planted[0] / "ground_truth"
    generation = json.loads((gt / "generation.json").read_text())
    assert generation["seed"] == 0 and generation["classes"] == list(CLASSES)
    assert generation["short_runs"] == [["02", 8, SHORT]] and generation["grid_shape"] == list(SHAPE)
    assert set(generation["class_strength"]) == set(CLASSES)
    for name in ("patterns_group.nii.gz", "sub-01_patterns.nii.gz", "sub-02_patterns.nii.gz"):
        assert nib.load(gt / name).shape == (*SHAPE, len(CLASSES))
    episodes = pd.read_csv(gt / "true_episodes.tsv", sep="\t")
    assert {"onset", "end", "class", "amplitude_sub-01", "amplitude_sub-02"} <= set(episodes.columns)
    assert (episodes["end"] - episodes["onset"] >= 6).all()


def test_uniform_world_has_no_realistic_departures(planted):
    root, summary = planted
    gt = root / "ground_truth"
    generation = json.loads((gt / "generation.json").read_text())
    mask = np.asarray(nib.load(gt / "brain_mask.nii.gz").dataobj) > 0
    assert generation["preset"] == summary["preset"] == "uniform" and generation["dtype"] == "int16"
    for record in generation["subject_world"].values():
        assert record["n_voxels"] == mask.sum() and record["outline_shift_vox"] == [0, 0, 0]
        assert record["pattern_shift_mm"] == [0.0, 0.0, 0.0] and record["hrf_peak_s"] is None
        assert set(record["run_intensity"].values()) == {1.0}
        assert all(not r["spike_volumes"] for r in record["runs"].values())
    assert not list(gt.glob("sub-*_brain_mask.nii.gz")) and not (gt / "stimulus.tsv").exists()
    assert not list(root.rglob("*_desc-confounds_timeseries.tsv"))


def test_real_annotations_drive_the_timeline(real_annotations, tmp_path):
    summary = make_synthetic(tmp_path / "real", subjects=1, runs=[4], annotations_dir=real_annotations,
                             oracle=False, seed=0, **TINY)
    copied = sorted(p.name for p in (tmp_path / "real/annotations/raw").iterdir())
    # both observer sets, as ds000113 ships them (the study's observer-set sensitivity reads the other)
    assert copied == [f"ao1o{i:02d}.csv" for i in range(1, 4)] + [f"av1o{i:02d}.csv" for i in range(1, 10)]
    truth = pd.read_csv(summary["ground_truth"]["true_classes"], sep="\t")
    # the generator follows the annotations' timeline; the default rule also NONEs the labels read
    # before the run's own segment (at the lag), which the timeline knows nothing of
    real = derive_labels(real_annotations, "av", volumes_per_run=[40] * 8, runs=[4], outside_run="keep")
    assert (truth["true_class"].to_numpy() == real["label"].replace("TIE", "NONE").to_numpy()).all()


def test_user_errors(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(LayoutError, match="not empty"):
        make_synthetic(tmp_path / "busy", **TINY)
    with pytest.raises(LayoutError, match="no synthetic dataset"):
        make_synthetic(tmp_path / "busy", overwrite=True, **TINY)
    with pytest.raises(ConfigError, match="at least 30|fewer than 30"):
        make_synthetic(tmp_path / "a", scale=6, volumes_per_run=12, progress=False)
    with pytest.raises(ConfigError, match="unknown class"):
        make_synthetic(tmp_path / "b", class_strength={"JOY": 1.0}, **TINY)
    with pytest.raises(ConfigError, match="short_runs"):
        make_synthetic(tmp_path / "c", subjects=2, short_runs={("07", 8): 35}, **TINY)
