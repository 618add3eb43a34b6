"""What every listener shares: the soundtrack's drive of auditory cortex, and the HRF.

All participants heard the same movie, so auditory cortex follows its loudness and speech in
all of them at the same movie seconds. :func:`soundtrack` draws such a time course on the
movie's 1 s timeline (one per seed, the same for every subject); :func:`auditory_map` places
two bilateral temporal blobs where it drives the BOLD signal. :func:`hrf` gives the
haemodynamic response that turns per-second drives into BOLD, canonical or with a chosen
peak latency.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage

from monai_emotion.data.studyforrest import MOVIE_END
from monai_emotion.data.synthetic.bold import Grid, blob_field

__all__ = ["AUDITORY_CENTRES_MM", "AUDITORY_SIGMA_MM", "CANONICAL_PEAK_S", "hrf", "soundtrack",
           "auditory_map", "stimulus_response"]

#: MNI coordinates (mm) of left and right auditory cortex (Heschl's gyrus / planum temporale)
AUDITORY_CENTRES_MM: tuple[tuple[float, float, float], ...] = ((-50.0, -22.0, 8.0), (50.0, -20.0, 8.0))
AUDITORY_SIGMA_MM = 8.0
#: peak latency (s) of nilearn's Glover HRF evaluated on a fine time grid
CANONICAL_PEAK_S = 5.0
_HRF_SECONDS = 32
_SPEECH_MEAN_S, _PAUSE_MEAN_S = 5.0, 3.0  # mean lengths of speech stretches and of pauses
_LOUDNESS_SMOOTH_S = 8.0  # width of the smoothing that makes the loudness envelope


def hrf(peak_s: float | None = None) -> np.ndarray:
    """HRF sampled every second over 32 s, normalised to unit sum.

    Parameters
    ----------
    peak_s
        None: nilearn's ``glover_hrf(1.0, oversampling=1)`` as it comes (what the uniform
        world has always used). A latency in seconds: the Glover shape stretched in time so
        that its peak falls at ``peak_s`` (the canonical one peaks at
        :data:`CANONICAL_PEAK_S`).

    Returns
    -------
    numpy.ndarray
        ``(32,)`` weights: a sustained drive of 1 gives a plateau of 1.
    """
    from nilearn.glm.first_level import glover_hrf

    if peak_s is None:
        h = glover_hrf(1.0, oversampling=1, time_length=float(_HRF_SECONDS))
    else:
        if not 1.0 <= peak_s <= 12.0:
            raise ValueError(f"HRF peak {peak_s} s lies outside 1-12 s")
        fine = glover_hrf(1.0, oversampling=100, time_length=float(_HRF_SECONDS) * 2)
        t_fine = np.linspace(0.0, 2.0 * _HRF_SECONDS, fine.size)
        peak_fine = float(t_fine[np.argmax(fine)])
        h = np.interp(np.arange(_HRF_SECONDS) * peak_fine / peak_s, t_fine, fine)
    return h / h.sum()


def soundtrack(rng: np.random.Generator, n_seconds: int | None = None) -> pd.DataFrame:
    """A loudness- and speech-like drive of auditory cortex, one value per movie second.

    Speech alternates with pauses (gamma-distributed stretches of about 5 s and 3 s); the
    loudness is a smooth log-normal envelope (Gaussian noise smoothed over 8 s). The drive is
    ``loudness * (0.4 + 0.6 * speech)``.

    Parameters
    ----------
    rng
        Its stream (one per seed: every subject hears the same movie).
    n_seconds
        Length of the timeline (default: the whole movie).

    Returns
    -------
    pandas.DataFrame
        ``second``, ``loudness``, ``speech`` (0/1) and ``drive``.
    """
    n = int(math.ceil(MOVIE_END)) if n_seconds is None else int(n_seconds)
    speech = np.zeros(n, dtype=np.int8)
    t, talking = 0, bool(rng.random() < 0.5)
    while t < n:
        length = max(1, int(round(rng.gamma(2.0, (_SPEECH_MEAN_S if talking else _PAUSE_MEAN_S) / 2.0))))
        speech[t:t + length] = int(talking)
        t, talking = t + length, not talking
    smooth = ndimage.gaussian_filter1d(rng.standard_normal(n), _LOUDNESS_SMOOTH_S, mode="wrap")
    loudness = np.exp(0.5 * smooth / max(float(smooth.std()), 1e-12))
    drive = loudness * (0.4 + 0.6 * speech)
    return pd.DataFrame({"second": np.arange(n), "loudness": np.round(loudness, 5), "speech": speech,
                         "drive": np.round(drive, 5)})


def stimulus_response(drive: np.ndarray, hrf_weights: np.ndarray) -> np.ndarray:
    """The drive convolved with an HRF, z-scored over the movie: ``(n_seconds,)`` float32.

    Scaled by a strength, it is the percent signal change at the peak of the auditory map.
    """
    response = np.convolve(np.asarray(drive, dtype=float), hrf_weights)[: len(drive)]
    response -= response.mean()
    return (response / max(float(response.std()), 1e-12)).astype(np.float32)


def auditory_map(grid: Grid, mask: np.ndarray) -> np.ndarray:
    """Two bilateral temporal Gaussian blobs (peak 1) over the mask voxels: ``(V,)`` float32."""
    inverse = np.linalg.inv(grid.affine)
    centres = np.array([(inverse @ np.r_[c, 1.0])[:3] for c in AUDITORY_CENTRES_MM])
    n = len(centres)
    field = blob_field(grid.shape, grid.voxel_mm, centres, np.full(n, AUDITORY_SIGMA_MM), np.ones(n))
    return field[mask].astype(np.float32)
