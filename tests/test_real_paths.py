"""The user paths on a realistic world: subjects with their own brain extents, a short run.

With the bundle's own defaults: train one cross-subject model on three subjects, evaluate
it, infer on a fourth subject given as its own BIDS folder (every volume of every run gets
an events row, the short run included) and inside the training tree (same predictions),
then export for the model zoo (TorchScript and ONNX round-trip, the zoo's checks pass).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from bundle_runs import REPO, bundle_args, bundle_env

from monai_emotion.data.studyforrest import bold_path

#: 4 subjects of 22 x 30 x 8 voxels, 8 runs of 36 volumes (sub-04's run 8 shorter)
WORLD = {"subjects": 4, "scale": 6, "volumes_per_run": 36, "seed": 3, "preset": "realistic"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    from monai_emotion.data.synthetic import make_synthetic

    tmp = tmp_path_factory.mktemp("real_paths")
    bids = tmp / "bids"
    make_synthetic(bids, progress=False, oracle=False, **WORLD)
    # the fourth subject as a user would hand it over: its own BIDS folder
    new = tmp / "new_subject"
    new.mkdir()
    shutil.copy2(bids / "dataset_description.json", new / "dataset_description.json")
    subject_dir = bold_path(bids, "04", 1).parents[2]  # .../sub-04 of the aligned space
    shutil.copytree(subject_dir, new / subject_dir.relative_to(bids))
    bundle = tmp / "emotion_3dcnn"
    shutil.copytree(REPO / "bundles" / "emotion_3dcnn", bundle,
                    ignore=shutil.ignore_patterns("models", "runs", "eval", "export"))
    shutil.copy2(REPO / "bundles" / "meta_schema.json", tmp / "meta_schema.json")
    return {"tmp": tmp, "bids": bids, "new": new, "bundle": bundle, "home": tmp / "home"}


def _run(world: dict[str, Path], workflow: str, configs: list[str], overrides: dict[str, object],
         timeout: float = 600) -> subprocess.CompletedProcess:
    files = [str(world["bundle"] / "configs" / name) for name in configs]
    command = [sys.executable, "-m", "monai.bundle", *bundle_args(workflow, files, overrides)]
    return subprocess.run(command, cwd=world["tmp"], env=bundle_env(world["home"]), capture_output=True,
                          text=True, timeout=timeout)


def _events(folder: Path) -> dict[str, pd.DataFrame]:
    return {p.name: pd.read_csv(p, sep="\t") for p in sorted(folder.glob("*_events.tsv"))}


@pytest.fixture(scope="module")
def trained(world: dict[str, Path]) -> dict[str, Path]:
    data = {"dataset_dir": world["bids"], "annotations_dir": world["bids"] / "annotations"}
    proc = _run(world, "training", ["train.json"],
                {**data, "data#subjects": "['01','02','03']", "epochs": 2, "batch_size": 8})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    proc = _run(world, "evaluating", ["train.json", "evaluate.json"], {**data, "data#subjects": "['01','02','03']"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return data


def test_cross_subject_training_with_defaults_records_the_contract(world, trained) -> None:
    models = world["bundle"] / "models"
    contract = json.loads((models / "contract.json").read_text())
    assert contract["trained_on"]["subjects"] == ["01", "02", "03"]
    assert contract["network"]["_target_"] == "monai_emotion.networks.build_network"
    assert contract["preprocessing"]["mask_strategy"] == "group"
    mask = nib.load(models / "mask.nii.gz")
    assert mask.shape == tuple(contract["source_shape"])
    assert np.allclose(mask.affine, contract["source_affine"], atol=1e-4)
    metrics = json.loads((world["bundle"] / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["balanced_accuracy"] <= 1.0
    # subjects cover the group mask differently: the cache recorded (and zero-filled) it per run
    sidecars = [json.loads(p.read_text()) for p in (world["home"] / "cache").rglob("sub-0*_run-0*.json")
                if p.parent.name != "masks"]
    assert len(sidecars) == 24
    fractions = [s["coverage"]["fraction"] for s in sidecars]
    assert all(0.8 <= f <= 1.0 for f in fractions) and len(set(fractions)) > 1
    assert any(s["coverage"]["zeroed_voxels"] > 0 for s in sidecars)


def test_inference_on_a_new_subject_folder_equals_inference_inside_the_training_tree(world, trained) -> None:
    out_new, out_tree = world["tmp"] / "inf_new", world["tmp"] / "inf_tree"
    proc = _run(world, "inferring", ["inference.json"], {"dataset_dir": world["new"], "output_dir": out_new})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    proc = _run(world, "inferring", ["inference.json"],
                {"dataset_dir": world["bids"], "subjects": "['04']", "output_dir": out_tree})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    new, tree = _events(out_new), _events(out_tree)
    assert len(new) == 8 and new.keys() == tree.keys()
    for run in range(1, 9):
        n_volumes = nib.load(bold_path(world["bids"], "04", run)).shape[3]
        name = next(k for k in new if f"run-{run:02d}" in k)
        assert len(new[name]) == n_volumes  # every volume has a row, the short run's too
        pd.testing.assert_frame_equal(new[name], tree[name])
    lengths = [len(frame) for frame in new.values()]
    assert lengths[-1] < lengths[0]  # sub-04's run 8 is the short one
    # the world's motion spikes are censored, and still get a row marked as such
    censored = pd.concat(new.values())
    censored = censored[censored["censored"] == 1]
    assert len(censored) >= 8 and set(censored["trial_type"]) == {"censored"}
    coverage = json.loads((out_new / "coverage.json").read_text())["runs"]
    assert len(coverage) == 8 and all(0.8 <= v <= 1.0 for v in coverage.values())


def test_export_passes_the_zoo_checks_and_round_trips(world, trained) -> None:
    from monai_emotion.export import export_bundle

    report = export_bundle(world["bundle"], world["tmp"] / "export")
    assert all(check["ok"] for check in report["checks"].values()), report
    exported = world["tmp"] / "export"
    meta = json.loads((exported / "configs" / "metadata.json").read_text())
    contract = json.loads((world["bundle"] / "models" / "contract.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == contract["spatial_shape"]
    assert (exported / "models" / "model.ts").is_file() and (exported / "models" / "model.onnx").is_file()


def test_per_subject_masks_for_several_subjects_stop_before_any_work(world) -> None:
    cache = world["tmp"] / "subject_cache"
    proc = _run(world, "training", ["train.json"],
                {"dataset_dir": world["bids"], "annotations_dir": world["bids"] / "annotations",
                 "cache_dir": cache, "data#preprocessing#mask_strategy": "subject", "bundle_root": world["tmp"] / "b2"})
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()[-2:]
    assert "mask_strategy 'subject'" in lines[0] and lines[1].strip().startswith("fix:"), proc.stderr[-2000:]
    assert not cache.exists()


def test_a_run_on_another_grid_is_refused_naming_the_file(world, trained) -> None:
    source = bold_path(world["new"], "04", 1)
    img = nib.load(source)
    moved = world["tmp"] / "other_grid" / "sub-04_task-forrestgump_run-01_bold.nii.gz"
    moved.parent.mkdir()
    affine = img.affine.copy()
    affine[:3, 3] += 7.0  # same shape, shifted by 7 mm: another space
    nib.Nifti1Image(np.asanyarray(img.dataobj), affine, img.header).to_filename(moved)
    proc = _run(world, "inferring", ["inference.json"], {"dataset_dir": moved.parent, "output_dir": world["tmp"] / "x"})
    assert proc.returncode != 0
    assert "not on the model's training grid" in proc.stderr and str(moved.name) in proc.stderr, proc.stderr[-2000:]
