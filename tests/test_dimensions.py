"""Valence and arousal: targets from the observer files, the multi-task head, its metric and bundle."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from bundle_runs import CONFIGS, EVALUATE, TINY, TRAIN, train_overrides

from monai_emotion.data.datalist import labelled_items
from monai_emotion.data.dimensions import add_dimensions, derive_dimensions, dimension_targets
from monai_emotion.data.labels import circular_shift_labels, label_volumes
from monai_emotion.data.studyforrest import SEGMENT_STARTS
from monai_emotion.engine.losses import DimensionsBatch, MultiTaskLoss, SplitDimensionsd
from monai_emotion.engine.regression import dimension_report, pearson_r, r_squared
from monai_emotion.errors import ConfigError, DataError
from monai_emotion.networks import build_network

DIMENSIONS_JSON = str(CONFIGS / "dimensions.json")


def _hand_target(raw: Path, prefix: str, time: float, column: str, high: str, low: str) -> float:
    """The definition, computed from the CSV text alone: observers saying high minus those saying low."""
    files = sorted(raw.glob(f"{prefix}1o*.csv"))
    said_high = said_low = 0
    for path in files:
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if float(r["start"]) <= time < float(r["end"])]
        said_high += any(r[column] == high for r in rows)
        said_low += any(r[column] == low for r in rows)
    return (said_high - said_low) / len(files)


def test_targets_on_the_real_files_match_a_hand_computation(real_annotations):
    table = derive_dimensions(real_annotations)
    assert {"valence", "arousal"} <= set(table.columns) and len(table) == 3599
    values = table[["valence", "arousal"]].to_numpy()
    inside = ~table["outside_run"].to_numpy(dtype=bool)
    assert np.isfinite(values[inside]).all() and np.isnan(values[~inside]).all()
    assert values[inside].min() >= -1 and values[inside].max() <= 1
    assert values[inside].std(axis=0).min() > 0.3  # the dimensions vary over the movie
    rows = table[inside].sample(6, random_state=0)
    for _, row in rows.iterrows():
        # same label time as the class labels: segment start + 2 i + 1 - 4 s
        time = SEGMENT_STARTS[int(row["run"]) - 1] + 2 * int(row["volume"]) + 1 - 4
        assert row["label_time"] == pytest.approx(time)
        raw = real_annotations / "raw"
        assert row["valence"] == pytest.approx(_hand_target(raw, "av", time, "valence", "POS", "NEG"))
        assert row["arousal"] == pytest.approx(_hand_target(raw, "av", time, "arousal", "HIGH", "LOW"))
    ao = derive_dimensions(real_annotations, {"observers": "ao", "lag": 0})
    row = ao[ao["run"] == 2].iloc[100]
    assert row["valence"] == pytest.approx(_hand_target(real_annotations / "raw", "ao", row["label_time"],
                                                        "valence", "POS", "NEG"))


def test_items_carry_targets_only_when_asked_and_shift_with_the_labels(real_annotations):
    table = derive_dimensions(real_annotations)
    runs = [SimpleNamespace(subject="01", run=1, path="r1.nii.gz", n_volumes=451)]
    plain = labelled_items(runs, table)
    assert plain == labelled_items(runs, table.drop(columns=["valence", "arousal"]))  # default unchanged
    assert "valence" not in plain[0]
    items = labelled_items(runs, table, dimensions=("valence", "arousal"))
    assert [i["frame"] for i in items] == [i["frame"] for i in plain]
    by_volume = table[table["run"] == 1].set_index("volume")
    assert all(i["valence"] == by_volume.loc[i["frame"], "valence"] for i in items)
    shifted = circular_shift_labels(table, seed=3)
    moved = shifted[shifted["run"] == 1].reset_index(drop=True)
    source = table[table["run"] == 1].reset_index(drop=True)
    votes = [c for c in table.columns if c.startswith("votes_")]
    offsets = [k for k in range(451) if (np.roll(source[votes].to_numpy(), k, axis=0) == moved[votes].to_numpy()).all()]
    assert len(offsets) == 1  # the labels' offset; the targets moved by the same one
    assert np.allclose(np.roll(source["valence"].to_numpy(float), offsets[0]), moved["valence"].to_numpy(float),
                       equal_nan=True)
    with pytest.raises(DataError, match="no \\['dominance'\\]"):
        labelled_items(runs, table, dimensions=("dominance",))


def test_targets_count_each_observer_once_per_pole():
    from monai_emotion.data.annotations import Episode

    def ep(start: float, end: float, arousal: str, valence: str) -> Episode:
        return Episode(start, end, "FORREST", arousal, valence, "SELF", ("HAPPINESS",))

    observers = {"a": [ep(0, 10, "HIGH", "POS"), ep(0, 10, "HIGH", "NEG")], "b": [ep(5, 10, "LOW", "POS")],
                 "c": []}
    labels = label_volumes(observers, lag=0, segment_starts=(0.0,), volumes_per_run=(6,))
    out = dimension_targets(observers, labels)
    # volumes 0-1 (t = 1, 3 s): a says POS and NEG, HIGH; from volume 2 (t = 5 s) b adds POS and LOW
    assert out["valence"].tolist()[:5] == pytest.approx([0, 0, 1 / 3, 1 / 3, 1 / 3])
    assert out["arousal"].tolist()[:5] == pytest.approx([1 / 3, 1 / 3, 0, 0, 0])
    assert out["valence"].iloc[5] == 0  # t = 11 s: nobody
    assert add_dimensions(labels, observers).attrs["dimensions"] == ["valence", "arousal"]


def test_default_network_unchanged_and_multitask_output():
    torch.manual_seed(0)
    plain = build_network(num_classes=5, spatial_shape=(8, 8, 4), channels=[4, 8, 8], hidden=16)
    torch.manual_seed(0)
    multi = build_network(num_classes=5, spatial_shape=(8, 8, 4), channels=[4, 8, 8], hidden=16, dimensions=2)
    assert "dimensions" not in plain.definition and multi.definition["dimensions"] == 2
    extra = set(multi.state_dict()) - set(plain.state_dict())
    assert extra == {"dimension_head.weight", "dimension_head.bias"}
    x = torch.randn(3, 1, 8, 8, 4)
    plain.eval()
    multi.eval()
    out = multi(x)
    assert plain(x).shape == (3, 5) and out.shape == (3, 7)
    assert torch.equal(out[:, :5], plain(x))  # same seed, same layers: the logits are the classes-only ones
    scripted = torch.jit.script(multi)
    assert torch.allclose(scripted(x), out, atol=1e-6)
    with pytest.raises(ConfigError, match="dimensions must be >= 0"):
        build_network(num_classes=5, spatial_shape=(8, 8, 4), dimensions=-1)


def test_loss_batch_and_split():
    pred = torch.tensor([[2.0, 0.0, 0.0, 0.5, -0.5], [0.0, 1.0, 0.0, 0.0, 0.0]])  # K = 3, D = 2
    batch = {"image": torch.zeros(2, 1, 2, 2, 2), "label": torch.tensor([0, 1]),
             "valence": torch.tensor([1.0, 0.0], dtype=torch.float64), "arousal": torch.tensor([0.0, float("nan")])}
    _, target = DimensionsBatch()(batch, "cpu")
    assert target.dtype == torch.float32 and target.shape == (2, 3)
    loss = MultiTaskLoss(num_classes=3, dimension_weights=[2.0, 1.0])
    ce = torch.nn.functional.cross_entropy(pred[:, :3], torch.tensor([0, 1]))
    expected = ce + 2.0 * ((0.5 - 1.0) ** 2 + 0.0) / 2 + 1.0 * (0.5**2)  # the NaN arousal target is left out
    assert loss(pred, target).item() == pytest.approx(expected.item(), rel=1e-6)
    sample = SplitDimensionsd(num_classes=3)({"pred": pred[0], "label": target[0]})
    assert sample["pred"].shape == (3,) and sample["label"].item() == 0 and sample["label"].dtype == torch.long
    assert sample["dims_target"].tolist() == [1.0, 0.0] and sample["dims_pred"].tolist() == [0.5, -0.5]
    with pytest.raises(ConfigError, match="dimension_weights"):
        loss(pred[:, :4], target)


def test_report_r_r2_and_shift_chance():
    rng = np.random.default_rng(0)
    n = 120
    truth = np.convolve(rng.normal(size=n + 9), np.ones(10) / 10, "valid")  # autocorrelated, as targets are
    groups = np.repeat(["01/1", "01/2"], n // 2)
    pred = np.stack([truth + 0.3 * rng.normal(size=n), rng.normal(size=n)], axis=1)
    target = np.stack([truth, truth], axis=1)
    report = dimension_report(pred, target, groups, ["valence", "arousal"], n_shifts=200)
    good, bad = report["valence"], report["arousal"]
    assert good["r"] == pytest.approx(pearson_r(pred[:, 0], truth)) and good["r"] > 0.5
    assert good["r2"] == pytest.approx(r_squared(pred[:, 0], truth)) and good["p_value"] < 0.02
    assert bad["chance_low"] <= bad["r"] <= bad["chance_high"] and bad["p_value"] > 0.05
    assert abs(good["chance_r"]) < 0.1 and good["n"] == n


def _unit_predictions(signal: float, seed: int = 0) -> pd.DataFrame:
    """Held-out predictions of 3 subjects x 2 runs of autocorrelated targets (``signal``: how much they follow)."""

    rng = np.random.default_rng(seed)
    frames = []
    for subject in ("01", "02", "03"):
        for run in (1, 2):
            truth = np.convolve(rng.normal(size=69), np.ones(10) / 10, "valid") * 3
            frames.append(pd.DataFrame({"experiment": "within", "test_set": "heldout", "subject": subject,
                                        "run": run, "volume": np.arange(60), "true_valence": truth,
                                        "pred_valence": signal * truth + rng.normal(size=60) * 0.5}))
    return pd.concat(frames, ignore_index=True)


def test_study_table_scores_against_shift_chance():
    from monai_emotion.study.dimensions import score_dimensions
    from monai_emotion.study.scoring import MEAN, POOLED

    planted = score_dimensions(_unit_predictions(1.0), ["valence"], 200).set_index("subject")
    assert set(planted.index) == {"01", "02", "03", POOLED, MEAN}
    assert (planted["verdict"] == "above").all() and (planted["r"] > planted["chance_high"]).all()
    assert planted.loc[MEAN, "chance_test"] == "group" and planted.loc[POOLED, "n"] == 360
    assert planted.loc[MEAN, "r"] == pytest.approx(planted.loc[["01", "02", "03"], "r"].mean())
    null = score_dimensions(_unit_predictions(0.0, seed=1), ["valence"], 200).set_index("subject")
    assert (null["verdict"] != "above").all() and (null.loc[[MEAN, POOLED], "verdict"] == "inside").all()
    assert null.loc[MEAN, "chance_low"] <= null.loc[MEAN, "r"] <= null.loc[MEAN, "chance_high"]
    few = score_dimensions(_unit_predictions(1.0), ["valence"], 10)
    assert (few[few["subject"] != MEAN]["verdict"] == "untested").all()  # 10 shifts cannot reach p <= 0.05


def test_study_key_dimensions():
    from monai_emotion.study.config import DEFAULTS, parse_study

    assert DEFAULTS["dimensions"]["enabled"] is False
    study = parse_study({"data": {"synthetic": {"dimension_strength": 3.0}},
                         "dimensions": {"enabled": True, "alpha": 0.5, "names": ["arousal"]}}, "s.json")
    assert study.dimensions.names == ("arousal",) and study.dimensions.alpha == 0.5
    with pytest.raises(ConfigError, match="dimensions"):
        parse_study({"data": {"synthetic": {}}, "dimensions": {"names": ["dominance"]}}, "s.json")
    with pytest.raises(ConfigError, match="unknown study key 'dimensions.alfa'"):
        parse_study({"data": {"synthetic": {}}, "dimensions": {"alfa": 1}}, "s.json")


#: the bundle tests' world, with valence/arousal planted strongly enough for a few epochs
PLANTED = {**TINY, "dimension_strength": 5.0}
PLANTED_EPOCHS, NULL_EPOCHS = 8, 2  # a null model is at chance however long it trains


def _bundle(workflow: str, configs: list[str], overrides: dict, home: Path) -> None:
    """A bundle workflow in this process (MONAI's ``run``: no interpreter start-up per run)."""
    from monai.bundle import run

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MONAI_EMOTION_HOME", str(home))
        run(workflow, config_file=configs, logging_file=str(CONFIGS / "logging.conf"),
            meta_file=str(CONFIGS / "metadata.json"),
            **{k.replace("#", "::"): str(v) if isinstance(v, Path) else v for k, v in overrides.items()})


def _train(tmp_path_factory: pytest.TempPathFactory, name: str, epochs: int, **world: object) -> Path:
    from monai_emotion.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp(name)
    make_synthetic(root / "data", progress=False, **world)
    _bundle("training", [TRAIN, DIMENSIONS_JSON], train_overrides(root / "data", root, epochs=epochs, num_threads=1),
            root / "home")
    return root


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One multi-task model on planted data, trained and evaluated once for every test below."""
    root = _train(tmp_path_factory, "planted", PLANTED_EPOCHS, **PLANTED)
    overrides = {**train_overrides(root / "data", root, epochs=1), "eval_dir": root / "eval"}
    _bundle("evaluating", [TRAIN, DIMENSIONS_JSON, EVALUATE], overrides, root / "home")
    return root


def test_multitask_head_above_chance_on_planted_data(planted):
    truth = (planted / "data" / "ground_truth")
    assert (truth / "dimension_patterns.nii.gz").is_file() and (truth / "true_dimensions.tsv").is_file()
    report = json.loads((planted / "runs" / "val_metrics.json").read_text())
    assert report["balanced_accuracy"] > 0.2  # the classification head still learns
    final = json.loads((planted / "eval" / "metrics.json").read_text())  # test runs, best checkpoint
    assert "balanced_accuracy" in final and (planted / "eval" / "predictions.csv").is_file()
    # validation runs (last epoch): both dimensions; test runs (best checkpoint): valence, whose
    # truth spans [-1, 1] (arousal's spans [-0.5, 0.3]: at the edge of 2 held-out runs' chance)
    for dims, names in ((report["dimensions"], ("valence", "arousal")), (final["dimensions"], ("valence",))):
        for name in names:
            assert dims[name]["n"] > 30 and dims[name]["r"] > dims[name]["chance_high"], dims[name]
            assert dims[name]["p_value"] < 0.05
    events = list((planted / "runs").glob("events.out.tfevents.*"))
    assert any(b"val_dimensions_r_valence" in e.read_bytes() for e in events)


def test_inference_and_export_of_a_multitask_model(planted, tmp_path):

    from monai_emotion.contract import load_contract
    from monai_emotion.export import declared_metadata, export_bundle

    contract = load_contract(planted / "models")
    assert contract.dimensions == contract.dimension_names == ("valence", "arousal")
    out = tmp_path / "inference"
    _bundle("inferring", [str(CONFIGS / "inference.json")],
            {"dataset_dir": planted / "data", "ckpt_dir": planted / "models", "cache_dir": tmp_path / "cache",
             "output_dir": out}, planted / "home")
    events = pd.concat([pd.read_csv(f, sep="\t").assign(run=int(f.name.split("run-")[1][:2]))
                        for f in sorted(out.glob("*_events.tsv"))], ignore_index=True)
    assert events.loc[events["censored"] == 1, ["valence", "arousal"]].isna().all().all()  # n/a when censored
    events = events[events["censored"] == 0].copy()
    probs = events[[f"prob_{c}" for c in contract.classes]].to_numpy(float)
    assert list(events.columns[-4:]) == ["censored", "valence", "arousal", "run"]  # run: added here
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)  # the softmax saw the K logits only
    # the predicted valence follows the observers' (most volumes were training volumes: a sanity check)
    targets = derive_dimensions(planted / "data" / "annotations").set_index(["run", "volume"])
    events["volume"] = (events["onset"] / 2).round().astype(int)
    joined = events.join(targets["valence"].rename("target"), on=["run", "volume"]).dropna(subset=["target"])
    assert pearson_r(joined["valence"].to_numpy(), joined["target"].to_numpy()) > 0.5

    report = export_bundle(CONFIGS.parent, tmp_path / "export", ckpt_dir=planted / "models", onnx=False)
    assert all(c["ok"] for c in report["checks"].values()), report
    pred = json.loads((tmp_path / "export" / "configs" / "metadata.json").read_text())["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == 7 and pred["channel_def"]["5"] == "valence"
    # a classes-only model's contract: K channels and no dimension columns, as before
    plain = dataclasses.replace(contract, network={k: v for k, v in contract.network.items() if k != "dimensions"},
                                dimensions=())
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert declared_metadata(meta, plain)["network_data_format"]["outputs"]["pred"]["num_channels"] == 5
    assert plain.dimension_names == ()


def test_events_writer_columns_without_dimensions(tmp_path):
    from monai_emotion.engine.writers import EventsTSVWriter

    rows = [{"subject": "01", "run": 1, "volume": v, "movie_time": 2.0 * v, "censored": v == 1,
             "prob": [0.7, 0.3], "dims": [0.5, -0.25]} for v in range(3)]
    EventsTSVWriter(tmp_path / "plain", ["A", "B"]).write(rows)
    EventsTSVWriter(tmp_path / "dims", ["A", "B"], dimension_names=["valence", "arousal"]).write(rows)
    plain = (tmp_path / "plain").glob("*.tsv").__next__().read_text().splitlines()
    dims = (tmp_path / "dims").glob("*.tsv").__next__().read_text().splitlines()
    assert plain[0].split("\t") == ["onset", "duration", "trial_type", "prob_A", "prob_B", "movie_time", "censored"]
    assert dims[0].split("\t")[-2:] == ["valence", "arousal"]
    assert [d.split("\t")[:-2] for d in dims] == [p.split("\t") for p in plain]
    assert dims[1].split("\t")[-2:] == ["0.500000", "-0.250000"] and dims[2].split("\t")[-2:] == ["n/a", "n/a"]


def test_multitask_head_at_chance_on_null_data(tmp_path_factory):
    root = _train(tmp_path_factory, "null", NULL_EPOCHS, **PLANTED, null=True)
    dims = json.loads((root / "runs" / "val_metrics.json").read_text())["dimensions"]
    for name in ("valence", "arousal"):
        assert dims[name]["chance_low"] <= dims[name]["r"] <= dims[name]["chance_high"], dims[name]
        assert dims[name]["p_value"] > 0.05
