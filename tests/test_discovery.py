"""BIDS discovery and NIfTI header checks, on nibabel's real test images and tiny trees."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nifti_helpers import save_nifti

from monai_emotion.data.studyforrest import (
    SPACES,
    bold_path,
    discover_runs,
    normalize_subject,
    read_run_header,
)
from monai_emotion.errors import ImageError, LayoutError

NIB_DATA = Path(os.path.dirname(nib.__file__)) / "tests" / "data"


def _write_run(path: Path, n_vols: int, shape=(6, 7, 4), tr=2.0, ndim=4) -> Path:
    data = np.random.default_rng(0).random((*shape, n_vols) if ndim == 4 else shape).astype(np.float32)
    return save_nifti(path, data, np.diag([1.2, 1.2, 1.2, 1.0]), tr=tr if ndim == 4 else None, units=True)


def _tree(root: Path, subjects=("01", "02"), runs=(1, 2), n_vols=(5, 4), space="nonlinear") -> Path:
    for sub in subjects:
        for run in runs:
            _write_run(bold_path(root, sub, run, space), n_vols[run - 1])
    return root


def test_nibabel_functional_nii_header():
    img, tr, source = read_run_header(NIB_DATA / "functional.nii")
    assert img.shape == (17, 21, 3, 20) and tr == 2.0 and source == "header"


def test_nibabel_example4d_odd_tr_is_reported():
    with pytest.raises(ImageError, match="milliseconds") as info:
        read_run_header(NIB_DATA / "example4d.nii.gz")
    assert "example4d.nii.gz" in str(info.value)


def test_sidecar_overrides_a_broken_header_tr(tmp_path):
    src = tmp_path / "run.nii.gz"
    shutil.copy(NIB_DATA / "example4d.nii.gz", src)
    src.with_name("run.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    with pytest.warns(UserWarning, match="disagrees with sidecar"):
        _, tr, source = read_run_header(src)
    assert tr == 2.0 and "run.json" in source


def test_sidecar_disagreeing_is_named(tmp_path):
    path = _write_run(tmp_path / "sub-01_run-01_bold.nii.gz", 3)
    path.with_name("sub-01_run-01_bold.json").write_text(json.dumps({"RepetitionTime": 1.5}))
    with pytest.raises(ImageError, match="sidecar") as info:
        read_run_header(path)
    assert "RepetitionTime=1.5" in str(info.value)


def test_discovery_finds_runs_and_reports_gaps(tmp_path):
    root = _tree(tmp_path, runs=(1, 2), n_vols=(5, 4))
    os.remove(bold_path(root, "02", 2))
    found = discover_runs(root, "nonlinear", runs=[1, 2], expected_volumes=(5, 6))
    assert [(r.subject, r.run, r.n_volumes) for r in found.runs] == [("01", 1, 5), ("01", 2, 4), ("02", 1, 5)]
    assert "sub-01: run 2 is short (4 of 6 volumes)" in found.problems
    assert "sub-02: run 2 missing" in found.problems
    missing = discover_runs(root, "nonlinear", subjects=["03"], runs=[1, 2], expected_volumes=(5, 6))
    assert missing.runs == [] and "sub-03: no runs found for space 'nonlinear'" in missing.problems


def test_all_named_spaces_and_a_glob(tmp_path):
    for space in SPACES:
        root = _tree(tmp_path / space, subjects=("05",), runs=(1,), space=space)
        found = discover_runs(root, space, runs=[1], expected_volumes=(5,))
        assert len(found.runs) == 1 and found.runs[0].subject == "05"
    glob = "derivatives/non-linear_anatomical_alignment/sub-*/ses-forrestgump/func/*_bold.nii.gz"
    found = discover_runs(tmp_path / "nonlinear", glob, runs=[1], expected_volumes=(5,))
    assert [(r.subject, r.run) for r in found.runs] == [("05", 1)]


def test_duplicate_runs_in_a_glob(tmp_path):
    _write_run(tmp_path / "a" / "sub-01_run-01_bold.nii.gz", 3)
    _write_run(tmp_path / "b" / "sub-01_run-01_bold.nii.gz", 3)
    with pytest.raises(LayoutError, match="2 files for sub-01 run 1"):
        discover_runs(tmp_path, "*/sub-*_bold.nii.gz", runs=[1], expected_volumes=(3,))


def test_3d_image_is_refused(tmp_path):
    path = _write_run(tmp_path / "mask.nii.gz", 0, ndim=3)
    with pytest.raises(ImageError, match="expected a 4D time series") as info:
        read_run_header(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_is_refused(tmp_path):
    path = _write_run(tmp_path / "run.nii.gz", 5)
    data = path.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageError, match="truncated") as info:
        read_run_header(cut)
    assert str(cut) in str(info.value)
    with gzip.open(path) as fh:  # the intact file still passes
        assert len(fh.read()) > 0
    read_run_header(path)


def test_wrong_tr_is_refused(tmp_path):
    path = _write_run(tmp_path / "run.nii.gz", 5, tr=3.0)
    with pytest.raises(ImageError, match="TR=3 s") as info:
        read_run_header(path)
    assert str(path) in str(info.value)


def test_subject_labels():
    assert normalize_subject(1) == normalize_subject("sub-01") == normalize_subject("01") == "01"
    with pytest.raises(LayoutError):
        normalize_subject("a/b")
