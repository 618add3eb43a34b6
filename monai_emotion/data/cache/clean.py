"""Numerical pieces of the preprocessing cache: masks, the cropped grid, signal cleaning.

All cleaning of one run is a single least-squares projection: the constant, a linear trend,
cosine drifts (high-pass) and confounds are regressed out together, then each voxel is scaled
to unit variance. Regressing them jointly rather than one after the other avoids
re-introducing what an earlier step removed (Lindquist et al. 2019, Hum Brain Mapp 40:2358).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_emotion.errors import ConfigError, DataError, ImageError

__all__ = [
    "Grid",
    "make_grid",
    "block_average",
    "epi_mask",
    "combine_masks",
    "load_user_mask",
    "design_basis",
    "clean_inplace",
    "find_motion_file",
    "load_confounds",
]

#: residual variance below this fraction of a voxel's raw mean square counts as zero variance
ZERO_VARIANCE_RTOL = 1e-10


@dataclass(frozen=True)
class Grid:
    """The cropped (and block-averaged) voxel grid a cache stores.

    ``lo``/``hi`` are source voxel indices of the box (``hi`` exclusive); they may reach past
    the source volume by less than one block when downsampling needs whole blocks (those
    voxels read as 0). ``mask`` is on the stored grid.
    """

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    factor: tuple[int, int, int]
    affine: np.ndarray
    mask: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.mask.shape)

    def extract(self, vols: np.ndarray) -> np.ndarray:
        """Crop ``(n, X, Y, Z)`` source volumes to the box, block-averaged: ``(n, *shape)``."""
        src = vols.shape[1:]
        box = tuple(h - lo for lo, h in zip(self.lo, self.hi, strict=True))
        inside = tuple(
            slice(max(lo, 0), min(h, s)) for lo, h, s in zip(self.lo, self.hi, src, strict=True)
        )
        if all(lo >= 0 for lo in self.lo) and all(
            h <= s for h, s in zip(self.hi, src, strict=True)
        ):
            crop = vols[(slice(None), *inside)]
        else:
            crop = np.zeros((vols.shape[0], *box), dtype=np.float32)
            dst = tuple(
                slice(i.start - lo, i.stop - lo) for i, lo in zip(inside, self.lo, strict=True)
            )
            crop[(slice(None), *dst)] = vols[(slice(None), *inside)]
        return block_average(crop, self.factor)


def block_average(vols: np.ndarray, factor: Sequence[int]) -> np.ndarray:
    """Mean over non-overlapping ``factor`` blocks of the last three axes (sizes must divide)."""
    fx, fy, fz = (int(f) for f in factor)
    if (fx, fy, fz) == (1, 1, 1):
        return vols
    n, x, y, z = vols.shape
    blocks = vols.reshape(n, x // fx, fx, y // fy, fy, z // fz, fz)
    return blocks.mean(axis=(2, 4, 6), dtype=np.float32)


def _bounding_box(mask: np.ndarray) -> tuple[list[int], list[int]]:
    idx = np.nonzero(mask)
    return [int(i.min()) for i in idx], [int(i.max()) + 1 for i in idx]


def make_grid(
    mask: np.ndarray, affine: np.ndarray, *, margin: int = 2, factor: Sequence[int] = (1, 1, 1)
) -> Grid:
    """Box = the mask's bounding box plus ``margin`` voxels (inside the volume), grown to whole blocks."""
    if not mask.any():
        raise DataError("the mask is empty", fix="use a mask with at least one voxel")
    lo, hi = _bounding_box(mask)
    lo = [max(0, v - margin) for v in lo]
    hi = [min(s, v + margin) for v, s in zip(hi, mask.shape, strict=True)]
    for axis, f in enumerate(factor):
        extra = (-(hi[axis] - lo[axis])) % f
        grow_hi = min(extra, mask.shape[axis] - hi[axis])
        hi[axis] += grow_hi
        lo[axis] -= extra - grow_hi  # may go below 0: padded with zeros by Grid.extract
    box = np.zeros([h - lo_ for lo_, h in zip(lo, hi, strict=True)], dtype=np.float32)
    inside = tuple(slice(max(a, 0), min(b, s)) for a, b, s in zip(lo, hi, mask.shape, strict=True))
    dst = tuple(slice(i.start - a, i.stop - a) for i, a in zip(inside, lo, strict=True))
    box[dst] = mask[inside]
    # a stored voxel is in the mask when any source voxel of its block is: keeps the edge
    coarse = block_average(box[None], factor)[0] > 0
    scale = np.eye(4)
    scale[:3, :3] = np.diag(factor)
    scale[:3, 3] = [(f - 1) / 2.0 for f in factor]  # block centre, in source voxels
    shift = np.eye(4)
    shift[:3, 3] = lo
    grid_affine = np.asarray(affine, dtype=float) @ shift @ scale
    return Grid(tuple(lo), tuple(hi), tuple(int(f) for f in factor), grid_affine, coarse)


def epi_mask(
    mean: np.ndarray, affine: np.ndarray, path: str | os.PathLike, options: dict | None
) -> np.ndarray:
    """nilearn's ``compute_epi_mask`` on a run's mean image, as a boolean array."""
    from nilearn.masking import compute_epi_mask  # imported late: nilearn pulls in sklearn

    img = nib.Nifti1Image(np.asarray(mean, dtype=np.float32), np.asarray(affine, dtype=float))
    try:
        mask_img = compute_epi_mask(img, **(options or {}))
    except (ValueError, TypeError) as exc:
        raise ImageError(
            f"cannot compute a brain mask from the mean image ({exc})",
            path,
            fix="check the run's contents, pass mask_options for compute_epi_mask, or give "
            "mask=<a mask NIfTI on the run's grid>",
        ) from None
    mask = np.asarray(mask_img.dataobj).astype(bool)
    if not mask.any():
        raise ImageError(
            "the brain mask computed from the mean image is empty",
            path,
            fix="give mask=<a mask NIfTI on the run's grid>, or adjust mask_options",
        )
    return mask


def combine_masks(masks: Sequence[np.ndarray], threshold: float, affine: np.ndarray) -> np.ndarray:
    """Voxels in at least ``threshold`` of the masks (1: intersection), largest connected part."""
    from nilearn.masking import intersect_masks

    if len(masks) == 1:
        return np.asarray(masks[0], dtype=bool)
    imgs = [nib.Nifti1Image(np.asarray(m, dtype=np.int8), affine) for m in masks]
    combined = np.asarray(
        intersect_masks(imgs, threshold=threshold, connected=True).dataobj
    ).astype(bool)
    if not combined.any():
        raise DataError(
            f"the masks of {len(masks)} runs/subjects have no voxel in common (threshold {threshold})",
            fix="lower group_threshold (e.g. 0.5 = majority), or give an explicit mask",
        )
    return combined


def load_user_mask(
    path: str | os.PathLike, shape: tuple[int, ...], affine: np.ndarray, run_path: str
) -> np.ndarray:
    """A user mask as a boolean array on the runs' grid; wrong shape or grid -> :class:`ImageError`."""
    path = Path(path)
    if not path.is_file():
        raise ImageError("mask file not found", path, fix="check the path given as mask=")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for broken files
        raise ImageError(f"cannot read the mask ({type(exc).__name__}: {exc})", path) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.shape != tuple(shape):
        raise ImageError(
            f"mask of shape {data.shape} does not match the runs' grid {tuple(shape)} (e.g. {run_path})",
            path,
            fix="resample the mask to a run, e.g. nilearn.image.resample_to_img(mask, run, "
            "interpolation='nearest'), or use mask_strategy='subject'",
        )
    if not np.allclose(img.affine, affine, atol=1e-3):
        raise ImageError(
            f"mask affine differs from the runs' affine (e.g. {run_path}): same shape, other grid",
            path,
            fix="resample the mask onto a run's grid (nilearn.image.resample_to_img, nearest)",
        )
    mask = np.nan_to_num(np.asarray(data, dtype=float)) > 0
    if not mask.any():
        raise ImageError("the mask has no voxel > 0", path, fix="give a non-empty mask")
    return mask


def design_basis(
    n: int,
    tr: float,
    *,
    detrend: bool,
    standardize: bool,
    high_pass: float | None,
    confounds: np.ndarray | None,
    sample_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Orthonormal basis (n, k) of everything regressed out of each voxel's time series.

    The constant is included whenever any cleaning is asked for (z-scores need a zero mean).
    High-pass uses the discrete cosine set with periods longer than ``1 / high_pass`` s
    (the convention of SPM and nilearn's ``cosine`` drift model). With ``sample_mask``
    (boolean, ``False`` = censored) the regressors are zero at censored volumes, so the basis
    is orthonormal over the kept volumes and the fit never sees a censored one (as nilearn's
    ``signal.clean(sample_mask=...)``; the drifts keep the run's real time axis).
    """
    cols = []
    t = np.arange(n, dtype=float)
    if detrend or standardize or high_pass or confounds is not None:
        cols.append(np.ones(n))
    if detrend and n > 2:
        cols.append(t - t.mean())
    if high_pass:
        if high_pass <= 0:
            raise ConfigError(f"high_pass={high_pass} Hz must be > 0 (or None)")
        order = int(np.floor(2 * n * tr * high_pass))
        for k in range(1, min(order, n - 1) + 1):
            cols.append(np.cos(np.pi * k * (t + 0.5) / n))
    if confounds is not None:
        conf = np.asarray(confounds, dtype=float)
        cols.extend((conf - conf.mean(axis=0)).T)
    if not cols:
        return np.zeros((n, 0))
    design = np.column_stack(cols)
    if sample_mask is not None:
        design[~np.asarray(sample_mask, dtype=bool)] = 0.0
    u, s, _ = np.linalg.svd(design, full_matrices=False)
    keep = s > s.max() * max(design.shape) * np.finfo(float).eps  # drops collinear regressors
    return u[:, keep]


def clean_inplace(
    data: np.ndarray, basis: np.ndarray, *, standardize: bool, block: int = 16384,
    n_samples: int | None = None,
) -> tuple[int, float]:
    """Regress ``basis`` out of every column of ``data`` (T, V) and z-score, in place.

    ``n_samples``: the number of volumes the variance is over (default ``T``); with censored
    volumes, those are zero rows of ``data`` and of ``basis`` and stay zero.

    Returns the number of zero-variance voxels (set to 0) and the largest absolute value.
    Float32 throughout, on column blocks with reused buffers: a constant voxel's float32
    residual is rounding noise some 1e-14 of its mean square, far below the
    :data:`ZERO_VARIANCE_RTOL` cut, while any real BOLD fluctuation lies far above it.
    """
    n_cols = data.shape[1]
    n_t = int(n_samples) if n_samples is not None else data.shape[0]
    basis32 = np.ascontiguousarray(basis, dtype=np.float32)
    fit = np.empty((data.shape[0], min(block, max(n_cols, 1))), dtype=np.float32)
    n_zero, peak = 0, 0.0
    for a in range(0, n_cols, block):
        blk = data[:, a : a + block]
        width = blk.shape[1]
        raw_ms = np.einsum("tv,tv->v", blk, blk) / n_t
        if basis32.shape[1]:
            np.matmul(basis32, basis32.T @ blk, out=fit[:, :width])
            blk -= fit[:, :width]
        ms = np.einsum("tv,tv->v", blk, blk) / n_t
        dead = ms <= ZERO_VARIANCE_RTOL * raw_ms
        n_zero += int(dead.sum())
        scale = np.zeros(width, dtype=np.float32)
        if standardize:
            np.divide(1.0, np.sqrt(ms), out=scale, where=~dead)
        else:
            scale[~dead] = 1.0
        blk *= scale
        if width:
            peak = max(peak, float(np.abs(blk.max())), float(np.abs(blk.min())))
    return n_zero, peak


_MOTION_NAME = re.compile(r"(moco|motion|confounds|mcf|realign)", re.IGNORECASE)
_MOTION_SUFFIXES = (".txt", ".tsv", ".par", ".1D", ".csv")
_FMRIPREP_MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def find_motion_file(run_path: str, bids_root: str, subject: str, run: int) -> str | None:
    """Look for a run's motion-parameter file beside the run and in the subject's raw func folder."""
    run_tag = f"run-{run:02d}"
    folders = [
        Path(run_path).parent,
        Path(bids_root) / f"sub-{subject}" / "ses-forrestgump" / "func",
    ]
    hits: list[Path] = []
    for folder in dict.fromkeys(folders):
        if not folder.is_dir():
            continue
        for candidate in sorted(folder.iterdir()):
            name = candidate.name
            if (
                f"sub-{subject}" in name
                and run_tag in name
                and _MOTION_NAME.search(name)
                and name.endswith(_MOTION_SUFFIXES)
            ):
                hits.append(candidate)
    return str(hits[0]) if hits else None


def load_confounds(path: str, n_volumes: int, run_path: str) -> np.ndarray:
    """Motion parameters (n_volumes, k) from a whitespace/TSV table; fMRIPrep tables keep the 6 motion columns."""
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
        header = re.split(r"[\t,\s]+", first.strip())
        has_header = any(re.search(r"[A-Za-z_]", h) and not _is_float(h) for h in header)
        delimiter = "\t" if "\t" in first else ("," if "," in first else None)
        table = np.genfromtxt(
            path, delimiter=delimiter, skip_header=1 if has_header else 0, dtype=float
        )
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read the confound table ({exc})", path, fix="check its format"
        ) from None
    table = np.atleast_2d(table)
    if table.shape[0] == 1 and n_volumes != 1:
        table = table.T
    if has_header and all(c in header for c in _FMRIPREP_MOTION):
        table = table[:, [header.index(c) for c in _FMRIPREP_MOTION]]
    if table.shape[0] != n_volumes:
        raise DataError(
            f"confound table has {table.shape[0]} rows, the run {run_path} has {n_volumes} volumes",
            path,
            fix="use the motion file of this run, or pass confounds=None",
        )
    table = np.nan_to_num(table)  # fMRIPrep leaves NaN in the first row of derivatives
    return table


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
