"""Temporal context: k consecutive volumes per sample, within the run, censored neighbours replaced.

The rule (``monai_emotion.data.context.context_frames``, docs/temporal_context.md): clamp at the
run's edges, replace a censored neighbour by the nearest uncensored volume (towards the centre
on a tie), keep the centre. Checked on the rule itself, on real cached files with a censored
spike (the CNN's loader and the linear baseline's matrix), and through a tiny k = 3 bundle
training, its contract and inference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from nifti_helpers import bold_like_series, save_run

from monai_emotion.data.cache import attach_cache, prepare_cache
from monai_emotion.data.cache.spec import PreprocessingSpec
from monai_emotion.data.context import context_frames
from monai_emotion.data.datasets import emotion_dataset
from monai_emotion.data.studyforrest import bold_path
from monai_emotion.errors import ConfigError
from monai_emotion.study.features import FeatureStore
from monai_emotion.transforms import LoadCachedFramed
from tests.bundle_runs import TINY, TRAIN, train_overrides

N = 40
SHAPE = (12, 12, 8)
SPIKE = 17


# ---- the rule


def test_windows_are_clamped_at_run_edges_and_k1_is_the_volume():
    assert context_frames(5, 1, N).tolist() == [5]
    assert context_frames(5, 1, N, censored=[5]).tolist() == [5]
    assert context_frames(0, 3, N).tolist() == [0, 0, 1]
    assert context_frames(1, 5, N).tolist() == [0, 0, 1, 2, 3]
    assert context_frames(N - 1, 5, N).tolist() == [N - 3, N - 2, N - 1, N - 1, N - 1]
    assert context_frames(10, 5, N).tolist() == [8, 9, 10, 11, 12]


def test_censored_neighbours_are_replaced_by_the_nearest_uncensored_volume():
    # a tie goes towards the centre: the window keeps to t's side of the censored volume
    assert context_frames(9, 3, N, censored=[10]).tolist() == [8, 9, 9]
    assert context_frames(11, 3, N, censored=[10]).tolist() == [11, 11, 12]
    assert context_frames(12, 5, N, censored=[10]).tolist() == [11, 11, 12, 13, 14]
    # two censored in a row: the nearest uncensored one, never a zero frame
    assert context_frames(10, 5, N, censored=[8, 9]).tolist() == [7, 10, 10, 11, 12]
    # clamped and censored at the edge: the edge volume is censored, its neighbour stands in
    assert context_frames(1, 5, N, censored=[0]).tolist() == [1, 1, 1, 2, 3]
    # the centre is the item's own volume even when censored (inference marks it)
    assert context_frames(10, 3, N, censored=[10]).tolist() == [9, 10, 11]


@pytest.mark.parametrize("k", [0, 2, -1, 1.5, True, "3"])
def test_k_must_be_an_odd_positive_integer(k):
    with pytest.raises(ConfigError, match="odd integer"):
        context_frames(3, k, N)


# ---- real cached files: a clean run and a run with a censored spike


def _series(seed: int = 0) -> np.ndarray:
    return bold_like_series(N, seed, SHAPE)


@pytest.fixture(scope="module")
def cached(tmp_path_factory) -> dict:
    """sub-01 runs 1 (clean) and 2 (one spike, censored in the cache), with items on every volume."""
    root = tmp_path_factory.mktemp("context") / "bids"
    save_run(root, "01", 1, _series(0))
    spiked = _series(1)
    spiked[..., SPIKE] *= 1.15
    save_run(root, "01", 2, spiked)
    index = prepare_cache(root, root.parent / "cache", PreprocessingSpec(downsample=1, mask_strategy="subject", margin=0),
                          expected_volumes=[N] * 8, progress=False)
    assert index[("01", 2)].censored == (SPIKE,)
    items = [{"image": str(bold_path(root, "01", run)), "frame": t, "label": t % 5, "subject": "01", "run": run}
             for run in (1, 2) for t in range(N)]
    items = attach_cache(items, index, drop_censored=False)
    frames = {run: np.load(index[("01", run)].path).astype(np.float32) for run in (1, 2)}
    return {"index": index, "items": items, "frames": frames}


def _item(cached: dict, run: int, t: int) -> dict:
    return next(i for i in cached["items"] if i["run"] == run and i["frame"] == t)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_k1_loads_exactly_the_cached_frame(cached, dtype):
    plain, one = LoadCachedFramed(dtype=dtype), LoadCachedFramed(dtype=dtype, context=1)
    for run, t in [(1, 0), (2, SPIKE - 1), (2, N - 1)]:
        item = _item(cached, run, t)
        a, b = plain(item)["image"], one(item)["image"]
        expected = torch.from_numpy(cached["frames"][run][t].astype(dtype))[None]
        assert a.shape == (1, *cached['frames'][run].shape[1:]) and torch.equal(a.as_tensor(), expected) and torch.equal(b, a)
        assert a.meta["frame"] == t and "context_frames" not in a.meta
    default = emotion_dataset(cached["items"][:6], cache_rate=1.0, track_meta=False)
    same = emotion_dataset(cached["items"][:6], cache_rate=1.0, track_meta=False, context=1)
    assert all(torch.equal(default[j]["image"], same[j]["image"]) for j in range(6))


def test_windows_on_cached_runs_stay_in_the_run_and_skip_censored_frames(cached):
    load = LoadCachedFramed(context=3)
    for run, t, window in [(1, 0, [0, 0, 1]), (1, N - 1, [N - 2, N - 1, N - 1]), (2, 0, [0, 0, 1]),
                           (2, SPIKE - 1, [SPIKE - 2, SPIKE - 1, SPIKE - 1]),
                           (2, SPIKE + 1, [SPIKE + 1, SPIKE + 1, SPIKE + 2])]:
        image = load(_item(cached, run, t))["image"]
        assert image.shape == (3, *cached['frames'][run].shape[1:]) and image.meta["context_frames"] == window
        assert torch.equal(image.as_tensor(), torch.from_numpy(cached["frames"][run][window]))
        assert all(channel.any() for channel in image)  # no censored (zero) frame is fed as data
    assert not cached["frames"][2][SPIKE].any()


def test_linear_windows_are_the_mean_of_the_cnn_windows(cached):
    store = FeatureStore([i["image"] for i in cached["items"]])
    picked = [_item(cached, 2, 0), _item(cached, 1, N - 1), _item(cached, 2, SPIKE + 1), _item(cached, 1, 12)]
    assert np.array_equal(store.matrix(picked), store.matrix(picked, context=1))
    for k in (3, 5):
        load = LoadCachedFramed(context=k)
        means = np.stack([load(i)["image"].numpy().mean(axis=0).reshape(-1)[store.columns] for i in picked])
        # run 2's first volume and run 1's last volume: the concatenated runs never mix
        np.testing.assert_allclose(store.matrix(picked, context=k), means, rtol=1e-5, atol=1e-6)
    streamed = FeatureStore([i["image"] for i in cached["items"]], max_ram_bytes=0)
    assert not streamed.in_ram
    np.testing.assert_allclose(streamed.matrix(picked, context=3), store.matrix(picked, context=3), rtol=1e-6)


def test_study_key_sets_k_for_the_bundle_and_keeps_k1_overrides():
    from monai_emotion.study.settings import TrainingSettings

    assert TrainingSettings.from_dict({"epochs": 2}).to_dict() == {"epochs": 2}
    three = TrainingSettings.from_dict({"epochs": 2, "temporal_context": 3, "batch_size": 4})
    assert three.temporal_context == 3 and three.to_dict() == {"epochs": 2, "batch_size": 4, "temporal_context": 3}
    with pytest.raises(ConfigError, match="odd integer"):
        TrainingSettings.from_dict({"temporal_context": 4})


# ---- a tiny k = 3 bundle: training, contract, inference


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    from monai_emotion.data.synthetic import make_synthetic
    from monai_emotion.study.bundle import run_workflow

    root = tmp_path_factory.mktemp("context_bundle")
    data = root / "data"
    make_synthetic(data, progress=False, **{**TINY, "volumes_per_run": 30})
    out = root / "k3"
    overrides = {**train_overrides(data, out, 1), "bundle_root": out,
                 "data#split": {"kind": "runs", "validate_runs": [7], "test_runs": [8], "gap": 0}}
    overrides = {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()}
    run_workflow([TRAIN], {**overrides, "temporal_context": 3})
    return {"data": data, "out": out, "overrides": overrides}


def test_evaluation_and_export_take_k_from_the_contract(trained):
    """Evaluating by hand without ``--temporal_context`` loads the k = 3 model; export declares 3 channels."""
    from monai_emotion.contract import load_contract
    from monai_emotion.export import declared_metadata
    from monai_emotion.study.bundle import run_workflow
    from tests.bundle_runs import CONFIGS

    run_workflow([TRAIN, str(CONFIGS / "evaluate.json")], trained["overrides"])  # no temporal_context given
    assert json.loads((trained["out"] / "eval" / "metrics.json").read_text())["n"] > 0
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    declared = declared_metadata(metadata, load_contract(trained["out"] / "models"))
    assert declared["network_data_format"]["inputs"]["image"]["num_channels"] == 3


def test_k3_training_records_k_in_its_contract(trained):
    from monai_emotion.contract import load_contract, network_from_contract

    models = trained["out"] / "models"
    contract = load_contract(models)
    assert contract.temporal_context == 3 and contract.network["in_channels"] == 3
    assert json.loads((models / "contract.json").read_text())["temporal_context"] == 3
    net = network_from_contract(models)
    assert net(torch.zeros(2, 3, *contract.spatial_shape)).shape == (2, 5)
    metrics = json.loads((trained["out"] / "runs" / "val_metrics.json").read_text())
    assert metrics["epoch"] == 1


def test_inference_builds_the_contract_windows(trained, tmp_path):
    from monai.bundle import ConfigParser

    from monai_emotion.contract import load_contract
    from tests.bundle_runs import CONFIGS

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"ckpt_dir": str(trained["out"] / "models"), "dataset_dir": str(trained["data"]),
                   "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out"), "subjects": ["01"]})
    dataset = parser.get_parsed_content("dataset")
    shape = load_contract(trained["out"] / "models").spatial_shape
    first, middle = dataset[0], dataset[10]
    assert first["image"].shape == middle["image"].shape == (3, *shape)
    # the first volume's window is clamped at the run's start: its first two channels are volume 0
    assert torch.equal(first["image"][0], first["image"][1])
    assert torch.equal(middle["image"][0], dataset[9]["image"][1]) and torch.equal(middle["image"][2], dataset[11]["image"][1])


def test_contract_refuses_a_context_that_is_not_the_network_input():
    from monai_emotion.contract import _temporal_context

    assert _temporal_context({"in_channels": 3}, None) == 3
    with pytest.raises(ConfigError, match="input channel"):
        _temporal_context({"in_channels": 1}, 3)
