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

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monai_emotion.errors import ConfigError
from monai_emotion.fileio import read_json
from monai_emotion.study.baseline import model_items, prediction_table
from monai_emotion.study.features import DataViews, FeatureStore
from monai_emotion.study.plan import ModelSpec

__all__ = ["PEERS", "PeerSettings", "NilearnPeer"]

#: the peer decoders a study can run (their decoder names in ``results.csv``)
PEERS: tuple[str, ...] = ("nilearn",)


@dataclass(frozen=True)
class PeerSettings:
    """The study's ``peers`` section: which peer decoders run, and their nilearn knobs.

    Parameters
    ----------
    decoders
        Peer decoders to fit (a subset of :data:`PEERS`; ``[]`` turns them off).
    estimator
        ``nilearn.decoding.Decoder``'s ``estimator`` (``logistic_l2``: the field's default).
    screening_percentile
        Percentage of voxels kept by the univariate screening (nilearn's default, 20).
    C
        The regularisation values nilearn's inner cross-validation chooses from.
    experiments
        The experiments that get a peer row (default every one the study runs).
    """

    decoders: tuple[str, ...] = PEERS
    estimator: str = "logistic_l2"
    screening_percentile: float = 20.0
    C: tuple[float, ...] = (0.1, 1.0, 10.0)
    experiments: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        decoders = (self.decoders,) if isinstance(self.decoders, str) else tuple(self.decoders)
        unknown = [d for d in decoders if d not in PEERS]
        if unknown:
            raise ConfigError(f"peers.decoders: unknown {unknown}", fix=f"choose from {list(PEERS)} or []")
        object.__setattr__(self, "decoders", decoders)
        if not 0 < float(self.screening_percentile) <= 100:
            raise ConfigError(f"peers.screening_percentile={self.screening_percentile} must lie in (0, 100]")
        values = tuple(float(c) for c in (self.C if isinstance(self.C, Sequence) else [self.C]))
        if not values or min(values) <= 0:
            raise ConfigError(f"peers.C={self.C!r} must be one or more numbers > 0")
        object.__setattr__(self, "C", values)
        if self.experiments is not None:
            object.__setattr__(self, "experiments", tuple(self.experiments))

    @classmethod
    def from_dict(cls, given: Mapping[str, Any] | None) -> PeerSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(given or {}) - names)
        if unknown:
            raise ConfigError(f"unknown peers key(s) {unknown}", where="peers", fix=f"use only {sorted(names)}")
        return cls(**dict(given or {}))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["decoders"], out["C"] = list(self.decoders), list(self.C)
        if self.experiments is not None:
            out["experiments"] = list(self.experiments)
        return out

    @property
    def enabled(self) -> bool:
        return bool(self.decoders)

    def runs_for(self, spec: ModelSpec) -> bool:
        """Whether ``spec`` gets a peer row (permuted models never do)."""
        return spec.permutation is None and (self.experiments is None or spec.experiment in self.experiments)


def _grid_of(path: str) -> tuple[tuple[int, ...], np.ndarray]:
    meta = read_json(Path(path).with_suffix(".json")) or {}
    return tuple(int(s) for s in meta["shape"][1:]), np.asarray(meta["affine"], dtype=float)


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

        shape, affine = _grid_of(items[0]["image"])
        flat = np.zeros((len(items), int(np.prod(shape))), dtype=np.float32)
        flat[:, store.columns] = store.matrix(items)
        return nib.Nifti1Image(np.moveaxis(flat.reshape(len(items), *shape), 0, -1), affine)

    def _mask(self, store: FeatureStore, items: Sequence[dict]) -> Any:
        import nibabel as nib

        shape, affine = _grid_of(items[0]["image"])
        mask = np.zeros(int(np.prod(shape)), dtype=np.uint8)
        mask[store.columns] = 1
        return nib.Nifti1Image(mask.reshape(shape), affine)

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

        items = self.views.table(spec.subjects).items(spec.lag, spec.permutation)
        store = self.views.store(spec.subjects)
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
