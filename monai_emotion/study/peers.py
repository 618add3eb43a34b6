"""The field's standard decoder beside ours: ``nilearn.decoding.Decoder`` on the same folds, masks, labels.

A user choosing this package over ten lines of nilearn wants to see those ten lines' score
next to the CNN's. :class:`NilearnPeer` fits ``Decoder(estimator="logistic_l2",
screening_percentile=20)`` on each model's training items, with its regularisation chosen by
nilearn's own cross-validation, leave one *training* run out (``LeaveOneGroupOut`` on the runs:
the held-out and validation runs never reach the fit), and predicts each test set. The volumes
are the study's own cached frames (the same mask, censoring and per-run cleaning as the CNN
and the linear baseline), handed to nilearn as 4D images on the cache grid with the model's
mask, so the peer differs from the baseline only by its recipe.

Speed comes from nilearn's own knobs, not from a re-implementation: three values of ``C``
instead of eight (``param_grid``), and one process per model. The study's ``peers`` section
(:class:`PeerSettings`) sets them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from monai_emotion.study.baseline import model_items, prediction_table
from monai_emotion.study.features import DataViews, FeatureStore
from monai_emotion.study.plan import ModelSpec
from monai_emotion.study.settings import PEERS, PeerSettings

__all__ = ["PEERS", "PeerSettings", "NilearnPeer"]

class NilearnPeer:
    """``nilearn.decoding.Decoder`` per model spec, on the study's cached frames.

    Parameters
    ----------
    views
        Items and frames per model grid (the same the linear baseline uses).
    settings
        The study's ``peers`` section.
    classes
        Class names, in label-index order.
    """

    name = "nilearn"

    def __init__(self, views: DataViews, settings: PeerSettings, classes: Sequence[str]) -> None:
        self.views = views
        self.settings = settings
        self.classes = list(classes)

    def _images(self, store: FeatureStore, items: Sequence[dict]) -> Any:
        import nibabel as nib

        flat = np.zeros((len(items), int(np.prod(store.shape))), dtype=np.float32)
        flat[:, store.columns] = store.matrix(items)
        return nib.Nifti1Image(np.moveaxis(flat.reshape(len(items), *store.shape), 0, -1), store.affine)

    def _mask(self, store: FeatureStore, items: Sequence[dict]) -> Any:
        import nibabel as nib

        mask = np.zeros(int(np.prod(store.shape)), dtype=np.uint8)
        mask[store.columns] = 1
        return nib.Nifti1Image(mask.reshape(store.shape), store.affine)

    def decoder(self, store: FeatureStore, items: Sequence[dict]) -> Any:
        """The unfitted nilearn ``Decoder`` (inner CV: leave one training run out)."""
        from nilearn.decoding import Decoder
        from sklearn.model_selection import LeaveOneGroupOut

        s = self.settings
        return Decoder(estimator=s.estimator, mask=self._mask(store, items), cv=LeaveOneGroupOut(),
                       param_grid={"C": list(s.C)}, screening_percentile=s.screening_percentile,
                       scoring="balanced_accuracy", standardize=True, n_jobs=1)

    def fit(self, spec: ModelSpec) -> tuple[Any, dict[str, list[dict]], FeatureStore]:
        """The fitted decoder of ``spec``, the items of its test sets and the frames."""
        from threadpoolctl import threadpool_limits

        items, store = self.views.model_data(spec)  # aligned frames when the study aligns this model
        train, tests = model_items(items, spec)
        # leave one run out (a run number: for several subjects, that run of all of them)
        groups = np.array([int(i["run"]) for i in train], dtype=object)
        if len(set(groups)) < 2:
            # one training run (a tiny study): inner folds are its two halves in time
            order = np.argsort([i["frame"] for i in train], kind="stable")
            groups[order] = np.where(np.arange(len(train)) < len(train) // 2, "first", "second")
        y = np.array([self.classes[int(i["label"])] for i in train], dtype=object)
        decoder = self.decoder(store, train)
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decoder.fit(self._images(store, train), y, groups=groups)
        return decoder, tests, store

    def fit_predict(self, spec: ModelSpec) -> dict[str, pd.DataFrame]:
        """Predictions for each test set of ``spec`` (the linear baseline's columns)."""
        decoder, tests, store = self.fit(spec)
        out = {}
        for name, tested in tests.items():
            frame = prediction_table(tested, self.classes)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frame["predicted_label"] = [str(p) for p in decoder.predict(self._images(store, tested))]
            out[name] = frame
        return out
