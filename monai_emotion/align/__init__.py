"""Functional alignment: piecewise Procrustes (:mod:`.procrustes`), the cache stage (:mod:`.stage`) and the
alignment saved with a model / applied to a new subject at inference (:mod:`.model`)."""

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
