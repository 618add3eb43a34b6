"""Outlier volumes of a run (motion spikes, scanner artefacts): flagged before any cleaning.

A spike volume wrecks a run's scaling: z-scoring a run with one volume at 60x the median
DVARS shrinks every other volume of it. The field censors such volumes (Power et al. 2012,
NeuroImage 59:2142; fMRIPrep's ``motion_outlier`` confounds) and cleans the rest without them
(nilearn's ``signal.clean(sample_mask=...)``). Two measures flag a volume ``t``:

- **DVARS** (Smyth & Power): the root mean square over voxels of ``x[t] - x[t-1]``, divided by
  the run's median DVARS. The median is a spike-robust estimate of the DVARS a stationary run
  has, so this ratio reads like the standardised DVARS of Nichols et al. (2017), for which
  fMRIPrep flags volumes above 1.5; :data:`DVARS_THRESHOLD` is that value.
- **Framewise displacement** (Power et al. 2012): the sum of absolute changes of the six
  motion parameters, rotations turned into millimetres on a 50 mm sphere, when the run has a
  motion file. Volumes above :data:`FD_THRESHOLD` (0.5 mm, fMRIPrep's and Power's value) are
  flagged.

A one-volume spike at ``t`` raises both measures at ``t`` (into the spike) and at ``t + 1``
(out of it). When volume ``t + 1`` is close to ``t - 1`` again (the same measure over the
skip, below the threshold), only ``t`` is censored, so a spike costs one volume, not two. The
first volume has no predecessor and is judged only through the second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DVARS_THRESHOLD", "FD_THRESHOLD", "HEAD_RADIUS_MM", "MAX_CENSORED_FRACTION", "OUTLIER_METHODS", "OutlierReport",
           "relative_dvars", "framewise_displacement", "find_outliers"]

#: relative DVARS above which a volume is an outlier (fMRIPrep's standardised-DVARS cut)
DVARS_THRESHOLD = 1.5
#: framewise displacement (mm) above which a volume is an outlier (Power et al. 2012; fMRIPrep)
FD_THRESHOLD = 0.5
#: radius (mm) turning rotations (radians) into displacement, as Power et al. 2012
HEAD_RADIUS_MM = 50.0
#: a run with more outliers than this fraction is refused (a motion file in other units, or a
#: run not worth keeping): censoring cannot rescue it
MAX_CENSORED_FRACTION = 0.5
#: ``"censor"``: flagged volumes leave the cleaning, training and scoring; ``"none"``: kept
OUTLIER_METHODS = ("censor", "none")
_CHUNK = 64


@dataclass(frozen=True)
class OutlierReport:
    """The outlier volumes of one run and the measures that flagged them."""

    volumes: tuple[int, ...]
    dvars: np.ndarray  # relative DVARS per volume (0 for the first)
    fd: np.ndarray | None  # framewise displacement per volume (mm), None without a motion file
    dvars_threshold: float | None
    fd_threshold: float | None

    def record(self) -> dict[str, Any]:
        """What the cache sidecar keeps (per-volume measures rounded to 3 decimals)."""
        return {
            "volumes": [int(v) for v in self.volumes],
            "dvars_threshold": self.dvars_threshold,
            "fd_threshold": self.fd_threshold,
            "relative_dvars": np.round(self.dvars, 3).tolist(),
            "framewise_displacement_mm": None if self.fd is None else np.round(self.fd, 3).tolist(),
        }


def _rms_step(data: np.ndarray, step: int, columns: np.ndarray | None) -> np.ndarray:
    """RMS over voxels of ``data[t] - data[t - step]`` for every ``t >= step`` (chunked: no full copy)."""
    n = data.shape[0]
    out = np.zeros(max(n - step, 0), dtype=np.float64)
    for a in range(step, n, _CHUNK):
        b = min(n, a + _CHUNK)
        cur, prev = data[a:b], data[a - step : b - step]
        if columns is not None:
            cur, prev = cur[:, columns], prev[:, columns]
        diff = cur - prev
        out[a - step : b - step] = np.sqrt(np.einsum("tv,tv->t", diff, diff) / max(diff.shape[1], 1))
    return out


def relative_dvars(data: np.ndarray, columns: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """DVARS into each volume and over each skip ``t-1 -> t+1``, both over the run's median DVARS.

    Parameters
    ----------
    data
        ``(T, V)`` raw (uncleaned) voxel time series of one run.
    columns
        Voxel columns to use (e.g. the subject's own coverage); default all.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``step[t]`` (0 for ``t = 0``) and ``skip[t]`` (``x[t+1]`` vs ``x[t-1]``; ``inf`` at the
        run's ends, where there is no skip).
    """
    n = data.shape[0]
    step = np.zeros(n)
    skip = np.full(n, np.inf)
    if n < 3:
        return step, skip
    step[1:] = _rms_step(data, 1, columns)
    skip[1:-1] = _rms_step(data, 2, columns)
    median = float(np.median(step[1:]))
    if median <= 0:  # a constant run: nothing moves, nothing is an outlier
        return np.zeros(n), np.full(n, np.inf)
    return step / median, skip / median


def _rotation_columns(motion: np.ndarray) -> np.ndarray:
    """The three columns of smaller median magnitude (radians are ~100x smaller than mm)."""
    size = np.median(np.abs(motion - motion[:1]), axis=0) + np.median(np.abs(motion), axis=0)
    rotations = np.zeros(6, dtype=bool)
    rotations[np.argsort(size, kind="stable")[:3]] = True
    return rotations


def _displacement(a: np.ndarray, b: np.ndarray, rotations: np.ndarray, radius_mm: float) -> np.ndarray:
    delta = np.abs(b - a)
    delta[:, rotations] *= radius_mm
    return delta.sum(axis=1)


def framewise_displacement(motion: np.ndarray, radius_mm: float = HEAD_RADIUS_MM) -> np.ndarray:
    """Power et al.'s framewise displacement (mm) from six motion parameters per volume.

    ``motion`` is ``(T, 6)``, translations in mm and rotations in radians. The rotation columns
    are the three of smaller median magnitude, which finds them in fMRIPrep's order
    (``trans_x..z, rot_x..z``), FSL's ``.par`` (rotations first) and SPM's ``rp_*.txt`` alike.
    """
    motion = np.asarray(motion, dtype=float)
    if motion.ndim != 2 or motion.shape[1] != 6:
        raise ValueError(f"framewise displacement needs (T, 6) motion parameters, got {motion.shape}")
    return np.concatenate([[0.0], _displacement(motion[:-1], motion[1:], _rotation_columns(motion), radius_mm)])


def _flag(step: np.ndarray, skip: np.ndarray, threshold: float) -> np.ndarray:
    flags = step > threshold
    # t + 1 flagged only because the run came back from a spike at t: keep it
    back = flags[:-1] & flags[1:] & (skip[:-1] <= threshold)
    flags[1:][back] = False
    return flags


def find_outliers(
    data: np.ndarray,
    motion: np.ndarray | None = None,
    *,
    dvars_threshold: float | None = DVARS_THRESHOLD,
    fd_threshold: float | None = FD_THRESHOLD,
    columns: np.ndarray | None = None,
) -> OutlierReport:
    """Flag the outlier volumes of one run (see the module's description of the rule).

    Parameters
    ----------
    data
        ``(T, V)`` raw voxel time series (before detrending and z-scoring).
    motion
        ``(T, 6)`` motion parameters, or ``None`` (framewise displacement is then not used).
    dvars_threshold, fd_threshold
        Cuts for relative DVARS and framewise displacement (mm); ``None`` turns one off.
    columns
        Voxel columns for DVARS (default all).

    Returns
    -------
    OutlierReport
    """
    n = data.shape[0]
    flags = np.zeros(n, dtype=bool)
    step, skip = relative_dvars(data, columns)
    if dvars_threshold is not None:
        flags |= _flag(step, skip, float(dvars_threshold))
    fd = None
    if motion is not None:
        motion = np.asarray(motion, dtype=float)
        fd = framewise_displacement(motion)
        if fd_threshold is not None:
            skip_fd = np.full(n, np.inf)
            if n >= 3:
                skip_fd[1:-1] = _displacement(motion[:-2], motion[2:], _rotation_columns(motion), HEAD_RADIUS_MM)
            flags |= _flag(fd, skip_fd, float(fd_threshold))
    return OutlierReport(tuple(int(v) for v in np.flatnonzero(flags)), step, fd,
                         None if dvars_threshold is None else float(dvars_threshold),
                         None if fd_threshold is None else float(fd_threshold))
