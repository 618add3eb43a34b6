"""Datasets and transforms over the cache: shapes, labels in order, values, DDP partitioning."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset, MetaTensor
from monai.transforms import Compose
from nifti_helpers import SHAPE, T, save_run

from monai_emotion.data.cache import prepare_cache
from monai_emotion.data.datasets import emotion_dataloader, emotion_dataset
from monai_emotion.errors import CacheError, DataError
from monai_emotion.transforms import LoadCachedFramed, LoadNiftiFramed, augmentations


def write_run(root: Path, subject: str, run: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    data = np.zeros((*SHAPE, T), dtype=np.float32)
    data[3:17, 4:20, 2:8] = 1000 + 20 * rng.standard_normal((14, 16, 6, T))
    return save_run(root, subject, run, data)


@pytest.fixture(scope="module")
def cached(tmp_path_factory) -> tuple[Path, object, list[dict]]:
    tmp = tmp_path_factory.mktemp("ds")
    root = tmp / "bids"
    paths = [write_run(root, "01", run, seed=run) for run in (1, 2)]
    hashes = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    index = prepare_cache(
        root, tmp / "cache", mask_volumes=10, mask_options={"opening": 1}, downsample=1, progress=False
    )
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths] == hashes
    rng = np.random.default_rng(0)
    items = []
    for i in range(300):  # a few hundred items in a shuffled order, labels 0..4
        run = int(rng.integers(1, 3))
        frame = int(rng.integers(0, T))
        items.append(
            {
                "image": str(paths[run - 1]),
                "frame": frame,
                "label": i % 5,
                "subject": "01",
                "run": run,
            }
        )
    return root, index, items


@pytest.mark.parametrize("cache_rate", [0.0, 1.0])
def test_dataset_yields_frames_and_labels_in_order(cached, cache_rate: float) -> None:
    _root, index, items = cached
    ds = emotion_dataset(items, cache=index, cache_rate=cache_rate)
    assert isinstance(ds, CacheDataset) == (cache_rate > 0)
    loader = emotion_dataloader(ds, batch_size=16, num_workers=0)
    frame_shape = index[("01", 1)].frame_shape
    labels, seen = [], 0
    for batch in loader:
        image = batch["image"]
        assert image.dtype == torch.float32 and image.shape[1:] == (1, *frame_shape)
        for j in range(image.shape[0]):
            item = items[seen + j]
            expected = index[("01", item["run"])].open()[item["frame"]].astype(np.float32)
            np.testing.assert_array_equal(image[j, 0].numpy(), expected)
        labels += batch["label"].tolist()
        seen += image.shape[0]
    assert labels == [it["label"] for it in items]


def test_meta_tensor_carries_cropped_affine_and_source(cached) -> None:
    _root, index, items = cached
    sample = emotion_dataset(items[:3], cache=index, cache_rate=0)[0]
    image = sample["image"]
    assert isinstance(image, MetaTensor) and image.shape == (
        1,
        *index[("01", items[0]["run"])].frame_shape,
    )
    np.testing.assert_allclose(
        image.affine.numpy(), np.asarray(index[("01", items[0]["run"])].affine)
    )
    assert sample["source_image"] == items[0]["image"] and sample["label"] == items[0]["label"]


def test_partition_per_rank_is_disjoint_and_even(cached) -> None:
    _root, index, items = cached
    # a position tag: several items share (image, frame, label), so shards are compared by it
    tagged = [{**item, "position": i} for i, item in enumerate(items[:101])]

    def shards(**kwargs) -> list[list[dict]]:
        return [
            emotion_dataset(tagged, cache=index, cache_rate=0, rank=r, world_size=4, **kwargs).data
            for r in range(4)
        ]

    parts = shards()
    assert {len(p) for p in parts} == {26}  # even_divisible pads to 4 x 26
    frames = [(d["image"], d["frame"], d["label"]) for p in parts for d in p]
    assert set(frames) >= {
        (d["image"], d["frame"], d["label"])
        for d in emotion_dataset(items[:101], cache=index, cache_rate=0).data
    }
    # every item is on some rank; only the 3 padding items are on two
    counts = np.bincount([d["position"] for p in parts for d in p], minlength=101)
    assert counts.min() == 1 and counts.max() == 2 and (counts == 2).sum() == 4 * 26 - 101
    val = [{d["position"] for d in p} for p in shards(even_divisible=False)]
    assert sum(len(p) for p in val) == 101
    for a in range(4):
        for b in range(a + 1, 4):
            assert not val[a] & val[b], f"ranks {a} and {b} share items {sorted(val[a] & val[b])}"
    assert set().union(*val) == set(range(101))


def test_augmentation_chain_and_loader_pickling(cached) -> None:
    _root, index, items = cached
    assert augmentations(prob=0.0) == []
    ds = emotion_dataset(items[:4], cache=index, cache_rate=1.0, augment=1.0)
    out = ds[0]["image"]
    assert (
        out.shape == (1, *index[("01", items[0]["run"])].frame_shape) and torch.isfinite(out).all()
    )
    plain = emotion_dataset(items[:4], cache=index, cache_rate=1.0, augment=0.0)[0]["image"]
    assert plain.shape == out.shape and not torch.allclose(out, plain), "augment=1.0 changed nothing"
    assert not torch.equal(ds[0]["image"], out), "a second draw of the same item repeats the first"
    loader = LoadCachedFramed("image")
    loader({"image": index[("01", 1)].path, "frame": 0})
    clone = pickle.loads(pickle.dumps(loader))  # spawned workers get a loader without open maps
    np.testing.assert_array_equal(
        clone({"image": index[("01", 1)].path, "frame": 3})["image"][0].numpy(),
        index[("01", 1)].open()[3].astype(np.float32),
    )
    workers = emotion_dataloader(
        emotion_dataset(items[:32], cache=index, cache_rate=0), batch_size=8, num_workers=2
    )
    assert sum(b["image"].shape[0] for b in workers) == 32


def test_loader_errors_and_nifti_frames(cached) -> None:
    root, index, items = cached
    with pytest.raises(CacheError, match="not in the cache"):
        emotion_dataset([{**items[0], "image": str(root / "nowhere.nii.gz")}], cache=index)
    with pytest.raises(DataError, match="shorter than its labels"):
        emotion_dataset([{**items[0], "frame": T + 5}], cache=index)
    with pytest.raises(DataError, match="not a cached run"):
        LoadCachedFramed()({"image": items[0]["image"], "frame": 0})
    with pytest.raises(RuntimeError) as err:  # MONAI's Compose wraps, keeping ours as the cause
        Compose([LoadCachedFramed()])({"image": items[0]["image"], "frame": 0})
    assert isinstance(err.value.__cause__, DataError)
    raw = LoadNiftiFramed()({"image": items[0]["image"], "frame": 7})["image"]
    expected = nib.load(items[0]["image"]).get_fdata(dtype=np.float32)[..., 7]
    np.testing.assert_array_equal(raw[0].numpy(), expected)
