"""How well an emotion's saliency map finds the pattern the synthetic generator planted for it.

The generator writes each subject's class patterns (``ground_truth/sub-XX_patterns.nii.gz``,
``(X, Y, Z, K)`` on the source grid). What a decoder can use to tell class ``c`` apart is its
*contrast*: pattern ``c`` minus the mean of the other classes' patterns. Two correlations over
the training mask's voxels:

``r_signed``
    Pearson r of the map with the contrast (sign included: for signed methods);
``r_abs``
    Pearson r of ``|map|`` with ``|contrast|``: whether the map puts its weight where the
    contrast is strong, whatever the sign (comparable across signed and unsigned methods:
    GradCAM is never negative, and gradient-times-input maps square the pattern's sign away).
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["truth_file", "planted_contrasts", "map_truth_correlation"]


def truth_file(dataset_dir: str | os.PathLike, subject: str) -> Path | None:
    """The planted patterns of ``subject``, when ``dataset_dir`` is a synthetic dataset."""
    path = Path(dataset_dir) / "ground_truth" / f"sub-{subject}_patterns.nii.gz"
    return path if path.is_file() else None


def planted_contrasts(path: str | os.PathLike) -> np.ndarray:
    """``(K, X, Y, Z)``: each class's pattern minus the mean of the others'."""
    patterns = np.moveaxis(np.asarray(nib.load(path).dataobj, dtype=np.float32), -1, 0)
    k = patterns.shape[0]
    total = patterns.sum(axis=0)
    return patterns - (total[None] - patterns) / max(k - 1, 1)


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else None


def map_truth_correlation(values: np.ndarray, contrast: np.ndarray, mask: np.ndarray) -> dict[str, float | None]:
    """``r_signed`` and ``r_abs`` of one map with one class's contrast, over ``mask`` (source grid)."""
    m, t = values[mask].astype(np.float64), contrast[mask].astype(np.float64)
    return {"r_signed": _pearson(m, t), "r_abs": _pearson(np.abs(m), np.abs(t))}
