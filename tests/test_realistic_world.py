"""The realistic synthetic world: every planted property checked from the files written."""

from __future__ import annotations

import json
import os
import sys
from itertools import combinations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.signal import detrend

from monai_emotion import cli
from monai_emotion.data.cache.clean import find_motion_file, load_confounds
from monai_emotion.data.labels import CLASSES
from monai_emotion.data.studyforrest import (
    SEGMENT_STARTS,
    SUBJECTS,
    bold_path,
    discover_runs,
    volume_movie_times,
)
from monai_emotion.data.synthetic import make_synthetic, oracle_decode
from monai_emotion.data.synthetic import stimulus as ss
from monai_emotion.data.synthetic.timeline import class_frequencies, plan_timeline
from monai_emotion.errors import ConfigError

N = 48  # volumes per run
SMALL = dict(preset="realistic", scale=4, volumes_per_run=N, progress=False, seed=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("realistic") / "world"
    summary = make_synthetic(root, subjects=4, **SMALL)
    generation = json.loads((root / "ground_truth" / "generation.json").read_text())
    return root, summary, generation


@pytest.fixture(scope="module")
def runs(world):
    """``{(subject, run): float32 (X, Y, Z, n)}`` as stored (slope applied)."""
    root, summary, _ = world
    return {(s, r): np.asarray(nib.load(p).dataobj, dtype=np.float32)
            for s, by_run in summary["runs"].items() for r, p in by_run.items()}


@pytest.fixture(scope="module")
def annotations(request):
    """The real annotations; absent, a skip (a failure when CI=true)."""
    try:
        return request.getfixturevalue("real_annotations")
    except pytest.skip.Exception:
        if os.environ.get("CI") == "true":
            pytest.fail("the real studyforrest annotations are required in CI")
        raise


def _good(generation, sub: str, run: int, n: int) -> np.ndarray:
    spikes = generation["subject_world"][sub]["runs"][str(run)]["spike_volumes"]
    keep = np.ones(n, dtype=bool)
    keep[spikes] = False
    return keep


def _epi_mask(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    from nilearn.masking import compute_epi_mask

    return np.asarray(compute_epi_mask(nib.Nifti1Image(data.mean(axis=-1), affine)).dataobj) > 0


def test_each_subject_covers_its_own_part_of_one_grid(world, runs):
    root, summary, generation = world
    group = np.asarray(nib.load(root / "ground_truth" / "brain_mask.nii.gz").dataobj) > 0
    imgs = {s: nib.load(bold_path(root, s, 1)) for s in summary["subjects"]}
    affines = [img.affine for img in imgs.values()]
    assert all(np.allclose(a, affines[0]) for a in affines) and len({img.shape[:3] for img in imgs.values()}) == 1
    epi, covered = {}, {}
    for sub, img in imgs.items():
        data = runs[(sub, 1)]
        covered[sub] = np.abs(data).max(axis=-1) > 0
        record = generation["subject_world"][sub]
        mask = np.asarray(nib.load(root / "ground_truth" / f"sub-{sub}_brain_mask.nii.gz").dataobj) > 0
        assert (covered[sub] == mask).all() and (mask <= group).all() and mask.sum() < group.sum()
        idx = np.nonzero(mask)
        assert record["coverage_box"] == {"lo": [int(i.min()) for i in idx], "hi": [int(i.max()) + 1 for i in idx]}
        lo, hi = record["slab_z"]
        assert not mask[..., :lo].any() and not mask[..., hi:].any() and record["n_voxels"] == mask.sum()
        assert 0 < np.abs(record["outline_shift_mm"]).max() <= 4.8
        epi[sub] = _epi_mask(data, img.affine)
        assert (epi[sub] <= mask).all()  # background (outside the coverage) is zero
    for a, b in combinations(summary["subjects"], 2):
        assert (covered[a] != covered[b]).sum() > 50 and (epi[a] != epi[b]).sum() > 50


def _pattern_match(group: np.ndarray, own: np.ndarray, inner: np.ndarray, shift_vox) -> float:
    moved = [ndimage.shift(group[..., k], shift_vox, order=3, mode="constant") for k in range(group.shape[-1])]
    return float(np.mean([np.corrcoef(m[inner], own[..., k][inner])[0, 1] for k, m in enumerate(moved)]))


def test_patterns_are_misaligned_by_the_recorded_shift(world):
    root, summary, generation = world
    gt = root / "ground_truth"
    group = np.asarray(nib.load(gt / "patterns_group.nii.gz").dataobj)
    inner = ndimage.binary_erosion(np.asarray(nib.load(gt / "brain_mask.nii.gz").dataobj) > 0, iterations=2)
    shifts = []
    for sub in summary["subjects"]:
        record = generation["subject_world"][sub]
        shift = np.array(record["pattern_shift_vox"])
        assert np.linalg.norm(record["pattern_shift_mm"]) == pytest.approx(4.8, abs=1e-3)
        assert np.allclose(shift * generation["voxel_mm"], record["pattern_shift_mm"], atol=1e-3)
        own = np.asarray(nib.load(gt / f"sub-{sub}_patterns.nii.gz").dataobj)
        best = _pattern_match(group, own, inner, shift)
        for wrong in (np.zeros(3), -shift, shift[[1, 2, 0]]):
            assert best > _pattern_match(group, own, inner, wrong) + 0.03
        shifts.append(shift)
    assert min(np.linalg.norm(a - b) for a, b in combinations(shifts, 2)) > 0.2


def test_shared_stimulus_response_in_auditory_cortex(world, runs):
    root, summary, generation = world
    audio = np.asarray(nib.load(root / "ground_truth" / "auditory_map.nii.gz").dataobj)[..., 0]
    correlations = {"auditory": [], "elsewhere": []}
    for a, b in combinations(summary["subjects"][:3], 2):
        for run in range(1, 9):
            x, y = runs[(a, run)], runs[(b, run)]
            n = min(x.shape[-1], y.shape[-1])
            keep = _good(generation, a, run, n) & _good(generation, b, run, n)
            both = (np.abs(x).max(-1) > 0) & (np.abs(y).max(-1) > 0)
            for name, sel in (("auditory", both & (audio > 0.5)), ("elsewhere", both & (audio < 0.02))):
                u, v = detrend(x[sel][:, :n][:, keep], axis=1), detrend(y[sel][:, :n][:, keep], axis=1)
                r = (u * v).sum(1) / np.sqrt((u * u).sum(1) * (v * v).sum(1))
                correlations[name].append(r.mean())
    assert np.mean(correlations["auditory"]) > 0.4
    assert np.mean(correlations["auditory"]) > np.mean(correlations["elsewhere"]) + 0.3
    sound = pd.read_csv(root / "ground_truth" / "stimulus.tsv", sep="\t")
    assert len(sound) == 7086 and set(sound["speech"].unique()) == {0, 1}


def test_each_subject_has_its_own_hrf_latency(world, runs):
    root, summary, generation = world
    audio = np.asarray(nib.load(root / "ground_truth" / "auditory_map.nii.gz").dataobj)[..., 0]
    drive = pd.read_csv(root / "ground_truth" / "stimulus.tsv", sep="\t")["drive"].to_numpy()
    peaks = np.arange(3.0, 7.01, 0.25)
    predicted = {p: ss.stimulus_response(drive, ss.hrf(p)) for p in peaks}
    recorded = []
    for sub in summary["subjects"]:
        signal, models = [], {p: [] for p in peaks}
        for run in range(1, 9):
            data = runs[(sub, run)]
            n = data.shape[-1]
            keep = _good(generation, sub, run, n)
            mean = data[(audio > 0.5) & (np.abs(data).max(-1) > 0)].mean(axis=0)[keep]
            signal.append(detrend(mean / mean.mean()))
            second = (volume_movie_times(run, n) + 1).astype(int)[keep]
            for p in peaks:
                models[p].append(detrend(predicted[p][second]))
        fit = [np.corrcoef(np.concatenate(signal), np.concatenate(models[p]))[0, 1] for p in peaks]
        peak = generation["subject_world"][sub]["hrf_peak_s"]
        assert 4.0 <= peak <= 6.0 and abs(peaks[int(np.argmax(fit))] - peak) <= 0.5
        recorded.append(peak)
    assert len(set(recorded)) == len(recorded)


def test_spikes_motion_files_and_run_intensity(world, runs):
    root, summary, generation = world
    for sub in summary["subjects"][:2]:
        record = generation["subject_world"][sub]
        run_means = {}
        for run in range(1, 9):
            data = runs[(sub, run)]
            n = data.shape[-1]
            inside = np.abs(data).max(-1) > 0
            series = data[inside].mean(axis=0)
            jump = np.abs(series / ndimage.median_filter(series, 5, mode="nearest") - 1)
            spikes = record["runs"][str(run)]["spike_volumes"]
            assert len(spikes) == 3 and set(np.argsort(jump)[-3:]) == set(spikes)
            assert jump[spikes].min() > 0.02 > 3 * np.sort(jump)[-4]
            run_means[run] = series[_good(generation, sub, run, n)].mean()
            path = find_motion_file(summary["runs"][sub][run], str(root), sub, run)
            assert path is not None and path.endswith("_desc-confounds_timeseries.tsv")
            assert load_confounds(path, n, summary["runs"][sub][run]).shape == (n, 6)
            fd = pd.read_csv(path, sep="\t")["framewise_displacement"].to_numpy()
            assert np.isnan(fd[0]) and set(np.argsort(np.nan_to_num(fd))[-3:]) <= set(spikes) | {s + 1 for s in spikes}
        factors = record["run_intensity"]
        ratio = [run_means[r] / run_means[1] / (factors[str(r)] / factors["1"]) for r in range(2, 9)]
        assert np.allclose(ratio, 1.0, atol=0.01)
        assert max(factors.values()) / min(factors.values()) > 1.03


def test_short_run_and_data_types(world):
    root, summary, generation = world
    found = discover_runs(root, "nonlinear")
    lengths = {(i.subject, i.run): i.n_volumes for i in found.runs}
    short = round(263 * N / 338)
    assert lengths[("04", 8)] == short < N and generation["short_runs"] == [["04", 8, short]]
    assert all(n == N for key, n in lengths.items() if key != ("04", 8))
    dtypes = {s: nib.load(bold_path(root, s, 2)).get_data_dtype() for s in summary["subjects"]}
    assert dtypes == {"01": np.int16, "02": np.float32, "03": np.int16, "04": np.int16}
    assert generation["subject_dtype"] == {s: str(d) for s, d in dtypes.items()} and generation["dtype"] == "mixed"
    assert 0 < nib.load(bold_path(root, "01", 2)).dataobj.slope < 1


def test_oracle_in_a_sane_band(world):
    root, summary, _ = world
    scores = summary["oracle"]
    assert all(0.3 < v < 0.8 for v in scores.values()) and 0.4 < np.mean(list(scores.values())) < 0.7
    for sub in ("02", "03"):  # float32, and int16 on its own coverage: scored from the files alike
        assert oracle_decode(root, sub)["balanced_accuracy"] == pytest.approx(scores[sub], abs=1e-6)


def test_classes_skewed_by_run_in_the_planned_timeline():
    lengths, base = [60] * 8, class_frequencies()

    def spread(concentration: float) -> float:
        out = []
        for seed in range(4):
            timeline = plan_timeline(lengths, np.random.default_rng(seed), concentration=concentration)
            ends = [*SEGMENT_STARTS[1:], timeline.second.size]
            for start, end in zip(SEGMENT_STARTS, ends, strict=True):
                classes = timeline.classes_at(np.arange(start, end))
                share = np.bincount(classes[classes >= 0], minlength=len(CLASSES)) / max((classes >= 0).sum(), 1)
                out.append(0.5 * np.abs(share - base).sum())
        return float(np.mean(out))

    assert spread(3.0) > 1.5 * spread(20.0)


def test_real_annotations_keep_their_run_skew(annotations, tmp_path):
    make_synthetic(tmp_path / "real", subjects=1, runs=[4], annotations_dir=annotations, oracle=False,
                   preset="realistic", scale=8, volumes_per_run=30, progress=False)
    episodes = pd.read_csv(tmp_path / "real" / "ground_truth" / "true_episodes.tsv", sep="\t")
    run_of = np.searchsorted(SEGMENT_STARTS, episodes["onset"], side="right")
    seconds = (episodes["end"] - episodes["onset"]).groupby([episodes["class"], run_of]).sum().unstack(fill_value=0)
    assert seconds.loc["FEAR"].idxmax() == 4 and seconds.loc["FEAR", 4] > 0.4 * seconds.loc["FEAR"].sum()
    assert seconds.loc["ANGER"].reindex([7, 8], fill_value=0).sum() < 0.05 * seconds.loc["ANGER"].sum()


def test_full_count_lacks_sub10(tmp_path):
    root = tmp_path / "all"
    summary = make_synthetic(root, subjects=19, runs=[1], oracle=False, preset="realistic", scale=8,
                             volumes_per_run=30, progress=False)
    assert summary["subjects"] == list(SUBJECTS) and "10" not in SUBJECTS
    listed = (root / "participants.tsv").read_text().split()[1:]
    assert listed == [f"sub-{i:02d}" for i in range(1, 21)]
    found = discover_runs(root, "nonlinear", runs=[1])
    assert "10" not in found.subjects and "sub-10: run 1 missing" in found.problems
    assert json.loads((root / "ground_truth" / "generation.json").read_text())["absent_subjects"] == ["10"]


def test_command_line_preset(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli"
    monkeypatch.setattr(sys, "argv", ["monai-emotion", "make-synthetic", "--out", str(out), "--preset", "realistic",
                                      "--subjects", "2", "--scale", "8", "--volumes_per_run", "30", "--runs", "1"])
    cli.main()
    assert "synthetic realistic dataset" in capsys.readouterr().out
    generation = json.loads((out / "ground_truth" / "generation.json").read_text())
    assert generation["preset"] == "realistic" and generation["world"]["stimulus_strength"] > 0
    assert nib.load(bold_path(out, "02", 1)).get_data_dtype() == np.float32
    assert (out / "ground_truth" / "sub-01_brain_mask.nii.gz").is_file()


def test_bad_knobs(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset"):
        make_synthetic(tmp_path / "a", preset="real", **{k: v for k, v in SMALL.items() if k != "preset"})
    with pytest.raises(ConfigError, match="dtype"):
        make_synthetic(tmp_path / "b", dtype="float64", **SMALL)
    with pytest.raises(ConfigError, match="hrf_peak_s"):
        make_synthetic(tmp_path / "c", hrf_peak_s=(0.5, 6.0), **SMALL)
    with pytest.raises(ConfigError, match="under half"):
        make_synthetic(tmp_path / "d", coverage_cut_mm=40.0, **SMALL)
