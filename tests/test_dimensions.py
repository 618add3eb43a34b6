"""Valence and arousal: targets from the observer files, the multi-task head, its metric and bundle."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from bundle_runs import CONFIGS, EVALUATE, TINY, TRAIN, run_bundle, train_overrides

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


def _train(tmp_path_factory: pytest.TempPathFactory, name: str, **world: object) -> Path:
    from monai_emotion.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp(name)
    data = root / "data"
    make_synthetic(data, progress=False, **{**TINY, "dimension_strength": 3.0, **world})
    overrides = train_overrides(data, root, epochs=8, num_threads=1)
    done = run_bundle("training", [TRAIN, DIMENSIONS_JSON], overrides, root / "home", timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory, "planted")


def test_multitask_head_above_chance_on_planted_data(planted):
    truth = (planted / "data" / "ground_truth")
    assert (truth / "dimension_patterns.nii.gz").is_file() and (truth / "true_dimensions.tsv").is_file()
    report = json.loads((planted / "runs" / "val_metrics.json").read_text())
    dims = report["dimensions"]
    assert report["balanced_accuracy"] > 0.2  # the classification head still learns
    for name in ("valence", "arousal"):
        assert dims[name]["n"] > 30 and dims[name]["r"] > dims[name]["chance_high"], dims[name]
        assert dims[name]["p_value"] < 0.05
    overrides = {**train_overrides(planted / "data", planted, epochs=1), "eval_dir": planted / "eval"}
    done = run_bundle("evaluating", [TRAIN, DIMENSIONS_JSON, EVALUATE], overrides, planted / "home", timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads((planted / "eval" / "metrics.json").read_text())
    assert final["dimensions"]["valence"]["r"] > final["dimensions"]["valence"]["chance_high"]
    assert "balanced_accuracy" in final and (planted / "eval" / "predictions.csv").is_file()
    events = list((planted / "runs").glob("events.out.tfevents.*"))
    assert any(b"val_dimensions_r_valence" in e.read_bytes() for e in events)


def test_multitask_head_at_chance_on_null_data(tmp_path_factory):
    root = _train(tmp_path_factory, "null", null=True)
    dims = json.loads((root / "runs" / "val_metrics.json").read_text())["dimensions"]
    for name in ("valence", "arousal"):
        assert dims[name]["chance_low"] <= dims[name]["r"] <= dims[name]["chance_high"], dims[name]
        assert dims[name]["p_value"] > 0.05
