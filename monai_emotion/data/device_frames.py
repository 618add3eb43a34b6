"""Device-resident frames: an experiment's frames held on the device as float16, batched there.

The loader path reads every sample from the RAM or memory-mapped cache, collates it on the
host and copies each batch to the device. With the bundle key ``device_frames`` on, each
split's frames are copied once from the cache's ``.npy`` files into one float16 tensor on the
device (``(frames, X, Y, Z)``, every labelled frame once), and a batch is an index gather on the
device followed by the cast to float32 there. :class:`DeviceFrames` is a ``DataLoader`` whose
batches are formed from its own ``batch_sampler``: the same sampler the loader path uses (the
config's ``DistributedSampler`` with ``seed``, given ``set_epoch`` by MONAI's workflow), so the
order, the tensors and the other keys of every batch (collated by MONAI's
``list_data_collate``) are the loader path's, and the engines and handlers are unchanged.
Under DDP the dataset is partitioned per rank as before; each rank holds its own share.

What it does not do: per-sample transforms. With ``augment > 0`` (or any extra transform) or
``temporal_context > 1`` ``"auto"`` stays off and a forced ``true`` is refused
(:class:`~monai_emotion.errors.ConfigError`): the augmentations are host-side MONAI transforms.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import list_data_collate
from monai.transforms import Compose, EnsureTyped
from torch.utils.data import DataLoader, Dataset, Sampler

from monai_emotion.data.datasets import ToFloat32, emotion_dataloader
from monai_emotion.errors import CacheError, ConfigError, DataError
from monai_emotion.transforms import LoadCachedFramed, open_cached_run

__all__ = ["DeviceFrames", "use_device_frames", "frame_loader", "frames_nbytes", "ROOM_FRACTION"]

logger = logging.getLogger(__name__)

#: ``"auto"`` holds the frames on a CUDA device when they take at most this share of its free memory
ROOM_FRACTION = 0.5
_SETTINGS = {"auto": "auto", "true": True, "false": False, True: True, False: False}


def _setting(value: Any) -> str | bool:
    key = value.strip().lower() if isinstance(value, str) else value
    if isinstance(key, (bool, str)) and key in _SETTINGS:
        return _SETTINGS[key]
    raise ConfigError(f"device_frames={value!r} is not 'auto', true or false", where="config 'device_frames'",
                      fix="give \"auto\" (on when a CUDA device has room), true or false")


def frames_nbytes(n_frames: int, spatial_shape: Sequence[int], context: int = 1) -> int:
    """Bytes of ``n_frames`` float16 frames of ``spatial_shape`` (``context`` volumes each, at most)."""
    return int(n_frames) * int(context) * math.prod(int(s) for s in spatial_shape) * 2


def use_device_frames(
    setting: Any,
    device: torch.device | str,
    experiment: Mapping[str, Any],
    augment: float = 0.0,
    context: int = 1,
) -> bool:
    """Resolve the bundle key ``device_frames`` to on or off for this experiment.

    Parameters
    ----------
    setting
        ``"auto"``: on when ``device`` is a CUDA device whose free memory holds the training
        and validation frames as float16 within :data:`ROOM_FRACTION`, and nothing per-sample
        is asked for; ``true`` / ``false`` force it (``"true"`` / ``"false"`` as text too).
    device
        The bundle's ``device``.
    experiment
        What ``prepare_experiment`` returned (``train``, ``validate``, ``spatial_shape``).
    augment, context
        The bundle's ``augment`` and ``temporal_context``: either above its default rules the
        device path out.

    Raises
    ------
    ConfigError
        ``setting`` is forced on together with augmentation or a temporal context.
    """
    choice = _setting(setting)
    per_sample = {"augment": float(augment) > 0, "temporal_context": int(context) > 1}
    asked = [name for name, on in per_sample.items() if on]
    if choice is True and asked:
        raise ConfigError(
            f"device_frames is true but {' and '.join(asked)} is set: device-resident frames are batched "
            "by index on the device, without per-sample transforms",
            where="config 'device_frames'",
            fix=f"set device_frames to false (or \"auto\"), or set {' and '.join(asked)} to its default",
        )
    if choice != "auto":
        return bool(choice)
    device = torch.device(device)
    if asked or device.type != "cuda" or not torch.cuda.is_available():
        return False
    n = len(experiment["train"]) + len(experiment["validate"])
    free, _total = torch.cuda.mem_get_info(device)
    return frames_nbytes(n, experiment["spatial_shape"], context) <= ROOM_FRACTION * free


def _pipeline(dataset: Dataset) -> LoadCachedFramed:
    """The dataset's frame loader, after checking nothing else per-sample is in its chain."""
    transform = getattr(dataset, "transform", None)
    steps = list(transform.transforms) if isinstance(transform, Compose) else [transform]
    loaders = [t for t in steps if isinstance(t, LoadCachedFramed)]
    others = [type(t).__name__ for t in steps if not isinstance(t, (LoadCachedFramed, ToFloat32, EnsureTyped))]
    if len(loaders) != 1 or others:
        raise ConfigError(
            f"device frames cannot apply this dataset's transforms ({others or 'no LoadCachedFramed'})",
            where="config 'device_frames'",
            fix="set device_frames to false for a dataset with augmentations or extra transforms",
        )
    if getattr(loaders[0], "context", 1) != 1:
        raise ConfigError(
            f"device frames hold one volume per sample; temporal context {loaders[0].context} asked",
            where="config 'device_frames'", fix="set device_frames to false, or temporal_context to 1",
        )
    return loaders[0]


class _Positions(Dataset):
    """A map-style dataset of item positions: all ``DataLoader`` needs to size its samplers."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


class DeviceFrames(DataLoader):
    """Batches of a cached-frame dataset, formed by index from frames held on ``device``.

    Parameters
    ----------
    dataset
        A dataset from :func:`~monai_emotion.data.datasets.emotion_dataset` (its items, after
        any DDP partition, are read from ``dataset.data``; ``cache_rate=0`` avoids a RAM copy).
    batch_size, sampler, shuffle, drop_last
        As the loader path's ``DataLoader``; the ``batch_sampler`` they make orders the batches.
    device
        Where the frames live and batches are formed.

    Notes
    -----
    A batch holds ``image`` as float32 ``(B, 1, X, Y, Z)`` on ``device``; every other item key is
    collated by ``list_data_collate`` exactly as the loader does (tensors on the host).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 1,
        *,
        device: torch.device | str = "cpu",
        sampler: Sampler | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
    ) -> None:
        items = list(getattr(dataset, "data", []))
        super().__init__(_Positions(len(items)), batch_size=batch_size, sampler=sampler, shuffle=shuffle,
                         drop_last=drop_last, num_workers=0)
        loader = _pipeline(dataset)
        self.image_key = next(iter(loader.keys))
        self.frame_key = loader.frame_key
        self.device = torch.device(device)
        self.frames, self.rows = self._load(items)
        self.meta = [{k: v for k, v in item.items() if k != self.image_key} for item in items]
        logger.info("device frames: %d frames (%.3f GB float16) on %s", self.frames.shape[0],
                    self.frames.numel() * 2 / 1e9, self.device)

    def _load(self, items: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every labelled frame once, run by run, into one float16 tensor on the device."""
        wanted: dict[str, list[int]] = {}
        for item in items:
            wanted.setdefault(str(item[self.image_key]), []).append(int(item[self.frame_key]))
        runs = {path: sorted(set(ts)) for path, ts in wanted.items()}
        # the loader's own opening (sidecar present, frames of the sidecar's shape), once per run
        mapped_runs = {path: open_cached_run(path)[0] for path in runs}
        grids = {tuple(m.shape[1:]) for m in mapped_runs.values()}
        if len(grids) > 1:
            raise CacheError(f"cached runs of one split have different grids {sorted(grids)}", next(iter(runs)),
                             fix="rebuild the cache: one grid per model")
        grid = grids.pop() if grids else (0, 0, 0)
        frames = torch.empty((sum(len(ts) for ts in runs.values()), *grid), dtype=torch.float16, device=self.device)
        row_of: dict[tuple[str, int], int] = {}
        start = 0
        for path, ts in runs.items():
            mapped = mapped_runs[path]
            if ts[-1] >= mapped.shape[0]:
                raise DataError(f"frame {ts[-1]} is beyond the cached run's {mapped.shape[0]} volumes", path,
                                fix="rebuild the datalist from the run's real length")
            chunk = torch.from_numpy(np.ascontiguousarray(mapped[ts])).to(torch.float16)
            frames[start:start + len(ts)].copy_(chunk)
            row_of.update({(path, t): start + i for i, t in enumerate(ts)})
            start += len(ts)
        rows = [row_of[(str(item[self.image_key]), int(item[self.frame_key]))] for item in items]
        return frames, torch.as_tensor(rows, dtype=torch.long, device=self.device)

    def batch(self, positions: Sequence[int]) -> dict[str, Any]:
        """The batch of the items at ``positions``: the loader's keys, ``image`` gathered on the device."""
        out = list_data_collate([self.meta[i] for i in positions])
        index = self.rows[torch.as_tensor(positions, dtype=torch.long, device=self.device)]
        out[self.image_key] = self.frames.index_select(0, index).unsqueeze(1).float()
        return out

    def __iter__(self) -> Any:
        for positions in self.batch_sampler:
            yield self.batch(positions)


def frame_loader(
    dataset: Dataset,
    batch_size: int = 8,
    *,
    on_device: bool = False,
    setting: Any = None,
    device: torch.device | str = "cpu",
    sampler: Sampler | None = None,
    shuffle: bool = False,
    drop_last: bool = False,
    **kwargs: Any,
) -> DataLoader:
    """The bundle's loader: :class:`DeviceFrames` when ``on_device``, else the loader path.

    ``on_device`` is :func:`use_device_frames`'s answer; off, this is
    :func:`~monai_emotion.data.datasets.emotion_dataloader` with the same arguments. When
    ``setting`` (the bundle's ``device_frames``) is ``"auto"`` and the dataset asks for
    something per-sample that the resolution did not see (a temporal context, an extra
    transform), the loader path is used, with a warning; forced on, it is an error.
    """
    if on_device and setting is not None and _setting(setting) == "auto":
        try:
            _pipeline(dataset)
        except ConfigError as exc:
            logger.warning("device_frames auto: the loader path instead (%s)", exc)
            on_device = False
    if on_device:
        return DeviceFrames(dataset, batch_size, device=device, sampler=sampler, shuffle=shuffle,
                            drop_last=drop_last)
    if sampler is not None:
        kwargs["sampler"] = sampler
    return emotion_dataloader(dataset, batch_size, shuffle=shuffle, drop_last=drop_last, **kwargs)
