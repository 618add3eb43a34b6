"""The study runner: config, plan, baseline items, permutations, outputs, and proof on ground truth.

Two tiny synthetic datasets (2 subjects, 8 short runs, 4.8 mm voxels) are made once: one with
a planted signal, one null. Each runs one small study end to end through the bundle; the tests
then read its outputs. Budget: about 2.5 minutes on 2 shared CPU cores.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from monai_emotion.data.splits import _movie_intervals
from monai_emotion.errors import ConfigError
from monai_emotion.experiment import make_splits
from monai_emotion.study.config import load_study, parse_study
from monai_emotion.study.permutation import MIN_EMPIRICAL, chance_interval, p_value
from monai_emotion.study.plan import ModelSpec, plan_study, validation_run
from monai_emotion.study.plan import TestSet as HeldOut
from monai_emotion.study.runner import run_study, selected
from monai_emotion.study.scoring import MEAN, POOLED, unit_scores

CLASSES = ["HAPPINESS", "SADNESS", "FEAR", "LOVE", "ANGER"]
#: a planted signal 8x the generator's uniform default strengths, given explicitly so the
#: test does not move when the defaults are retuned: strong enough that 3 subjects x 8 runs of 60
#: volumes train the seed's CNN in seconds and the oracle sits near its label-noise ceiling. The
#: oracle sees the same data, so the CNN/oracle ratio stays an honest end-to-end check (default
#: strengths and full-length runs are measured in docs/validation.md)
STRENGTH = {"HAPPINESS": 6.4, "SADNESS": 6.4, "FEAR": 8.0, "LOVE": 4.8, "ANGER": 6.4}
PLANTED = dict(subjects=3, scale=4, volumes_per_run=60, seed=11, class_strength=STRENGTH)
NULL = dict(subjects=2, scale=4, volumes_per_run=60, seed=12, null=True)
NETWORK = {"head": "flatten"}
#: runs cut to 60 volumes squeeze the generator's slow drifts (periods of 2/3 to 2 runs) into
#: the emotion band; a 0.01 Hz high-pass removes them again (docs/validation.md)
PREPROCESSING = {"downsample": 2, "mask_strategy": "group", "detrend": True, "standardize": True, "high_pass": 0.01}


def _write_study(path, synthetic, root, epochs: int, **extra) -> str:
    config = {
        "data": {"synthetic": synthetic, "synthetic_root": str(root)},
        "network": NETWORK, "training": {"epochs": epochs, "batch_size": 16, "learning_rate": 0.001},
        "preprocessing": PREPROCESSING,
        "splits": {"run_folds": 4, "folds": [0]},
        **extra,
    }
    path.write_text(json.dumps(config))
    return str(path)


@pytest.fixture(scope="module")
def home(tmp_path_factory, monkeypatch_module):
    folder = tmp_path_factory.mktemp("study_home")
    monkeypatch_module.setenv("MONAI_EMOTION_HOME", str(folder))
    return folder


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def planted_study(tmp_path_factory, home):
    tmp = tmp_path_factory.mktemp("planted")
    config = _write_study(tmp / "planted.json", PLANTED, tmp / "data", 5,
                          permutations={"linear": 20, "cnn": 0})
    lines: list[str] = []
    summary = run_study(config, out=tmp / "results", log=lines.append)
    return tmp, config, summary, lines


@pytest.fixture(scope="module")
def null_study(tmp_path_factory, home):
    tmp = tmp_path_factory.mktemp("null")
    config = _write_study(tmp / "null.json", NULL, tmp / "data", 6, experiments=["within", "leaky"],
                          permutations={"linear": MIN_EMPIRICAL, "cnn": 2, "cnn_experiments": ["within"]},
                          peers={"decoders": []})  # the peer is checked on the planted study
    summary = run_study(config, out=tmp / "results", log=lambda line: None)
    return tmp, summary


# ---------------------------------------------------------------- config, plan, helpers


def test_config_defaults_and_errors(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"data": {"synthetic": {"subjects": 2}}, "training": {"epochs": 3}}))
    study = load_study(path)
    assert study.name == "s" and study.training.epochs == 3
    assert study.splits.run_folds == 4 and study.permutations.linear == 200
    assert (study.bundle / "configs" / "train.json").is_file()
    path.write_text(json.dumps({"data": {"synthetic": {}}, "trainin": {}}))
    with pytest.raises(ConfigError, match="trainin") as err:
        load_study(path)
    assert str(path) in str(err.value)
    path.write_text(json.dumps({"data": {}}))
    with pytest.raises(ConfigError, match="exactly one"):
        load_study(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="line 1"):
        load_study(path)


def _items() -> list[dict]:
    """Items of 2 subjects x 8 runs x 30 volumes with a repeating label sequence."""
    items = []
    for sub in ("01", "02"):
        for run in range(1, 9):
            for v in range(30):
                items.append({"image": f"{sub}-{run}.npy", "frame": v, "label": (v // 3 + run) % 5,
                              "label_name": CLASSES[(v // 3 + run) % 5], "subject": sub, "run": run,
                              "movie_time": 900.0 * (run - 1) + 2 * v, "label_time": 900.0 * (run - 1) + 2 * v - 3})
    return items


def test_plan_has_leak_free_splits():
    items = _items()
    study = parse_study({"data": {"synthetic": {"subjects": 2}}, "splits": {"folds": [0, 1]}}, "plan.json")
    plan = plan_study(items, study, 5)
    assert plan.describe()["models"] == {"within": 4, "cross": 2, "unseen": 2, "leaky": 2}
    for spec in plan.models:
        if spec.experiment == "leaky":
            assert spec.lag == 0.0 and spec.split["kind"] == "leaky_random"
            continue
        parts = make_splits([i for i in items if i["subject"] in spec.subjects], spec.split)
        test_runs = set(spec.split["test_runs"])
        assert not set(spec.split["validate_runs"]) & test_runs
        assert {i["run"] for i in parts["train"]}.isdisjoint(test_runs)
        assert every_class(parts["test"])
    unseen = plan.of("unseen")[0]
    names = [t.name for t in unseen.test_sets]
    assert names == ["unseen_heldout", "unseen_all_runs", "seen_heldout"]
    train = make_splits(items, unseen.split)["train"]
    test = make_splits(items, unseen.test_sets[0].split)["test"]
    assert {i["subject"] for i in test} == set(unseen.held_out_subjects)
    # no movie moment of the unseen test set was seen in training, by any subject
    for a, b in _movie_intervals(test):
        assert not any(a < i["movie_time"] + 2.0 and i["movie_time"] < b for i in train)
    # protocol labels per test set, checked against what the training actually saw
    seen = make_splits(items, unseen.test_sets[1].split)["test"]
    assert [t.protocol for t in unseen.test_sets] == ["clean", "stimulus-seen", "clean"]
    assert any(a < i["movie_time"] + 2.0 and i["movie_time"] < b for a, b in _movie_intervals(seen) for i in train)
    assert {t.protocol for m in plan.of("leaky") for t in m.test_sets} == {"leaky"}
    # the unseen models rotate over the run folds: unseen_heldout covers more than one fold
    assert len({m.fold for m in plan.of("unseen")}) == 2
    assert all(m.split["gap"] == 20.0 for m in plan.models if m.experiment != "leaky")


def test_unseen_folds_rotate_or_cover_all():
    items = _items()
    for setting, count in (("rotate", 2), ("all", 8), (1, 2)):
        study = parse_study({"data": {"synthetic": {"subjects": 2}}, "experiments": ["unseen"],
                             "splits": {"unseen_run_fold": setting}}, "plan.json")
        models = plan_study(items, study, 5).of("unseen")
        assert len(models) == count, setting
        if setting == 1:
            assert {m.fold for m in models} == {"1"}


def every_class(items) -> bool:
    return {i["label"] for i in items} == set(range(5))


def test_validation_run_prefers_even_classes():
    items = [{"run": 1, "label": 0}] * 9 + [{"run": 2, "label": k} for k in range(5)]
    assert validation_run(items, [1, 2], 5) == 2


def test_selected_tokens():
    spec = ModelSpec("within/sub-01/fold-0", "within", ("01",), {}, 4.0, "0", (HeldOut("heldout", ("01",), {}),))
    assert selected("cnn", spec, None)
    assert selected("cnn", spec, ["within"]) and selected("linear", spec, ["within/sub-01"])
    assert not selected("linear", spec, ["cnn:within"]) and selected("cnn", spec, ["cnn:within"])
    assert not selected("cnn", spec, ["cross", "leaky"])
    assert not selected("cnn", spec.permuted(3), ["within"]) and selected("cnn", spec.permuted(3), ["permutations"])


def test_chance_interval_and_p_value():
    rng = np.random.default_rng(0)
    null = rng.normal(0.2, 0.02, size=MIN_EMPIRICAL)
    low, high, method = chance_interval(null)
    assert method == "quantile" and low < 0.2 < high
    low, high, method = chance_interval(null[:5])
    assert method == "normal" and low < high
    assert p_value(0.5, null) == pytest.approx(1 / (MIN_EMPIRICAL + 1))
    assert p_value(0.0, null) == 1.0
    assert np.isnan(chance_interval([])[0])


def test_unit_scores_pool_and_mean():
    rows = []
    for sub, correct in (("01", 10), ("02", 5)):
        for k in range(10):
            truth = CLASSES[k % 5]
            rows.append({"decoder": "cnn", "experiment": "within", "test_set": "heldout", "subject": sub,
                         "true_label": truth, "predicted_label": truth if k < correct else "FEAR"})
    scores = unit_scores(pd.DataFrame(rows), CLASSES).set_index("unit")["balanced_accuracy"]
    assert scores["01"] == 1.0
    assert scores[MEAN] == pytest.approx((1.0 + scores["02"]) / 2)
    assert 0 < scores[POOLED] < 1


# ---------------------------------------------------------------- end to end (planted signal)


def test_study_writes_every_output(planted_study):
    tmp, _, summary, lines = planted_study
    out = tmp / "results"
    for name in ("results.csv", "summary.json", "report.md", "permutations_linear.csv", "study.json"):
        assert (out / name).is_file(), name
    assert sorted(summary["figures"]) == [f"fig{k}" for k in range(1, 9)]
    for name in summary["figures"].values():
        assert (out / "figures" / name).stat().st_size > 5000
    report = (out / "report.md").read_text()
    assert report.count("![") == 8 and "LEAKY" in report
    results = pd.read_csv(out / "results.csv", dtype={"subject": str})
    # by default: the nilearn peer, and the linear models refitted on the audio-only observers' labels
    assert {"cnn", "linear", "linear_ao", "nilearn"} == set(results["decoder"])
    assert "| linear_ao |" in report
    assert set(results["experiment"]) == {"within", "cross", "unseen", "leaky"}
    assert {"heldout", "unseen_heldout", "unseen_all_runs", "seen_heldout", "leaky_random"} == set(results["test_set"])
    overall = results[(results["emotion"] == "ALL") & (results["subject"] == MEAN) & (results["decoder"] == "linear")]
    assert len(overall) == 6 and overall["chance_low"].notna().all() and overall["p_value"].notna().all()
    per_emotion = results[(results["emotion"] == "FEAR") & (results["model"] != "*")]
    assert per_emotion["recall_ci_low"].le(per_emotion["recall"]).all()
    # every CNN model went through the bundle: TensorBoard curves and eval outputs on disk
    model = out / "models" / "cnn" / "within" / "sub-01" / "fold-0"
    assert list((model / "train").glob("events.out.tfevents*")) and (model / "ckpt" / "model.pt").is_file()
    assert (model / "eval" / "heldout" / "predictions.csv").is_file()
    done = {decoder: n for decoder, n in summary["models_done"].items() if n}
    assert set(done) == {"cnn", "linear", "linear_ao", "nilearn"} and done["linear_ao"] > 0
    assert done["cnn"] == done["linear"] == done["nilearn"] == summary["models_planned"]


def test_rerun_skips_finished_models_and_only_selects(planted_study):
    tmp, config, _, _ = planted_study
    lines: list[str] = []
    run_study(config, out=tmp / "results", only="cross", log=lines.append)
    text = "\n".join(lines)
    assert "cnn [" not in text  # nothing retrained
    assert "cnn: 1 model(s) already done" in text


def test_cnn_reaches_the_oracle_on_planted_signal(planted_study):
    _, _, summary, _ = planted_study
    oracle = summary["oracle"]
    assert not oracle["null"]
    # the CNN's within-subject held-out balanced accuracy against the oracle's ceiling
    assert oracle["cnn"]["ratio_of_means"] >= 0.8, oracle


def test_shared_class_decoded_best_across_subjects(planted_study):
    _, _, summary, _ = planted_study
    shared = summary["oracle"]["class_shared"]
    most, least = max(shared, key=shared.get), min(shared, key=shared.get)
    # the clean set (unseen_heldout: no movie moment heard in training); its run fold rotates over
    # the subject folds. Measured with the 20 s default gap and 2 validation runs (tiny 60-volume
    # runs lose a quarter of their training volumes): LOVE last for both decoders, FEAR second
    # (CNN behind HAPPINESS, linear behind ANGER); before those edge rules FEAR was first
    for decoder in ("cnn", "linear"):
        ranking = summary["emotion_ranking"][f"{decoder}/unseen/unseen_heldout"]["order"]
        assert most in ranking[:2] and ranking[-1] == least, (decoder, ranking)


def test_html_report_renders_offline_with_the_markdown_numbers(planted_study, tmp_path):
    """``python -m monai_emotion report`` rebuilds both reports untrained; Chromium renders report.html offline."""
    from tests.test_report_html import check_study_report

    tmp, _, _, _ = planted_study
    measured = check_study_report(tmp / "results", tmp / "data", tmp_path)
    print(f"report.html: {measured['bytes'] / 1e6:.2f} MB in {measured['seconds']:.2f} s; {measured['screenshot']}")
    assert measured["bytes"] < 10e6


# ---------------------------------------------------------------- null data: chance and the leak


def test_null_clean_inside_chance_leaky_above(null_study):
    tmp, summary = null_study
    head = {(r["decoder"], r["experiment"], r["test_set"]): r for r in summary["headline"]}
    assert summary["oracle"]["null"]
    results = pd.read_csv(tmp / "results" / "results.csv", dtype={"subject": str})
    overall = results[(results["model"] == "*") & (results["emotion"] == "ALL")]
    assert set(overall["verdict"]) <= {"above", "inside", "below", "untested"}
    # no clean result is above; no above without p < 0.05 and enough permutations
    assert not len(overall[(overall["protocol"] == "clean") & (overall["verdict"] == "above")])
    above = overall[overall["verdict"] == "above"]
    assert (above["p_value"] < 0.05).all() and (above["p_adjusted"] <= 0.05).all()
    assert ((above["chance_test"] == "group") | (above["n_permutations"] >= 19)).all()
    linear = head["linear", "within", "heldout"]["mean"]
    assert linear["verdict"] == "inside" and linear["chance_test"] == "group", linear
    # 2 subjects x 2 CNN permutations: 9 combinations, p >= 1/9: the report says why untested
    cnn = head["cnn", "within", "heldout"]["mean"]
    assert cnn["verdict"] == "untested", cnn
    assert "untested (group null too coarse" in (tmp / "results" / "report.md").read_text()
    for decoder in ("linear", "cnn"):
        leaky = head[decoder, "leaky", "leaky_random"]["mean"]
        clean = head[decoder, "within", "heldout"]["mean"]
        assert leaky["balanced_accuracy"] > clean["chance_high"], (decoder, leaky, clean)
    leaky = head["linear", "leaky", "leaky_random"]["mean"]
    assert leaky["balanced_accuracy"] > leaky["chance_high"], leaky  # above its own interval too
    assert head["linear", "leaky", "leaky_random"]["protocol"] == "leaky"
    # block-bootstrap intervals and the collapse flags are in every unit's overall row
    pooled = overall[overall["subject"] == POOLED]
    assert (pooled["balanced_accuracy_ci_low"] <= pooled["balanced_accuracy"]).all()
    assert {"top_class_share", "flagged", "n_flagged"} <= set(results.columns)
    assert "## Warnings" in (tmp / "results" / "report.md").read_text()


def test_permuted_items_equal_the_bundles(planted_study):
    """The baseline's fast relabelling gives exactly the bundle's items under a permutation."""
    from monai_emotion.study.bundle import base_overrides, bundle_experiment, captured
    from monai_emotion.study.features import VolumeTable
    from monai_emotion.study.runner import resolve_data

    _, config, _, _ = planted_study
    study = load_study(config)
    data, annotations, _ = resolve_data(study, log=lambda line: None)
    base = {**base_overrides(study, data, annotations), "data#split": {"kind": "runs"}}
    with captured(None), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = bundle_experiment(study, base)
        permuted = bundle_experiment(study, {**base, "data#label_permutation": 5})
    table = VolumeTable(plain)
    ours = [(i["subject"], i["run"], i["frame"], i["label"]) for i in table.items(4.0, 5)]
    theirs = [(i["subject"], i["run"], i["frame"], i["label"]) for i in permuted["train"]]
    assert ours == theirs
    assert ours != [(i["subject"], i["run"], i["frame"], i["label"]) for i in plain["train"]]
