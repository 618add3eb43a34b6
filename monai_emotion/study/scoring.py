"""Scores of prediction tables, per subject and over subjects: shared by results and permutations.

A *unit* is what one number describes: a subject (its predictions pooled over the run folds and
models that tested it), ``POOLED`` (every prediction of the experiment and test set together) or
``MEAN`` (the mean of the subjects' scores: the headline, as the seed reported per-subject models).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from monai_emotion.metrics import classification_report_from_confusion, confusion_from_labels

__all__ = ["POOLED", "MEAN", "report_of", "balanced_accuracy_of", "unit_scores"]

POOLED = "POOLED"
MEAN = "MEAN"
_GROUP = ["decoder", "experiment", "test_set"]


def _indices(frame: pd.DataFrame, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    index = {c: k for k, c in enumerate(classes)}
    return (frame["true_label"].map(index).to_numpy(dtype=np.int64),
            frame["predicted_label"].map(index).to_numpy(dtype=np.int64))


def report_of(frame: pd.DataFrame, classes: Sequence[str]) -> dict[str, Any]:
    """The full classification report (:func:`classification_report_from_confusion`) of a table."""
    t, p = _indices(frame, classes)
    return classification_report_from_confusion(confusion_from_labels(t, p, len(classes)), list(classes))


def balanced_accuracy_of(frame: pd.DataFrame, classes: Sequence[str]) -> float:
    """Balanced accuracy (mean recall over the classes present) of a prediction table."""
    value = report_of(frame, classes)["balanced_accuracy"]
    return float("nan") if value is None else float(value)


def unit_scores(predictions: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Balanced accuracy per (decoder, experiment, test set) and unit (subject, POOLED, MEAN).

    Parameters
    ----------
    predictions
        Rows with ``decoder, experiment, test_set, subject, true_label, predicted_label``.
    classes
        Class names.

    Returns
    -------
    pandas.DataFrame
        ``decoder, experiment, test_set, unit, balanced_accuracy``.
    """
    rows = []
    for key, group in predictions.groupby(_GROUP, sort=True):
        per_subject = {str(s): balanced_accuracy_of(g, classes) for s, g in group.groupby("subject", sort=True)}
        for unit, value in per_subject.items():
            rows.append((*key, unit, value))
        rows.append((*key, POOLED, balanced_accuracy_of(group, classes)))
        rows.append((*key, MEAN, float(np.nanmean(list(per_subject.values())))))
    return pd.DataFrame(rows, columns=[*_GROUP, "unit", "balanced_accuracy"])
