"""Device-resident frames (monai_emotion/data/device_frames.py) against the loader path, on CPU.

Forced on, the device path must give the loader path's batches (same order, same tensors,
same other keys) epoch after epoch, under a DDP partition too, and the same validation
metrics after a short training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bundle_runs import CONFIGS, TRAIN, tiny_training, train_parser

from monai_emotion.data.device_frames import (
    DeviceFrames,
    frame_loader,
    frames_nbytes,
    use_device_frames,
)
from monai_emotion.errors import ConfigError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """One synthetic subject on a coarse grid and the overrides that train on it."""
    return tiny_training(tmp_path_factory.mktemp("device_frames"))


def _parser(tiny: dict, monkeypatch: pytest.MonkeyPatch, **overrides: object):
    return train_parser(tiny, monkeypatch, **overrides)


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("ranks", [None, (1, 2)], ids=["one-process", "rank-1-of-2"])
def test_batches_equal_the_loader_path(tiny, monkeypatch, ranks):
    extra: dict[str, object] = {}
    if ranks:  # what multi_gpu_train.json sets: the items partitioned before anything is held
        extra = {"train#dataset#rank": ranks[0], "train#dataset#world_size": ranks[1],
                 "train#dataset#even_divisible": True}
    host = _parser(tiny, monkeypatch, device_frames=False, **extra)
    device = _parser(tiny, monkeypatch, device_frames=True, **extra)
    for split in ("train", "validate"):
        loader = host.get_parsed_content(f"{split}#dataloader")
        frames = device.get_parsed_content(f"{split}#dataloader")
        assert isinstance(frames, DeviceFrames) and not isinstance(loader, DeviceFrames)
        assert len(frames) == len(loader)
        for epoch in (1, 2):  # MONAI's workflow calls set_epoch on a DataLoader's DistributedSampler
            for dl in (loader, frames):
                if split == "train":
                    dl.sampler.set_epoch(epoch)
            pairs = list(zip(loader, frames, strict=True))
            assert pairs
            for a, b in pairs:
                _same(a, b)
            if split == "train":
                assert pairs[0][0]["image"].shape[1:2] == (1,)


def _val_metrics(root: Path) -> dict:
    return json.loads((root / "runs" / "val_metrics.json").read_text())


def test_training_metrics_equal_the_loader_path(tiny, tmp_path, monkeypatch):
    from monai.bundle import run

    monkeypatch.setenv("MONAI_EMOTION_HOME", str(tmp_path / "home"))
    results = {}
    for on in (False, True):
        root = tmp_path / str(on)
        overrides = {**tiny["overrides"], "epochs": 2, "device_frames": on,
                     "output_dir": str(root / "runs"), "ckpt_dir": str(root / "models")}
        run("training", config_file=TRAIN, logging_file=str(CONFIGS / "logging.conf"),
            **{k.replace("#", "::"): v for k, v in overrides.items()})
        results[on] = _val_metrics(root)
    assert results[True]["epoch"] == 2
    assert results[True] == results[False]


def test_auto_and_refusals():
    experiment = {"train": [{}] * 10, "validate": [{}] * 5, "spatial_shape": [4, 5, 6]}
    assert frames_nbytes(15, [4, 5, 6]) == 15 * 120 * 2
    assert use_device_frames("auto", "cpu", experiment) is False
    assert use_device_frames("true", "cpu", experiment) is True
    assert use_device_frames(False, "cpu", experiment) is False
    assert use_device_frames("auto", "cpu", experiment, augment=0.5) is False
    with pytest.raises(ConfigError, match="augment"):
        use_device_frames(True, "cpu", experiment, augment=0.5)
    with pytest.raises(ConfigError, match="temporal_context"):
        use_device_frames(True, "cpu", experiment, context=3)
    with pytest.raises(ConfigError, match="not 'auto'"):
        use_device_frames("yes", "cpu", experiment)


def test_forced_on_with_augmentation_is_refused(tiny, monkeypatch):
    parser = _parser(tiny, monkeypatch, device_frames=True, augment=0.5)
    with pytest.raises(Exception, match="augment") as info:
        parser.get_parsed_content("train#dataloader")
    assert "device_frames" in str(info.value)
    # a dataset with per-sample transforms the resolution did not see: "auto" falls back, true refuses
    augmented = _parser(tiny, monkeypatch, device_frames=False, augment=0.5).get_parsed_content("train#dataset")
    assert not isinstance(frame_loader(augmented, 8, on_device=True, setting="auto"), DeviceFrames)
    with pytest.raises(ConfigError, match="transforms"):
        frame_loader(augmented, 8, on_device=True, setting=True)
