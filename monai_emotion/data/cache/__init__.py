"""The preprocessing cache: each 4D run read once, masked, cropped, cleaned, stored as float16.

``spec`` (the typed preprocessing parameters), ``outliers`` (which volumes are censored), ``index`` (what is cached and where; the
``prepare_cache`` policy), ``build`` (one run from source to frames), ``clean`` (masks, grid,
detrending), ``stream`` (sequential NIfTI reads) and ``store`` (the ``.npy`` frame format).
"""

from monai_emotion.data.cache.index import (
    CachedRun,
    CacheIndex,
    CacheSummary,
    attach_cache,
    censored_frames,
    prepare_cache,
)
from monai_emotion.data.cache.store import CACHE_FORMAT_VERSION

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CachedRun",
    "CacheIndex",
    "CacheSummary",
    "attach_cache",
    "censored_frames",
    "prepare_cache",
]
