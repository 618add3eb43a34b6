"""The preprocessing parameters as one typed, validated value: every default is written here.

The bundle configs (``data#preprocessing``), the command line (``monai-emotion prepare``),
the study (``"preprocessing"``) and inference all build a :class:`PreprocessingSpec` and
override its defaults instead of restating them, so a cache made by one entry point is
reused by the others. The spec is validated once, when it is made; its :meth:`digest` names
the cache folder and its :meth:`to_dict` is what training records beside the model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monai_emotion.data.cache.outliers import DVARS_THRESHOLD, FD_THRESHOLD, OUTLIER_METHODS
from monai_emotion.errors import ConfigError
from monai_emotion.fileio import json_digest

__all__ = ["PreprocessingSpec", "downsample_factors", "MASK_STRATEGIES"]

#: "group": one grid for every subject (the mask combined across subjects), so cross-subject
#: models can batch subjects together and a new subject can be put on the training voxels;
#: "subject": each subject its own mask and crop (single-subject models only); "auto": the
#: subject's own mask for a model of one subject (it sees every voxel its subject covers),
#: the group mask for a model of several (see :meth:`PreprocessingSpec.resolved`)
MASK_STRATEGIES = ("auto", "group", "subject")


def downsample_factors(
    downsample: int | Sequence[int], target_voxel_mm: float | None, zooms: Sequence[float]
) -> tuple[int, int, int]:
    """Block-average factors per axis for voxels of size ``zooms`` (mm)."""
    if target_voxel_mm is not None:
        if downsample not in (1, (1, 1, 1), [1, 1, 1]):
            raise ConfigError("give either downsample or target_voxel_mm, not both",
                              where="preprocessing", fix="drop one of the two keys")
        if target_voxel_mm <= 0:
            raise ConfigError(f"target_voxel_mm={target_voxel_mm} must be > 0", where="preprocessing")
        return tuple(max(1, int(round(target_voxel_mm / z))) for z in zooms)
    factors = (downsample,) * 3 if np.isscalar(downsample) else tuple(downsample)
    if len(factors) != 3 or any(isinstance(f, bool) or int(f) != f or f < 1 for f in factors):
        raise ConfigError(f"downsample={downsample!r} must be a positive integer or three of them",
                          where="preprocessing")
    return tuple(int(f) for f in factors)


@dataclass(frozen=True)
class PreprocessingSpec:
    """How each 4D run becomes cached float16 frames (see :func:`~monai_emotion.data.cache.prepare_cache`).

    Parameters
    ----------
    downsample
        Integer block-average factor (or three), applied after the crop. 2 halves the 1.2 mm
        grid of ds000113 (~0.84 GB of float16 per subject).
    target_voxel_mm
        Alternative to ``downsample``: factor per axis = round(target / voxel size).
    mask
        A mask NIfTI on the runs' grid; overrides ``mask_strategy``.
    mask_strategy
        One of :data:`MASK_STRATEGIES`; ``"auto"`` is resolved per model by :meth:`resolved`.
    group_threshold
        Fraction of subject masks a voxel needs to enter the group mask (1.0: intersection).
    mask_volumes
        Volumes at the start of each run whose mean feeds the mask (``None``: all of them).
    mask_options
        Keyword arguments for ``nilearn.masking.compute_epi_mask``.
    margin
        Voxels kept around the mask's bounding box.
    detrend, standardize, high_pass, confounds
        Per-run, per-voxel cleaning in one regression: linear trend, z-scoring, cosine drifts
        below ``high_pass`` Hz, and ``confounds="motion"`` (the run's motion parameters).
    nonfinite
        ``"error"`` (NaN/Inf raise, naming file and volume) or ``"zero"``.
    outliers, dvars_threshold, fd_threshold
        ``"censor"`` (default): volumes whose relative DVARS or framewise displacement (mm,
        from the run's motion file when it has one) exceed the thresholds are left out of
        the cleaning (stored as zeros), of training and of scoring; ``"none"`` keeps them.
        A threshold of ``None`` turns that measure off (rule and values:
        :mod:`monai_emotion.data.cache.outliers`).
    min_coverage
        Under a group or user mask, the fraction of the mask's voxels a run's own brain mask
        must cover (below: a clear error naming the run). Uncovered voxels are zero-filled.
        0.8 accepts the few millimetres by which slab coverage differs between aligned
        subjects, and refuses a run in another space or a badly cut slab.
    """

    downsample: int | tuple[int, int, int] = 2
    target_voxel_mm: float | None = None
    mask: str | None = None
    mask_strategy: str = "auto"
    group_threshold: float = 0.5
    mask_volumes: int | None = 20
    mask_options: Mapping[str, Any] = field(default_factory=dict)
    margin: int = 2
    detrend: bool = True
    standardize: bool = True
    high_pass: float | None = None
    confounds: str | None = None
    nonfinite: str = "error"
    outliers: str = "censor"
    dvars_threshold: float | None = DVARS_THRESHOLD
    fd_threshold: float | None = FD_THRESHOLD
    min_coverage: float = 0.8

    def __post_init__(self) -> None:
        if not np.isscalar(self.downsample):
            object.__setattr__(self, "downsample", tuple(int(f) for f in self.downsample))
        if self.mask is not None:
            object.__setattr__(self, "mask", os.fspath(self.mask))
        object.__setattr__(self, "mask_options", dict(self.mask_options or {}))
        downsample_factors(self.downsample, self.target_voxel_mm, (1.0, 1.0, 1.0))
        if self.mask_strategy not in MASK_STRATEGIES:
            raise ConfigError(f"mask_strategy={self.mask_strategy!r} must be one of {list(MASK_STRATEGIES)}",
                              where="preprocessing")
        if self.confounds not in (None, "motion"):
            raise ConfigError(f"confounds={self.confounds!r} must be null or 'motion'", where="preprocessing")
        if not 0.0 <= float(self.group_threshold) <= 1.0:
            raise ConfigError(f"group_threshold={self.group_threshold} must lie in [0, 1]", where="preprocessing")
        if int(self.margin) < 0:
            raise ConfigError(f"margin={self.margin} must be >= 0", where="preprocessing")
        if self.nonfinite not in ("error", "zero"):
            raise ConfigError(f"nonfinite={self.nonfinite!r} must be 'error' or 'zero'", where="preprocessing")
        if self.outliers not in OUTLIER_METHODS:
            raise ConfigError(f"outliers={self.outliers!r} must be one of {list(OUTLIER_METHODS)}",
                              where="preprocessing")
        for name in ("dvars_threshold", "fd_threshold"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ConfigError(f"{name}={value!r} must be a number > 0 or null", where="preprocessing")
        if not 0.0 <= float(self.min_coverage) <= 1.0:
            raise ConfigError(f"min_coverage={self.min_coverage} must lie in [0, 1]", where="preprocessing")
        if self.mask_volumes is not None and int(self.mask_volumes) < 1:
            raise ConfigError(f"mask_volumes={self.mask_volumes} must be >= 1 or null", where="preprocessing")

    @classmethod
    def from_dict(cls, given: PreprocessingSpec | Mapping[str, Any] | None = None,
                  where: str = "preprocessing", **overrides: Any) -> PreprocessingSpec:
        """A spec from a config mapping (unknown keys are an error naming ``where``)."""
        base = given.to_dict() if isinstance(given, PreprocessingSpec) else dict(given or {})
        values = {**base, **overrides}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown preprocessing key(s) {unknown}", where=where,
                              fix=f"use only {sorted(names)}")
        return cls(**values)

    def replace(self, **changes: Any) -> PreprocessingSpec:
        return dataclasses.replace(self, **changes)

    def resolved(self, n_subjects: int) -> PreprocessingSpec:
        """The spec for a model over ``n_subjects`` subjects: ``"auto"`` becomes ``"subject"`` or ``"group"``."""
        if self.mask_strategy != "auto":
            return self
        return self.replace(mask_strategy="subject" if n_subjects == 1 else "group")

    @property
    def censoring(self) -> bool:
        """Whether outlier volumes are censored (the method is on and a threshold is set)."""
        return self.outliers == "censor" and (self.dvars_threshold is not None or self.fd_threshold is not None)

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (the inverse of :meth:`from_dict`)."""
        out = dataclasses.asdict(self)
        if isinstance(out["downsample"], tuple):
            out["downsample"] = list(out["downsample"])
        return out

    def digest(self, *extra: Any) -> str:
        """Short digest of the spec (and ``extra``, e.g. the dataset and space): the cache folder name."""
        return json_digest([self.to_dict(), *extra])

    def cache_params(self, space: str) -> dict[str, Any]:
        """The parameters a cached run's fingerprint holds (what changes the cached bytes)."""
        if self.mask is None and self.mask_strategy == "auto":
            raise ConfigError("mask_strategy 'auto' must be resolved for a model before caching",
                              where="preprocessing", fix="call spec.resolved(n_subjects) first")
        group = self.mask is None and self.mask_strategy == "group"
        return {
            "space": space,
            "downsample": list(self.downsample) if not np.isscalar(self.downsample) else int(self.downsample),
            "target_voxel_mm": self.target_voxel_mm,
            "margin": int(self.margin),
            "detrend": bool(self.detrend),
            "standardize": bool(self.standardize),
            "high_pass": self.high_pass,
            "confounds": self.confounds,
            "mask_strategy": "user" if self.mask is not None else self.mask_strategy,
            "group_threshold": float(self.group_threshold) if group else None,
            "mask_volumes": self.mask_volumes,
            "mask_options": dict(self.mask_options),
            "nonfinite": self.nonfinite,
            "outliers": self.outliers if self.censoring else "none",
            "dvars_threshold": self.dvars_threshold if self.censoring else None,
            "fd_threshold": self.fd_threshold if self.censoring else None,
            "min_coverage": float(self.min_coverage),
            "dtype": "float16",
        }
