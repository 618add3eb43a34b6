"""Temporal context: which volumes of a run make the k-volume window of a labelled volume.

One 2 s volume is a noisy sample of a slow response; a sample can instead hold the k
consecutive volumes centred on the label's volume (k odd, 1 = the volume alone). This module
owns the rule, for the CNN's frame loader (:class:`~monai_emotion.transforms.LoadCachedFramed`,
one channel per volume) and the linear baseline (the window's mean,
:meth:`~monai_emotion.study.features.FeatureStore.matrix`). Numpy only: the study's settings
check k without importing torch. See docs/temporal_context.md.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from monai_emotion.errors import ConfigError

__all__ = ["check_temporal_context", "context_frames"]


def check_temporal_context(k: Any, where: str = "config 'temporal_context'") -> int:
    """``k`` as the number of consecutive volumes a sample holds: an odd integer >= 1.

    Raises
    ------
    ConfigError
        ``k`` is not an odd positive integer (a window must be centred on the label's volume).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 or k % 2 == 0:
        raise ConfigError(f"temporal context {k!r} is not an odd integer >= 1", where=where,
                          fix="give 1 (one volume, the default), 3, 5, ...: the window is centred on the label's volume")
    return int(k)


def context_frames(t: int, k: int, n_volumes: int, censored: Collection[int] = ()) -> np.ndarray:
    """The ``k`` frames of run-local volume ``t``'s window, in time order (``t`` in the middle).

    The rule (docs/temporal_context.md): a window never leaves its run. Positions before the
    first or after the last volume repeat the edge volume (clamped, so every item keeps its
    window and every k scores the same items); a censored neighbour (a zero frame) is replaced
    by the nearest uncensored volume of the run, the one towards ``t`` on a tie. The middle is
    always ``t`` itself: items on censored volumes are dropped upstream (``attach_cache``), and
    inference marks them. ``k = 1`` is ``[t]``.

    Parameters
    ----------
    t
        The label's volume (0-based, within the run).
    k
        Window length (odd).
    n_volumes
        Volumes in the run.
    censored
        The run's censored volumes (``CachedRun.censored``).
    """
    half = check_temporal_context(k) // 2
    frames = np.clip(np.arange(t - half, t + half + 1), 0, n_volumes - 1)
    if not censored or half == 0:
        return frames
    bad = set(int(v) for v in censored)
    kept = np.array([v for v in range(n_volumes) if v not in bad], dtype=np.int64)
    if kept.size == 0:
        return np.full(k, t, dtype=frames.dtype)
    for j, v in enumerate(frames):
        if j == half or int(v) not in bad:
            continue
        distance = np.abs(kept - v)
        # nearest uncensored volume; on a tie the one on t's side
        nearest = np.flatnonzero(distance == distance.min())
        frames[j] = kept[nearest[0] if v > t else nearest[-1]]
    return frames
