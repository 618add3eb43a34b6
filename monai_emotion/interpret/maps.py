"""Maps on the model's stored grid back in the source image space, through the saved contract.

The cache crops each run to the mask's bounding box (plus a margin, grown to whole blocks)
and block-averages it by ``downsample`` (:func:`monai_emotion.data.cache.clean.make_grid`);
stored voxel ``j`` along an axis is the centre of source voxels ``lo + f*j ... lo + f*j + f-1``.
:func:`to_source` inverts that: trilinear interpolation between block centres (nearest at the
box's edges), on the contract's source grid, with zeros outside the training mask
(``models/mask.nii.gz``). The NIfTI written has the source affine (and, when the source run
can be read, its qform and sform codes).
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_emotion.contract import MASK_FILE, Contract
from monai_emotion.errors import ConfigError, ImageError

__all__ = ["to_source", "source_mask", "map_image", "save_map"]


def source_mask(contract: Contract, ckpt_dir: str | os.PathLike) -> np.ndarray:
    """The training mask on the source grid, as booleans (checked against the contract)."""
    path = Path(ckpt_dir) / MASK_FILE
    img = nib.load(path)
    if tuple(img.shape[:3]) != tuple(contract.source_shape):
        raise ImageError(f"the training mask has shape {img.shape} but the contract's source grid is "
                         f"{tuple(contract.source_shape)}", path, fix="retrain the model (the two files disagree)")
    return np.asarray(img.dataobj).astype(bool)


def to_source(values: np.ndarray, contract: Contract, mask: np.ndarray) -> np.ndarray:
    """A map on the stored grid ``contract.spatial_shape`` as a float32 map on the source grid.

    Parameters
    ----------
    values
        ``(X, Y, Z)`` on the model's grid.
    contract
        The model's contract (crop box and downsampling factors).
    mask
        The training mask on the source grid (:func:`source_mask`); the map is zero outside it.
    """
    from scipy import ndimage

    if tuple(values.shape) != tuple(contract.spatial_shape):
        raise ConfigError(f"map of shape {values.shape} is not on the model's grid {tuple(contract.spatial_shape)}",
                          where="interpret", fix="compute the map with the model of this contract")
    lo = np.asarray(contract.crop["lo"], dtype=float)
    factor = np.asarray(contract.crop["downsample"], dtype=float)
    # source index i -> stored coordinate (i - lo - (f - 1) / 2) / f: block centres map to integers
    out = ndimage.affine_transform(values.astype(np.float32), 1.0 / factor, offset=-(lo + (factor - 1) / 2) / factor,
                                   output_shape=tuple(contract.source_shape), order=1, mode="nearest")
    out[~mask] = 0.0
    return out.astype(np.float32)


def map_image(data: np.ndarray, contract: Contract, reference: str | os.PathLike | None = None,
              description: str = "") -> nib.Nifti1Image:
    """A float32 NIfTI on the source grid: the contract's affine; ``reference``'s qform/sform codes if readable."""
    affine = np.asarray(contract.source_affine, dtype=float)
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    codes = (1, 1)
    if reference is not None and Path(reference).is_file():
        header = nib.load(reference).header
        codes = (int(header["qform_code"]) or 1, int(header["sform_code"]) or 1)
    img.set_qform(affine, code=codes[0])
    img.set_sform(affine, code=codes[1])
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = description.encode()[:79]
    return img


def save_map(path: Path, data: np.ndarray, contract: Contract, reference: str | os.PathLike | None = None,
             description: str = "") -> Path:
    """Write :func:`map_image` atomically (a temporary name, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.{os.getpid()}.part.nii.gz")
    nib.save(map_image(data, contract, reference, description), part)
    os.replace(part, path)
    return path

