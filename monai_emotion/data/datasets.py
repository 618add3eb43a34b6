"""The one dataset function the bundle configs call, and the DataLoader settings that go with it.

Two regimes, chosen by ``cache_rate``:

- ``cache_rate > 0``: MONAI ``CacheDataset``; the loaded frames (float16 by default, half the
  RAM of float32, cast back to float32 per sample) live in RAM. Pair it with
  ``ThreadDataLoader(num_workers=0)``: the data are already in this process, so worker
  processes would only add pickling.
- ``cache_rate == 0``: ``monai.data.Dataset`` streaming from the memory-mapped cache; the
  page cache is the RAM cache and frames too many for RAM come from disk. Pair it with a
  ``DataLoader`` with 2-4 workers, ``persistent_workers=True``, ``prefetch_factor=4`` and
  ``pin_memory`` on CUDA (:func:`emotion_dataloader` does this).

Under DDP (``torchrun``) pass ``rank`` and ``world_size``: the items are partitioned *before*
anything is cached (``monai.data.partition_dataset``, ``even_divisible=True`` for training so
every rank runs the same number of steps), so each process holds only its share. A
partitioned dataset must then be read with a plain (shuffling) sampler, not a
``DistributedSampler``, which would split it a second time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset, ThreadDataLoader, partition_dataset
from monai.transforms import Compose, EnsureTyped

from monai_emotion.data.cache import CacheIndex, attach_cache
from monai_emotion.errors import ConfigError
from monai_emotion.transforms import LoadCachedFramed, augmentations

__all__ = ["emotion_dataset", "emotion_dataloader", "ToFloat32"]


class ToFloat32:
    """Cast a key's tensor to float32.

    Deliberately not a MONAI ``Transform``: ``CacheDataset`` stops caching at the first
    callable that is not one, so the float16 frame is what stays in RAM.
    """

    def __init__(self, keys: str | Sequence[str] = "image"):
        self.keys = [keys] if isinstance(keys, str) else list(keys)

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        for key in self.keys:
            d[key] = d[key].float()
        return d


def _as_list(transform: Callable | Sequence[Callable] | None) -> list:
    if transform is None:
        return []
    if isinstance(transform, Compose):
        return list(transform.transforms)
    if callable(transform):
        return [transform]
    return list(transform)


def emotion_dataset(
    items: Iterable[Mapping[str, Any]],
    transform: Callable | Sequence[Callable] | None = None,
    *,
    cache: CacheIndex | str | os.PathLike | None = None,
    cache_rate: float = 1.0,
    num_workers: int | None = 0,
    rank: int | None = None,
    world_size: int | None = None,
    even_divisible: bool = True,
    shuffle_partition: bool = False,
    seed: int = 0,
    augment: float = 0.0,
    keys: str = "image",
    frame_key: str = "frame",
    ram_dtype: str = "float16",
    progress: bool = False,
    track_meta: bool = True,
    context: int = 1,
) -> Dataset:
    """Dataset of cached fMRI frames for training, validation or inference.

    Parameters
    ----------
    items
        Datalist items (``{"image": path, "frame": t, "label": c, ...}``). ``image`` is a
        source 4D NIfTI (then ``cache`` is needed) or a cached run (``.npy``).
    transform
        Extra transforms applied after loading (and after augmentation).
    cache
        The :class:`CacheIndex`, or its folder, used to map source paths to cached runs.
    cache_rate
        Fraction of (this rank's) items kept in RAM by ``CacheDataset``; ``0`` streams from
        the memory-mapped cache with no RAM copy.
    num_workers
        Threads ``CacheDataset`` uses to fill its cache (``None``: all cores).
    rank, world_size
        Partition the items across DDP ranks before caching.
    even_divisible, shuffle_partition, seed
        Passed to ``monai.data.partition_dataset`` (training: ``even_divisible=True``).
    augment
        Probability of each augmentation (:func:`~monai_emotion.transforms.augmentations`);
        0 = off.
    ram_dtype
        ``"float16"`` (default) or ``"float32"``: dtype of the frames held by ``CacheDataset``.
        Samples are always float32.

    track_meta
        ``False`` turns images into plain tensors at the end of the chain (the affine is then
        dropped); training is several times faster for small networks.
    context
        Consecutive volumes per sample, as channels, centred on the item's volume and never
        leaving its run (odd; 1 = the volume alone; the rule:
        :func:`~monai_emotion.data.context.context_frames`). A RAM cache holds k frames per item.

    Returns
    -------
    torch.utils.data.Dataset
        Samples are the items with ``image`` a float32 ``(context, X, Y, Z)`` MetaTensor.
    """
    data = [dict(item) for item in items]
    if cache is not None:
        index = cache if isinstance(cache, CacheIndex) else CacheIndex.load(cache)
        data = attach_cache(data, index, key=keys, frame_key=frame_key)
    if (rank is None) != (world_size is None):
        raise ConfigError("give both rank and world_size, or neither")
    if world_size is not None and world_size > 1:
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} outside world_size {world_size}")
        data = partition_dataset(
            data,
            num_partitions=world_size,
            shuffle=shuffle_partition,
            seed=seed,
            even_divisible=even_divisible,
        )[rank]
    if ram_dtype not in ("float16", "float32"):
        raise ConfigError(f"ram_dtype={ram_dtype!r} must be 'float16' or 'float32'")
    if not 0.0 <= cache_rate <= 1.0:
        raise ConfigError(f"cache_rate={cache_rate} must lie in [0, 1]")

    in_ram = cache_rate > 0
    load_dtype = np.float16 if in_ram and ram_dtype == "float16" else np.float32
    chain: list = [LoadCachedFramed(keys, frame_key=frame_key, dtype=load_dtype, context=context)]
    if load_dtype == np.float16:
        chain.append(ToFloat32(keys))
    chain += augmentations(keys, augment)
    chain += _as_list(transform)
    if not track_meta:
        # plain tensors: MetaTensor's per-op bookkeeping costs more than a small 3D CNN's math
        chain.append(EnsureTyped(keys, track_meta=False))
    pipeline = Compose(chain)
    if not in_ram:
        return Dataset(data, transform=pipeline)
    return CacheDataset(
        data,
        transform=pipeline,
        cache_rate=cache_rate,
        num_workers=num_workers,
        progress=progress,
        copy_cache=False,  # ToFloat32 makes a new tensor per sample: the cached frame is never mutated
    )


def emotion_dataloader(
    dataset: Dataset,
    batch_size: int = 8,
    *,
    shuffle: bool = False,
    num_workers: int | None = None,
    pin_memory: bool | None = None,
    drop_last: bool = False,
    **kwargs: Any,
) -> torch.utils.data.DataLoader:
    """The recommended loader for a dataset from :func:`emotion_dataset`.

    ``CacheDataset`` -> ``ThreadDataLoader`` with no worker processes (data already in RAM);
    streaming ``Dataset`` -> ``DataLoader`` with ``min(4, cores // 2)`` workers (none on
    machines with 2 cores or fewer), persistent, 4 batches prefetched per worker, pinned
    memory when CUDA is available. Loading in the main process casts frames with torch's
    intra-op threads: on a small or busy CPU, ``torch.set_num_threads(1)`` is much faster
    (see docs/performance.md).
    """
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    if isinstance(dataset, CacheDataset):
        return ThreadDataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=0 if num_workers is None else num_workers,
            pin_memory=pin,
            drop_last=drop_last,
            **kwargs,
        )
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    # with 2 cores or fewer, worker processes only compete with the training process for them
    workers = (0 if cores <= 2 else min(4, cores // 2)) if num_workers is None else num_workers
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": 4}
    extra.update(kwargs)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=pin,
        drop_last=drop_last,
        **extra,
    )
