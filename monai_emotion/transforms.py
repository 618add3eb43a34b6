"""MONAI dictionary transforms of the package: frame loaders and the optional augmentation chain."""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandAffined, RandGaussianNoised, RandScaleIntensityd

from monai_emotion.data.context import check_temporal_context, context_frames
from monai_emotion.errors import CacheError, DataError, ImageError

__all__ = ["LoadCachedFramed", "LoadNiftiFramed", "augmentations", "check_temporal_context", "context_frames"]


class _OpenFiles:
    """A small per-process LRU of opened files.

    Keyed by path and tied to the process id: a DataLoader worker forked from a parent that
    had files open starts with an empty cache instead of sharing the parent's handles, and
    the cache is never pickled (spawned workers build their own).
    """

    def __init__(self, capacity: int):
        self.capacity = max(1, int(capacity))
        self._reset()

    def _reset(self) -> None:
        # a lock inherited through fork may be held by a thread that does not exist here
        self._pid = os.getpid()
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str, opener: Any) -> Any:
        if self._pid != os.getpid():
            self._reset()
        with self._lock:  # ThreadDataLoader workers share one transform
            item = self._items.get(path)
            if item is not None:
                self._items.move_to_end(path)
                return item
        item = opener(path)
        with self._lock:
            self._items[path] = item
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return item


class _FrameLoader(MapTransform):
    """Shared machinery: the frame index lookup, the LRU, pickling without open files."""

    def __init__(
        self,
        keys: KeysCollection,
        frame_key: str,
        dtype: Any,
        max_open: int,
        allow_missing_keys: bool,
    ):
        super().__init__(keys, allow_missing_keys)
        self.frame_key = frame_key
        self.dtype = np.dtype(dtype)
        self.max_open = max_open
        self._files = _OpenFiles(max_open)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._files = _OpenFiles(self.max_open)

    def _frame(self, d: Mapping[Hashable, Any]) -> int:
        if self.frame_key not in d:
            raise DataError(f"item has no '{self.frame_key}' key (keys: {sorted(map(str, d))})")
        return int(d[self.frame_key])


def open_cached_run(path: str) -> tuple[np.ndarray, torch.Tensor, tuple[int, ...]]:
    """A cached run's frames (copy-on-write memory map), affine and censored volumes, checked against its sidecar."""
    sidecar = os.path.splitext(path)[0] + ".json"
    try:
        with open(sidecar, encoding="utf-8") as fh:
            meta = json.load(fh)
    except FileNotFoundError:
        raise CacheError(
            "cached run has no sidecar (incomplete or not a cache file)",
            path,
            fix="point items at a cache built by prepare_cache (attach_cache does it)",
        ) from None
    # copy-on-write mapping: writable as far as torch can tell, so a frame converts straight
    # from the mapped pages without an intermediate copy; nothing ever writes to it
    frames = np.load(path, mmap_mode="c")
    if frames.ndim != 4 or list(frames.shape) != list(meta["shape"]):
        raise CacheError(
            f"frames of shape {frames.shape} disagree with the sidecar",
            path,
            fix="rerun prepare_cache",
        )
    censored = tuple(int(v) for v in (meta.get("censoring") or {}).get("volumes", []))
    return frames, torch.as_tensor(np.asarray(meta["affine"], dtype=np.float64)), censored


class LoadCachedFramed(_FrameLoader):
    """Load frame ``d[frame_key]`` of a cached run into a ``(k, X, Y, Z)`` :class:`MetaTensor`.

    ``d[key]`` is a ``.npy`` written by :func:`~monai_emotion.data.cache.prepare_cache` (see
    :func:`~monai_emotion.data.cache.attach_cache`). The run is memory-mapped once per
    process (LRU of ``max_open`` runs) and frame t is one contiguous read; the tensor carries
    the cropped grid's affine. Works in any ``Compose``, with thread or process workers.
    With ``context`` k > 1 the channels are the k consecutive volumes centred on t, taken
    within the run by :func:`context_frames` (edges clamped, censored neighbours replaced).

    Parameters
    ----------
    keys
        Keys holding cached run paths.
    frame_key
        Key holding the 0-based frame index.
    dtype
        Output dtype (``float32``; ``float16`` halves a RAM cache).
    max_open
        Runs kept mapped per process.
    context
        Consecutive volumes per sample (odd; 1: the label's volume alone).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        frame_key: str = "frame",
        dtype: Any = np.float32,
        max_open: int = 64,
        allow_missing_keys: bool = False,
        context: int = 1,
    ):
        super().__init__(keys, frame_key, dtype, max_open, allow_missing_keys)
        self._torch_dtype = torch.from_numpy(np.zeros(0, dtype=self.dtype)).dtype
        self.context = check_temporal_context(context, where="LoadCachedFramed(context=...)")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        t = self._frame(d)
        for key in self.key_iterator(d):
            path = os.fspath(d[key])
            if not path.endswith(".npy"):
                raise DataError(
                    f"'{key}' is not a cached run: {path}",
                    path,
                    fix="map items to the cache first (monai_emotion.data.cache.attach_cache), or use LoadNiftiFramed",
                )
            frames, affine, censored = self._files.get(path, open_cached_run)
            if not 0 <= t < frames.shape[0]:
                raise DataError(
                    f"frame {t} is beyond the cached run's {frames.shape[0]} volumes: a run shorter than its labels",
                    path,
                    fix="rebuild the datalist from the run's real length",
                )
            window = [t] if self.context == 1 else context_frames(t, self.context, frames.shape[0], censored).tolist()
            tensor = torch.empty((len(window), *frames.shape[1:]), dtype=self._torch_dtype)
            # one contiguous read out of the mapping per frame, cast on the way (torch's float16
            # cast is several times faster than numpy's)
            for channel, frame in enumerate(window):
                tensor[channel].copy_(torch.from_numpy(frames[frame]))
            meta = {
                "filename_or_obj": path,
                "frame": t,
                "original_channel_dim": "no_channel",
                "spatial_shape": np.asarray(frames.shape[1:]),
            }
            if self.context > 1:
                meta["context_frames"] = window
            d[key] = MetaTensor(tensor, affine=affine.clone(), meta=meta)
        return d


def _open_nifti(path: str) -> nib.Nifti1Image:
    try:
        img = nib.load(path, keep_file_open=True)
    except Exception as exc:  # nibabel raises many types for broken files
        raise ImageError(f"cannot read as NIfTI ({type(exc).__name__}: {exc})", path) from None
    if len(img.shape) != 4:
        raise ImageError(
            f"expected a 4D run, found shape {img.shape}", path, fix="give the 4D BOLD run"
        )
    return img


class LoadNiftiFramed(_FrameLoader):
    """Load frame ``d[frame_key]`` of a source 4D NIfTI as raw ``(1, X, Y, Z)`` intensities.

    For quick looks and inference on runs that were never cached. The values are *not* the
    cache's (no crop, no per-run detrending or z-scoring: those need the whole run): a model
    trained on the cache must be fed cached runs (``prepare_cache`` on the new runs).
    Cheap on ``.nii``; on ``.nii.gz`` ask for frames in increasing order per run (the file
    stays open and reads forward; going back decompresses from the start).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        frame_key: str = "frame",
        dtype: Any = np.float32,
        max_open: int = 8,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, frame_key, dtype, max_open, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        t = self._frame(d)
        for key in self.key_iterator(d):
            path = os.fspath(d[key])
            img = self._files.get(path, _open_nifti)
            if not 0 <= t < img.shape[3]:
                raise DataError(f"frame {t} is beyond the run's {img.shape[3]} volumes", path)
            volume = np.array(img.dataobj[..., t], dtype=self.dtype)
            if not np.isfinite(volume).all():
                raise ImageError(
                    "NaN/Inf voxels", path, where=f"volume {t}", fix="repair or exclude the run"
                )
            meta = {"filename_or_obj": path, "frame": t, "original_channel_dim": "no_channel"}
            d[key] = MetaTensor(
                torch.from_numpy(volume[None]), affine=torch.as_tensor(img.affine), meta=meta
            )
        return d


def augmentations(
    keys: KeysCollection = "image",
    prob: float = 0.0,
    *,
    rotate_deg: float = 3.0,
    translate_voxels: float = 2.0,
    scale: float = 0.03,
    noise_std: float = 0.05,
    intensity: float = 0.05,
) -> list:
    """Small random affine, Gaussian noise and intensity scaling, each applied with ``prob``.

    Off by default (``prob=0`` returns an empty list). Magnitudes suit z-scored frames on a
    1.2 mm grid: a few degrees and voxels, noise a few percent of one standard deviation.
    """
    if prob <= 0:
        return []
    radians = float(np.deg2rad(rotate_deg))
    return [
        RandAffined(
            keys,
            prob=prob,
            rotate_range=(radians,) * 3,
            translate_range=(translate_voxels,) * 3,
            scale_range=(scale,) * 3,
            mode="bilinear",
            padding_mode="zeros",
        ),
        RandGaussianNoised(keys, prob=prob, std=noise_std),
        RandScaleIntensityd(keys, factors=intensity, prob=prob),
    ]
