"""The typed study config, the run selection and the one item builder (fast: no training).

The last test makes a tiny synthetic dataset (2 subjects, 8 runs of 40 volumes) and checks that
the bundle's items (``experiment``, through the bundle config) and the linear baseline's
(:class:`~monai_emotion.study.features.VolumeTable`) are the same, permuted and not.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest

from monai_emotion.data.cache.spec import PreprocessingSpec
from monai_emotion.data.datalist import labelled_items, make_datalist
from monai_emotion.data.labels import DEFAULT_RULE, LabelRule, label_volumes
from monai_emotion.data.studyforrest import VOLUMES_PER_RUN, RunInfo
from monai_emotion.errors import ConfigError
from monai_emotion.study.config import DEFAULTS, Study, load_study, parse_study
from monai_emotion.study.plan import ModelSpec, selected, selected_permutations
from monai_emotion.study.plan import TestSet as HeldOut
from monai_emotion.study.settings import SplitSettings, TrainingSettings

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.json"))
SYNTHETIC = {"data": {"synthetic": {"subjects": 2}}}


def _study(tmp_path: Path, **given) -> Study:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({**SYNTHETIC, **given}))
    return load_study(path)


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_shipped_studies_load_typed(path):
    study = load_study(path)
    assert isinstance(study.labels, LabelRule) and isinstance(study.preprocessing, PreprocessingSpec)
    assert isinstance(study.splits, SplitSettings) and isinstance(study.training, TrainingSettings)
    given = json.loads(path.read_text())
    assert study.training.to_dict() == {"epochs": 50, **given.get("training", {})}
    # what the file gives comes back unchanged (and JSON round-trips)
    again = json.loads(json.dumps(study.to_dict()))
    for section in ("splits", "permutations", "baseline", "leaky", "figures", "labels", "runtime"):
        for key, value in given.get(section, {}).items():
            assert again[section][key] == value, (section, key)


def test_defaults_are_typed(tmp_path):
    study = _study(tmp_path)
    assert study.labels == DEFAULT_RULE
    # replaced as a whole: no preprocessing given is the spec's defaults
    assert study.preprocessing == PreprocessingSpec()
    assert DEFAULTS["preprocessing"] == PreprocessingSpec().to_dict()
    assert study.network == {"head": "flatten"} and study.training.epochs == 50
    assert study.experiments == ("within", "cross", "unseen", "leaky")
    assert study.permutations.cnn_experiments == ("within",) and study.permutations.count("linear") == 200
    assert study.baseline.tol == 0.01 and study.runtime.threads == 1 and study.subjects is None
    given = _study(tmp_path, preprocessing={"high_pass": 0.01}, subjects=[1, "sub-02"],
                   network={"hidden": 64}, training={"batch_size": 8, "epochs": 3},
                   labels={"lag": 2, "observers": ["a.tsv", "b.tsv"]})
    assert given.preprocessing == PreprocessingSpec(high_pass=0.01)
    assert given.subjects == ("01", "02") and given.network == {"head": "flatten", "hidden": 64}
    assert given.training.to_dict() == {"epochs": 3, "batch_size": 8}
    assert given.labels.lag == 2.0 and given.labels.observers == ("a.tsv", "b.tsv")


def test_paths_are_relative_to_the_study_file(tmp_path):
    study = _study(tmp_path, data={"dataset_dir": "bids", "annotations_dir": "~/ann", "cache_dir": None},
                   labels={"emotion_map": "map.json"})
    assert study.data.dataset_dir == str(tmp_path / "bids")
    assert study.data.annotations_dir == str(Path("~/ann").expanduser())
    assert study.data.cache_dir is None and study.labels.emotion_map == str(tmp_path / "map.json")


@pytest.mark.parametrize("given, message", [
    ({"splits": {"foldz": [0]}}, "splits.foldz"),
    ({"labels": {"lags": 4}}, "labels.lags"),
    ({"preprocessing": {"downsampel": 2}}, "preprocessing.downsampel"),
    ({"splits": {"run_folds": 1}}, "run_folds must be at least 2"),
    ({"splits": {"subject_folds": "random"}}, "subject_folds"),
    ({"labels": {"threshold": 2}}, "threshold"),
    ({"labels": {"lag": "four"}}, "could not convert"),
    ({"preprocessing": {"mask_strategy": "both"}}, "mask_strategy"),
    ({"permutations": {"cnn_experiments": ["whithin"]}}, "whithin"),
    ({"baseline": {"reduction": "lda"}}, "reduction"),
    ({"runtime": {"parallel_baseline": "yes"}}, "true or false"),
    ({"training": {"epochs": 0}}, "epochs"),
    ({"experiments": ["within", "crosss"]}, "crosss"),
    ({"experiments": []}, "no experiments"),
    ({"subjects": ["sub 1"]}, "not a subject label"),
    ({"splits": [4]}, "must be an object"),
])
def test_errors_name_the_file_and_key(tmp_path, given, message):
    with pytest.raises(ConfigError, match=message) as err:
        _study(tmp_path, **given)
    assert str(tmp_path / "s.json") in str(err.value)
    key = next(iter(given))
    assert key in str(err.value)


def test_parse_study_without_a_file():
    study = parse_study({**SYNTHETIC, "splits": {"folds": [0, 1]}}, "plan.json", name="x")
    assert study.name == "x" and study.splits.folds == (0, 1)
    with pytest.raises(ConfigError, match="exactly one"):
        parse_study({"data": {"synthetic": {}}}, "plan.json")


def test_selected_permutations():
    spec = ModelSpec("within/sub-01/fold-0", "within", ("01",), {}, 4.0, "0", (HeldOut("heldout", ("01",), {}),))
    assert selected_permutations("linear", None) and selected_permutations("cnn", ["all"])
    assert selected_permutations("cnn", ["cnn:permutations"]) and not selected_permutations("linear", ["cnn:permutations"])
    assert not selected_permutations("cnn", ["within", "linear"])
    assert selected("cnn", spec.permuted(1), ["permutations"]) == selected_permutations("cnn", ["permutations"])


def test_bundle_parsing_leaves_the_shared_overrides_alone(tmp_path):
    """A model's ``data#labels#lag`` must not leak into the study's shared overrides (and digests)."""
    from monai_emotion.study.bundle import base_overrides, parse_component

    study = _study(tmp_path)
    base = base_overrides(study, str(tmp_path / "bids"), str(tmp_path / "ann"))
    before = copy.deepcopy(base)
    data = parse_component(study, {**base, "data#labels#lag": 0.0}, "data")
    assert data["labels"]["lag"] == 0.0 and data["preprocessing"] == study.preprocessing.to_dict()
    assert base == before


def _runs(n_volumes: dict[tuple[str, int], int]) -> list[RunInfo]:
    return [RunInfo(s, r, f"/bids/sub-{s}_run-{r}.nii.gz", n, VOLUMES_PER_RUN[r - 1], (4, 4, 4),
                    ((1.0,) * 4,) * 4, (1.2,) * 3, 2.0, "header") for (s, r), n in n_volumes.items()]


def test_make_datalist_is_labelled_items():
    from monai_emotion.data.annotations import Episode

    observers = [[Episode(float(10 * k), float(10 * k + 25), "char", "HIGH", "POS", "SELF",
                          ("HAPPINESS",) if k % 3 else ("FEAR",)) for k in range(40)]] * 3
    table = label_volumes(observers, threshold=0.5, lag=4.0, runs=[1, 2])
    runs = _runs({("01", 1): 60, ("01", 2): 50, ("02", 1): 45})
    for drop, soft in (((), True), (("NONE", "TIE"), False)):
        items = make_datalist(runs, table, drop=drop, soft=soft)["items"]
        assert items == labelled_items(runs, table, drop=drop, soft=soft)
        # run 2 (movie seconds 886-1768) has no episode: every volume NONE
        assert len({(i["subject"], i["run"]) for i in items}) == (3 if not drop else 2)
        assert all(i["frame"] < 60 for i in items) and all(isinstance(i["frame"], int) for i in items)
    assert {i["label_name"] for i in items} <= {"HAPPINESS", "FEAR"}
    assert labelled_items(runs, table, drop=())[0]["label"] == -1  # the movie starts unlabelled


def test_bundle_items_equal_the_baselines(tmp_path, monkeypatch):
    """The bundle's items (its ``experiment``) are the baseline's, at the study's lag and permuted."""
    from monai_emotion.data.synthetic import make_synthetic
    from monai_emotion.study.bundle import base_overrides, bundle_experiment, captured
    from monai_emotion.study.features import VolumeTable

    monkeypatch.setenv("MONAI_EMOTION_HOME", str(tmp_path / "home"))
    data = tmp_path / "data"
    make_synthetic(data, subjects=2, scale=6, volumes_per_run=40, seed=4, short_runs={("02", 8): 30},
                   progress=False, oracle=False)
    study = _study(tmp_path, labels={"lag": 2.0}, preprocessing={"downsample": 1})
    base = {**base_overrides(study, str(data), str(data / "annotations")), "data#split": {"kind": "runs"}}
    assert base["data#labels"] == study.labels.to_dict()
    assert base["data#preprocessing"] == study.preprocessing.to_dict()
    with captured(None), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = bundle_experiment(study, base)
        permuted = bundle_experiment(study, {**base, "data#label_permutation": 3})
    keys = ("image", "frame", "label", "label_name", "subject", "run", "movie_time", "label_time")
    table = VolumeTable(plain)
    assert table.rule == study.labels
    for items, theirs in ((table.items(2.0), plain["train"]), (table.items(2.0, 3), permuted["train"])):
        assert [{k: i[k] for k in keys} for i in items] == [{k: i[k] for k in keys} for i in theirs]
    assert [i["label"] for i in table.items(2.0, 3)] != [i["label"] for i in table.items(2.0)]
    assert max(i["frame"] for i in table.items(2.0) if i["subject"] == "02" and i["run"] == 8) < 30
