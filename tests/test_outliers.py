"""Outlier volumes (motion spikes): flagged, censored before cleaning, out of items, marked at inference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nifti_helpers import bold_like_series, save_run

from monai_emotion.data.cache import attach_cache, prepare_cache
from monai_emotion.data.cache.outliers import find_outliers, framewise_displacement
from monai_emotion.data.cache.spec import PreprocessingSpec
from monai_emotion.data.studyforrest import bold_path
from monai_emotion.engine.writers import EventsTSVWriter
from monai_emotion.errors import ConfigError, ImageError

N = 60
SHAPE = (12, 12, 8)
SPIKE = 23


def _series(seed: int = 0) -> np.ndarray:
    return bold_like_series(N, seed, SHAPE)


def _build(root: Path, out: Path, **kw) -> dict:
    index = prepare_cache(root, out, PreprocessingSpec(downsample=1, mask_strategy="subject", margin=0, **kw),
                          expected_volumes=[N] * 8, progress=False)
    return {key: (np.load(e.path).astype(np.float32), json.loads(Path(e.sidecar).read_text()), e)
            for key, e in index.items()}


@pytest.fixture(scope="module")
def spiked(tmp_path_factory):
    """The same run twice: sub-01 clean, sub-02 with one volume 15 % brighter (a spike)."""
    root = tmp_path_factory.mktemp("spike") / "bids"
    clean = _series()
    spike = clean.copy()
    spike[..., SPIKE] *= 1.15
    save_run(root, "01", 1, clean)
    save_run(root, "02", 1, spike)
    return root


def test_spike_is_censored_and_the_other_volumes_keep_their_z_scores(spiked, tmp_path):
    cache = _build(spiked, tmp_path / "censor")
    frames_clean, meta_clean, _ = cache[("01", 1)]
    frames_spike, meta_spike, entry = cache[("02", 1)]
    assert meta_clean["censoring"]["volumes"] == []
    # one volume, not two: the step back out of the spike is not censored
    assert meta_spike["censoring"]["volumes"] == [SPIKE] and entry.censored == (SPIKE,)
    assert meta_spike["censoring"]["relative_dvars"][SPIKE] > 1.5
    assert not frames_spike[SPIKE].any()  # a censored volume is stored as a zero frame
    keep = np.arange(N) != SPIKE
    rms_clean = np.sqrt((frames_clean[keep] ** 2).mean(axis=(1, 2, 3)))
    rms_spike = np.sqrt((frames_spike[keep] ** 2).mean(axis=(1, 2, 3)))
    assert np.abs(rms_spike / rms_clean - 1).max() < 0.05
    inside = frames_clean[keep] != 0
    relative = np.abs(frames_spike[keep][inside] - frames_clean[keep][inside]).mean() / np.abs(
        frames_clean[keep][inside]).mean()
    assert relative < 0.05

    # without censoring the spike shrinks every other volume of the run (the failure it fixes)
    kept = _build(spiked, tmp_path / "none", outliers="none")
    frames_kept = kept[("02", 1)][0]
    assert kept[("02", 1)][1]["censoring"] is None
    rms_kept = np.sqrt((frames_kept[keep] ** 2).mean(axis=(1, 2, 3)))
    assert np.median(rms_kept / rms_clean) < 0.95


def test_censored_volumes_leave_the_items(spiked, tmp_path):
    index = prepare_cache(spiked, tmp_path / "c", PreprocessingSpec(downsample=1, mask_strategy="subject"),
                          expected_volumes=[N] * 8, progress=False)
    items = [{"image": str(bold_path(spiked, "02", 1)), "frame": t, "label": 0, "subject": "02", "run": 1}
             for t in range(N)]
    attached = attach_cache(items, index)
    assert len(attached) == N - 1 and SPIKE not in {i["frame"] for i in attached}
    assert len(attach_cache(items, index, drop_censored=False)) == N
    assert index.summary.censored == {"sub-02_run-01": 1}


def test_motion_twitch_flags_by_framewise_displacement(tmp_path):
    root = tmp_path / "bids"
    save_run(root, "01", 1, _series(3))
    rng = np.random.default_rng(1)
    motion = np.cumsum(rng.standard_normal((N, 6)) * [0.01, 0.01, 0.01, 1e-4, 1e-4, 1e-4], axis=0)
    motion[40, :3] += 0.8  # a 0.8 mm twitch and back: FD 2.4 mm into volume 40 and out of it
    header = "trans_x\ttrans_y\ttrans_z\trot_x\trot_y\trot_z"
    np.savetxt(bold_path(root, "01", 1).parent / "sub-01_ses-forrestgump_task-forrestgump_run-01_desc-confounds_timeseries.tsv",
               motion, delimiter="\t", header=header, comments="")
    meta = _build(root, tmp_path / "c")[("01", 1)][1]
    assert meta["censoring"]["volumes"] == [40]
    assert meta["censoring"]["framewise_displacement_mm"][40] == pytest.approx(2.4, abs=0.1)
    # FD off: nothing in the BOLD moved, so DVARS flags nothing
    assert _build(root, tmp_path / "d", fd_threshold=None)[("01", 1)][1]["censoring"]["volumes"] == []


def test_framewise_displacement_finds_the_rotation_columns():
    rng = np.random.default_rng(0)
    trans, rot = rng.standard_normal((20, 3)) * 0.3, rng.standard_normal((20, 3)) * 3e-3
    fmriprep = framewise_displacement(np.hstack([trans, rot]))
    fsl = framewise_displacement(np.hstack([rot, trans]))  # .par: rotations first
    expected = np.r_[0, np.abs(np.diff(trans, axis=0)).sum(1) + 50 * np.abs(np.diff(rot, axis=0)).sum(1)]
    np.testing.assert_allclose(fmriprep, expected)
    np.testing.assert_allclose(fsl, expected)


def test_a_run_made_of_outliers_is_refused_naming_it(tmp_path):
    root = tmp_path / "bids"
    save_run(root, "01", 1, _series(4))
    motion = np.random.default_rng(0).standard_normal((N, 6))  # metres-scale jumps: wrong units
    np.savetxt(bold_path(root, "01", 1).parent / "sub-01_ses-forrestgump_task-forrestgump_run-01_moco.txt", motion)
    with pytest.raises(ImageError, match="outliers") as err:
        _build(root, tmp_path / "c")
    assert "run-01" in str(err.value) and "fd_threshold" in str(err.value)


def test_find_outliers_on_stationary_data_flags_nothing():
    data = np.random.default_rng(0).standard_normal((200, 500)).astype(np.float32) + 100
    assert find_outliers(data).volumes == ()


def test_spec_knobs_are_validated_and_auto_resolves_per_model():
    with pytest.raises(ConfigError, match="outliers"):
        PreprocessingSpec(outliers="drop")
    with pytest.raises(ConfigError, match="dvars_threshold"):
        PreprocessingSpec(dvars_threshold=0)
    spec = PreprocessingSpec()
    assert spec.mask_strategy == "auto"
    assert spec.resolved(1).mask_strategy == "subject" and spec.resolved(3).mask_strategy == "group"
    assert PreprocessingSpec(mask_strategy="group").resolved(1).mask_strategy == "group"
    off = PreprocessingSpec(outliers="none").resolved(1).cache_params("nonlinear")
    assert off["outliers"] == "none" and off["dvars_threshold"] is None


def test_events_mark_a_censored_volume(tmp_path):
    writer = EventsTSVWriter(tmp_path, ["A", "B"])
    rows = [{"subject": "01", "run": 1, "volume": t, "movie_time": 2.0 * t, "label": -1,
             "censored": t == 1, "prob": [0.7, 0.3]} for t in range(3)]
    writer.write(rows)
    lines = (tmp_path / "sub-01_task-forrestgump_run-01_desc-emotion_events.tsv").read_text().splitlines()
    assert lines[0].split("\t")[-1] == "censored"
    assert lines[2].split("\t")[2:5] == ["censored", "n/a", "n/a"] and lines[2].endswith("\t1")
    assert lines[1].split("\t")[2] == "A" and lines[1].endswith("\t0")
