"""Functional alignment: piecewise Procrustes, the aligned cache, the bundle stage, protocol hygiene."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy import ndimage

from monai_emotion.align import (
    AlignmentSpec,
    PiecewiseProcrustes,
    align_cache,
    fit_runs_for,
    parcellate,
)
from monai_emotion.data.cache import prepare_cache
from monai_emotion.data.cache.index import CacheIndex
from monai_emotion.data.synthetic import make_synthetic
from monai_emotion.errors import ConfigError, find_user_error
from monai_emotion.study.alignment import AlignmentSettings, alignment_overrides
from monai_emotion.study.plan import ModelSpec

SPLIT = {"kind": "subjects", "test_subjects": ["03"], "test_runs": [4, 8], "validate_runs": [3, 7]}
PROCRUSTES = {"method": "procrustes", "parcel_voxels": 60}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small realistic world (3 subjects, 40 volumes per run) and its group-grid cache."""
    root = tmp_path_factory.mktemp("aligned")
    make_synthetic(root / "data", subjects=3, preset="realistic", scale=6, volumes_per_run=40, seed=0,
                   progress=False)
    index = prepare_cache(root / "data", root / "cache", {"downsample": 2, "mask_strategy": "group"}, progress=False)
    return root, index


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over voxels of the time correlation of ``a`` and ``b`` (``(T, ...)``)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    a, b = a - a.mean(0), b - b.mean(0)
    return float(((a * b).sum(0) / np.sqrt((a ** 2).sum(0) * (b ** 2).sum(0))).mean())


def _saved(fits: dict) -> dict:
    """The fit records without the flag saying whether they were read back."""
    return {s: {k: v for k, v in f.items() if k != "reused"} for s, f in fits.items()}


def test_planted_displacement_is_undone_on_unseen_frames():
    """A subject whose responses sit one voxel over: aligned, it correlates better with the reference."""
    rng = np.random.default_rng(0)
    shape = (12, 12, 6)
    signal = ndimage.gaussian_filter(rng.standard_normal((240, *shape)), (0, 0.8, 0.8, 0.8))
    signal /= signal.std()
    reference = signal + 0.3 * rng.standard_normal(signal.shape)
    subject = np.roll(signal, 1, axis=1) + 0.3 * rng.standard_normal(signal.shape)
    parcels = parcellate(np.ones(shape, bool), 48, "grid")
    fitted = PiecewiseProcrustes.fit(parcels.gather(subject[:160]), parcels.gather(reference[:160]), parcels)
    before = _correlation(subject[160:], reference[160:])
    after = _correlation(fitted.transform(subject[160:]), reference[160:])
    assert after > before + 0.1, (before, after)
    # orthogonal per parcel, and it survives a save/load round trip
    rot = fitted.rotations[0]
    np.testing.assert_allclose(rot @ rot.T, np.eye(len(rot)), atol=1e-4)
    again = PiecewiseProcrustes.from_arrays(fitted.to_arrays())
    np.testing.assert_array_equal(again.transform(subject[160:]), fitted.transform(subject[160:]))


def test_fit_runs_default_and_refusal():
    assert fit_runs_for(AlignmentSpec("procrustes"), SPLIT, range(1, 9)) == (1, 2, 5, 6)
    with pytest.raises(ConfigError) as caught:
        fit_runs_for(AlignmentSpec("procrustes", fit_runs=(1, 4, 8)), SPLIT, range(1, 9))
    assert "[4, 8]" in caught.value.what and "fit_runs" in str(caught.value.fix)
    with pytest.raises(ConfigError):
        fit_runs_for(AlignmentSpec("procrustes"), {"kind": "leaky_random"}, range(1, 9))
    with pytest.raises(ConfigError):
        AlignmentSpec.from_dict({"method": "procrustes", "fitruns": [1]})


def test_test_runs_never_reach_the_transforms(world, tmp_path):
    """Noise written into copies of the test runs after fitting leaves every transform as it was."""
    root, index = world
    aligned, record = align_cache(index, PROCRUSTES, SPLIT, gap=20.0)
    assert record["reference"] == "01" and record["fit_runs"] == [1, 2, 5, 6]
    assert sorted(record["transforms"]) == ["02", "03"]
    corrupt = tmp_path / "cache"
    shutil.copytree(index.root, corrupt, ignore=shutil.ignore_patterns("aligned"))
    rng = np.random.default_rng(1)
    for subject, run in index:
        if run in SPLIT["test_runs"]:
            frames = np.load(corrupt / f"sub-{subject}_run-{run:02d}.npy", mmap_mode="r+")
            frames[:] = rng.standard_normal(frames.shape).astype(frames.dtype)
            frames.flush()
    _, again = align_cache(CacheIndex.load(corrupt), PROCRUSTES, SPLIT, gap=20.0)
    assert again["digest"] == record["digest"]
    for subject, path in record["transforms"].items():
        with np.load(path) as first, np.load(again["transforms"][subject]) as second:
            np.testing.assert_array_equal(first["rotations"], second["rotations"])
    # the aligned test runs themselves do change: the noise went through the transforms
    a = aligned["02", 4].open()
    b = CacheIndex.load(again["folder"])["02", 4].open()
    assert not np.array_equal(a, b)


def test_aligned_cache_is_reused_and_keeps_the_grid(world):
    root, index = world
    aligned, record = align_cache(index, PROCRUSTES, SPLIT, gap=20.0)
    before = {k: (v.path, v.shape) for k, v in aligned.items()}
    again, second = align_cache(index, PROCRUSTES, SPLIT, gap=20.0)
    assert {k: (v.path, v.shape) for k, v in again.items()} == before
    assert all(fit.get("reused") or fit.get("reference") for fit in second["fits"].values())  # read back
    assert _saved(second["fits"]) == _saved(record["fits"])
    for key, entry in aligned.items():
        assert entry.shape == index[key].shape
    assert aligned["01", 1].path == index["01", 1].path  # the reference is its own space
    assert align_cache(index, {"method": "none"}, SPLIT, gap=20.0) == (index, None)


def test_bundle_trains_aligned_and_infers_on_a_new_subject(world, tmp_path):
    """Train an aligned cross-subject model on sub-01 and sub-02 through train.json, then infer on sub-03,
    which no training saw: its transform is fitted from its alignment runs, reported, saved, reused."""
    from monai_emotion.inference import prepare_inference
    from monai_emotion.study.bundle import run_workflow
    from monai_emotion.study.config import default_bundle

    root, index = world
    out, split = tmp_path / "run", {"kind": "runs", "test_runs": [4, 8], "validate_runs": [3, 7]}
    overrides = {"bundle_root": str(default_bundle()), "dataset_dir": str(root / "data"),
                 "annotations_dir": str(root / "data" / "annotations"), "cache_dir": index.root,
                 "output_dir": str(out / "train"), "ckpt_dir": str(out / "ckpt"), "epochs": 1,
                 "data#subjects": ["01", "02"], "data#preprocessing": {"downsample": 2}, "data#split": split,
                 "data#alignment": PROCRUSTES}
    configs = [str(default_bundle() / "configs" / "train.json")]
    run_workflow(configs, overrides, tmp_path / "train.log")
    recorded = json.loads((out / "train" / "versions.json").read_text())["data"]["alignment"]
    assert recorded["method"] == "procrustes" and recorded["fit_runs"] == [1, 2, 5, 6]
    assert all(np.load(p)["rotations"].size for p in recorded["transforms"].values())
    # the contract carries the alignment, and the model folder what a new subject's fit needs
    saved = json.loads((out / "ckpt" / "contract.json").read_text())["alignment"]
    assert saved["reference"] == "01" and saved["fit_runs"] == [1, 2, 5, 6] and saved["folder"] == "alignment"
    assert sorted(p.name for p in (out / "ckpt" / "alignment" / "reference").glob("*.npy")) == [
        f"sub-01_run-0{r}.npy" for r in (1, 2, 5, 6)]

    inference = [str(default_bundle() / "configs" / "inference.json")]
    events = {}
    for call in ("first", "second"):
        run_workflow(inference, {"bundle_root": str(default_bundle()), "ckpt_dir": str(out / "ckpt"),
                                 "dataset_dir": str(root / "data"), "subjects": ["03"],
                                 "cache_dir": str(tmp_path / "inf_cache"), "output_dir": str(tmp_path / call)})
        used = json.loads((tmp_path / call / "alignment.json").read_text())
        assert used["reference"] == "01" and used["alignment_runs"] == [1, 2, 5, 6]
        assert used["predicted_runs"] == [3, 4, 7, 8] and used["stimulus_seen_runs"] == []
        fit = used["subjects"]["03"]
        assert fit["fit_volumes"] > 0 and fit["reused"] == (call == "second")
        assert np.load(fit["transform"])["rotations"].size
        events[call] = {p.name: p.read_text() for p in sorted((tmp_path / call).glob("*_events.tsv"))}
    assert len(events["first"]) == 4 and events["first"] == events["second"]  # same transform, same predictions

    for bad, message in (({"alignment_runs": [3]}, "not among the runs"),
                         ({"alignment_runs": [1, 2, 5, 6], "subjects": ["02"]}, None)):
        kwargs = {"inputs": root / "data", "ckpt_dir": out / "ckpt", "cache_dir": tmp_path / "inf_cache",
                  "subjects": ["03"], "progress": False, **bad}
        if message is None:  # a training subject: aligned by its own fit too, the reference's frames unchanged
            assert prepare_inference(**kwargs)["alignment"]["subjects"]["02"]["fit_volumes"] > 0
            continue
        with pytest.raises(ConfigError) as caught:
            prepare_inference(**kwargs)
        assert message in caught.value.what and "alignment_runs" in str(caught.value.fix)
    with pytest.raises(Exception) as caught:  # MONAI wraps the config error
        run_workflow(configs, {**overrides, "data#alignment": {**PROCRUSTES, "fit_runs": [1, 4]}})
    error = find_user_error(caught.value)
    assert isinstance(error, ConfigError) and "test runs of the split" in error.what


def test_study_key_reaches_only_multi_subject_models():
    settings = AlignmentSettings(method="procrustes")
    unseen = ModelSpec("unseen/fold-0", "unseen", ("01", "02", "03"), SPLIT, 4.0, "0", ())
    within = ModelSpec("within/sub-01/fold-0", "within", ("01",), {"kind": "runs", "test_runs": [4, 8]}, 4.0, "0", ())
    data = alignment_overrides(settings, unseen)["data#alignment"]
    assert data["reference"] == "01" and data["fit_runs"] == [1, 2, 5, 6]
    assert alignment_overrides(settings, within) == {}
    assert alignment_overrides(AlignmentSettings(), unseen) == {}
    with pytest.raises(ConfigError):
        AlignmentSettings(method="hyper")


def test_study_section_and_aligned_linear_baseline(world, tmp_path, monkeypatch):
    """A tiny linear-only study: the alignment section's numbers are results.csv's pooled rows, and
    the linear baseline of an unseen-subject model reads the aligned frames when given the aligner."""
    import pandas as pd

    from monai_emotion import cli
    from monai_emotion.study.alignment import LinearAligner
    from monai_emotion.study.alignment_report import FIGURE, alignment_section, load_variants
    from monai_emotion.study.baseline import LinearBaseline
    from monai_emotion.study.config import load_study
    from monai_emotion.study.context import prepare_context
    from monai_emotion.study.features import DataViews
    from monai_emotion.study.runner import run_study

    root, _ = world
    monkeypatch.setenv("MONAI_EMOTION_HOME", str(tmp_path / "home"))
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({
        "data": {"dataset_dir": str(root / "data"), "annotations_dir": str(root / "data" / "annotations"),
                 "cache_dir": str(tmp_path / "cache")},
        "preprocessing": {"downsample": 2, "mask_strategy": "group"}, "training": {"epochs": 1},
        "experiments": ["within", "unseen"],
        "splits": {"run_folds": 4, "folds": [0]}, "permutations": {"linear": 0, "cnn": 0},
        "peers": {"decoders": []}, "alignment": PROCRUSTES}))
    out = tmp_path / "results"
    run_study(str(config), out=out, only="linear", log=lambda line: None)
    section = alignment_section(load_variants({"procrustes k=1": out}), out)
    cli.report(str(out), compare=f"procrustes k=1={out}")  # the section through the report command
    assert section["title"] in (out / "report.md").read_text() and section["title"] in (out / "report.html").read_text()
    assert section["id"] == "alignment" and (out / FIGURE).is_file() and section["figures"][0]["path"] == FIGURE
    results = pd.read_csv(out / "results.csv")
    table = section["tables"][0]
    assert table["sortable"] and len(table["rows"]) == 3  # linear: within heldout, unseen seen/unseen_heldout
    for row in table["rows"]:
        decoder, experiment, test_set = row[:3]
        pooled = results[(results.decoder == decoder) & (results.experiment == experiment) & (results.test_set == test_set)
                         & (results.subject == "POOLED") & (results.emotion == "ALL") & (results.model == "*")]
        assert row[table["columns"].index("balanced accuracy")] == f"{pooled.balanced_accuracy.iloc[0]:.3f}"

    study = load_study(config)
    ctx = prepare_context(study, out, log=lambda line: None)
    assert isinstance(ctx.views.aligner, LinearAligner)  # the study aligns its linear models itself
    views = ctx.views
    unseen, within = ctx.plan.of("unseen")[0], ctx.plan.of("within")[0]
    items, store = views.model_data(unseen)
    reference = alignment_overrides(study.alignment, unseen)["data#alignment"]["reference"]
    moved = {i["subject"] for i in items if "/aligned/procrustes-" in i["image"]}
    assert moved == set(unseen.subjects) - {reference} and store.paths[0] in {i["image"] for i in items}
    assert views.model_data(within)[1] is views.store(within.subjects)  # single-subject models: not aligned
    aligned = LinearBaseline(views, study.baseline, ctx.classes).fit_predict(unseen)["unseen_heldout"]
    plain = LinearBaseline(DataViews(ctx.experiment), study.baseline, ctx.classes).fit_predict(unseen)["unseen_heldout"]
    assert list(aligned["volume"]) == list(plain["volume"])  # the same test volumes ...
    assert (aligned["predicted_label"] != plain["predicted_label"]).any()  # ... decoded from the aligned frames
