"""NIfTI writers and the tiny-run geometry shared by the tests.

Not a test module: the cache, dataset, discovery and bad-input tests import it.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from monai_emotion.data.studyforrest import bold_path

#: a small run: 20 x 24 x 10 voxels of 1.2 mm, 30 volumes
SHAPE = (20, 24, 10)
T = 30
AFFINE = np.array([[1.2, 0, 0, -10.0], [0, 1.2, 0, -12.0], [0, 0, 1.2, -5.0], [0, 0, 0, 1]])


def save_nifti(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray,
    *,
    tr: float | None = None,
    units: bool | None = None,
    dtype: type | str | None = None,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """Save ``data`` as NIfTI at ``path`` (parent folders made) and return the path.

    ``tr`` makes it a BOLD run: the TR goes into ``pixdim[4]``. ``units`` (default: when
    ``tr`` is given) sets the spatial and temporal units to mm and seconds. ``dtype`` is the
    on-disk type (int16 makes nibabel store a ``scl_slope``, as scanners do); ``header`` a
    header to start from (what re-saving a loaded image keeps).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine, header)
    if dtype is not None:
        img.set_data_dtype(dtype)
    if (tr is not None) if units is None else units:
        img.header.set_xyzt_units("mm", "sec")
    if tr is not None:
        img.header["pixdim"][4] = tr
    nib.save(img, str(path))
    return path


def save_run(
    root: Path,
    subject: str,
    run: int,
    data: np.ndarray,
    affine: np.ndarray = AFFINE,
    *,
    tr: float = 2.0,
    dtype: type | str | None = None,
) -> Path:
    """A 4D run at its BIDS name (aligned space) under ``root``."""
    return save_nifti(bold_path(root, subject, run), data, affine, tr=tr, dtype=dtype)


def bold_like_series(n: int, seed: int = 0, shape: tuple[int, int, int] = (12, 12, 8)) -> np.ndarray:
    """A ``(*shape, n)`` run: an 8 x 8 x 6 brain with a slow drift, voxel noise and a shared
    fluctuation (as BOLD has), zeros around it."""
    rng = np.random.default_rng(seed)
    data = np.zeros((*shape, n), dtype=np.float32)
    shared = np.convolve(rng.standard_normal(n), np.ones(4) / 4, mode="same")
    data[2:10, 2:10, 1:7] = (1000 + 15 * rng.standard_normal((8, 8, 6, n)) + np.linspace(0, 30, n)
                             + 10 * shared)
    return data
