"""Functional alignment: piecewise Procrustes (:mod:`.procrustes`) and the cache stage (:mod:`.stage`)."""

from monai_emotion.align.procrustes import Parcellation, PiecewiseProcrustes, parcellate
from monai_emotion.align.stage import (
    METHODS,
    AlignmentSpec,
    align_cache,
    check_alignment,
    fit_runs_for,
    reference_for,
)

__all__ = ["METHODS", "AlignmentSpec", "Parcellation", "PiecewiseProcrustes", "align_cache", "check_alignment", "fit_runs_for",
           "parcellate", "reference_for"]
