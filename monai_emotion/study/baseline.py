"""The linear decoder the field would try first, on the CNN's own volumes and splits.

``StandardScaler -> SelectKBest(f_classif)`` (voxel screening) ``or PCA -> LogisticRegression``,
fitted on a model's training items and scored on each of its test sets. With a temporal
context k > 1 (``training.temporal_context``) a sample is the mean of the CNN's k-volume
window. Items and splits come from the bundle's own functions (``make_splits`` on :class:`~monai_emotion.study.features.VolumeTable`
items, built by the bundle's item builder), so a linear model and the CNN of the same :class:`~monai_emotion.study.plan.ModelSpec`
see exactly the same volumes. The validation run, which the CNN uses only to pick its
checkpoint, is not used here.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from monai_emotion.experiment import make_splits
from monai_emotion.study.features import DataViews, FeatureStore, select_subjects
from monai_emotion.study.plan import ModelSpec
from monai_emotion.study.settings import BaselineSettings

__all__ = ["make_decoder", "model_items", "prediction_table", "LinearBaseline", "PREDICTION_COLUMNS"]

#: the columns of a predictions table (as the bundle's predictions.csv, plus probabilities)
PREDICTION_COLUMNS = ("subject", "run", "volume", "movie_time", "true_label", "predicted_label")


def make_decoder(settings: BaselineSettings, n_features: int) -> Any:
    """The scikit-learn pipeline of the baseline (``settings``: the study's ``baseline`` section)."""
    from sklearn.decomposition import PCA
    from sklearn.feature_selection import SelectKBest, f_classif
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if settings.reduction == "pca":
        reduce = PCA(n_components=settings.components, svd_solver="randomized", random_state=0)
    else:
        reduce = SelectKBest(f_classif, k="all" if settings.k >= n_features else settings.k)
    classifier = LogisticRegression(C=settings.C, max_iter=settings.max_iter, tol=settings.tol)
    return make_pipeline(StandardScaler(), reduce, classifier)


def _split(items: Sequence[dict], subjects: Sequence[str], split: Mapping[str, Any]) -> dict[str, list[dict]]:
    with warnings.catch_warnings(record=True):  # the leaky split warns on purpose
        return make_splits(select_subjects(items, subjects), dict(split))


def model_items(items: Sequence[dict], spec: ModelSpec) -> tuple[list[dict], dict[str, list[dict]]]:
    """``spec``'s training items and the items of each of its test sets, by the bundle's ``make_splits``."""
    parts = _split(items, spec.subjects, spec.split)
    tests = {}
    for test in spec.test_sets:
        same = tuple(test.subjects) == tuple(spec.subjects) and test.split == spec.split
        tests[test.name] = parts["test"] if same else _split(items, test.subjects, test.split)["test"]
    return parts["train"], tests


def prediction_table(items: Sequence[dict], classes: Sequence[str]) -> pd.DataFrame:
    """The item columns of a predictions table (:data:`PREDICTION_COLUMNS` but ``predicted_label``)."""
    return pd.DataFrame({
        "subject": [i["subject"] for i in items],
        "run": [int(i["run"]) for i in items],
        "volume": [int(i["frame"]) for i in items],
        "movie_time": [float(i["movie_time"]) for i in items],
        "true_label": np.array(list(classes), dtype=object)[[int(i["label"]) for i in items]],
    })


class LinearBaseline:
    """Fit and score the linear decoder for any model spec and label permutation.

    Parameters
    ----------
    views
        Items at any lag/permutation and the cached frames, per model grid.
    settings
        The study's ``baseline`` section.
    classes
        Class names, in label-index order.
    """

    def __init__(self, views: DataViews, settings: BaselineSettings, classes: Sequence[str]) -> None:
        self.views = views
        self.settings = settings
        self.classes = list(classes)

    def fit_predict(self, spec: ModelSpec, with_probabilities: bool = False) -> dict[str, pd.DataFrame]:
        """Train on ``spec``'s training items; predictions for each of its test sets.

        Returns
        -------
        dict
            Test set name -> table with :data:`PREDICTION_COLUMNS` (label names), plus
            ``prob_<class>`` columns when ``with_probabilities``.
        """
        from threadpoolctl import threadpool_limits

        items, store = self.views.model_data(spec)
        train, tests = model_items(items, spec)
        y = np.fromiter((i["label"] for i in train), dtype=np.int64, count=len(train))
        decoder = make_decoder(self.settings, store.n_features)
        # BLAS threads fight for shared cores and make these small fits 10x slower
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decoder.fit(store.matrix(train, self.views.context), y)
            return {name: self._table(decoder, store, tested, with_probabilities) for name, tested in tests.items()}

    def _table(self, decoder: Any, store: FeatureStore, items: list[dict], with_probabilities: bool) -> pd.DataFrame:
        x = store.matrix(items, self.views.context)
        names = np.array(self.classes, dtype=object)
        known = decoder.classes_
        frame = prediction_table(items, self.classes)
        if with_probabilities:
            prob = np.zeros((len(items), len(self.classes)))
            prob[:, known] = decoder.predict_proba(x)
            frame["predicted_label"] = names[prob.argmax(axis=1)]
            for k, name in enumerate(self.classes):
                frame[f"prob_{name}"] = prob[:, k]
        else:
            frame["predicted_label"] = names[decoder.predict(x)]
        return frame
