"""What every stage of a study run shares once the data is prepared: one typed value.

:func:`prepare_context` resolves the data (making a synthetic dataset once), asks the bundle
for every labelled item (which builds the preprocessing cache once), plans the models and
builds the baseline's :class:`~monai_emotion.study.features.VolumeTable`. The CNN runner, the
linear baseline, :func:`~monai_emotion.study.outputs.build_outputs` and the figures read
the :class:`StudyContext` it returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai_emotion.fileio import json_digest
from monai_emotion.study.alignment import LinearAligner
from monai_emotion.study.bundle import CNNRunner, base_overrides, bundle_experiment, captured
from monai_emotion.study.config import Study
from monai_emotion.study.features import DataViews, VolumeTable
from monai_emotion.study.plan import StudyPlan, plan_study

__all__ = ["StudyContext", "prepare_context", "resolve_data"]


def resolve_data(study: Study, log: Callable[[str], None] = print) -> tuple[str, str, str | None]:
    """``(dataset_dir, annotations_dir, synthetic root or None)``; makes a synthetic dataset once."""
    data = study.data
    if data.dataset_dir:
        return data.dataset_dir, str(data.annotations_dir), None
    from monai_emotion.data.synthetic.demo import ensure_demo_dataset
    from monai_emotion.runtime import user_cache_dir

    params = dict(data.synthetic or {})
    root = data.synthetic_root
    if root is None and any(isinstance(v, (dict, list)) for v in params.values()):
        # nested parameters make poor folder names: name the folder by their digest instead
        root = str(user_cache_dir() / f"synthetic-{json_digest(params)}")
    start = time.perf_counter()
    path = ensure_demo_dataset(root, **params)
    log(f"synthetic data: {path} ({time.perf_counter() - start:.1f} s)")
    return str(path), str(path / "annotations"), str(path)


@dataclass(frozen=True)
class StudyContext:
    """The prepared study: settings, output folder, data, plan and the runners' shared pieces.

    Attributes
    ----------
    study
        The study config.
    root
        The output folder (``results/<study>`` or ``--out``).
    dataset_dir, annotations_dir, synthetic_root
        The data as resolved (``synthetic_root``: the synthetic dataset, else ``None``).
    base
        Bundle overrides shared by every model (:func:`~monai_emotion.study.bundle.base_overrides`).
    experiment
        The bundle's ``experiment`` with every labelled item in ``train`` (unpermuted).
    classes
        Class names, in label-index order.
    plan
        Every model of the study.
    table
        The baseline's items at any lag and permutation (group grid: every subject).
    views
        Items and frames per model grid (a single-subject model's own mask under
        ``mask_strategy "auto"``).
    cnn
        Trains and tests the CNN models through the bundle.
    log
        Where progress lines go.
    """

    study: Study
    root: Path
    dataset_dir: str
    annotations_dir: str
    synthetic_root: str | None
    base: Mapping[str, Any]
    experiment: Mapping[str, Any]
    classes: tuple[str, ...]
    plan: StudyPlan
    table: VolumeTable
    views: DataViews
    cnn: CNNRunner
    log: Callable[[str], None] = print

    def describe(self) -> str:
        """One line about the data and the plan."""
        described = self.plan.describe()
        return (f"data: {len(self.experiment['train'])} labelled volumes, subjects {described['subjects']}, "
                f"grid {self.experiment['spatial_shape']}; run folds {described['run_folds']}; "
                f"subject folds {described['subject_folds']}; models {described['models']}")


def prepare_context(study: Study, root: Path, log: Callable[[str], None] = print) -> StudyContext:
    """Resolve the data, prepare the bundle's items (and cache) once, plan the models.

    Parameters
    ----------
    study
        The study config.
    root
        The output folder.
    log
        Where progress lines go.

    Returns
    -------
    StudyContext
    """
    dataset_dir, annotations_dir, synthetic_root = resolve_data(study, log)
    base = base_overrides(study, dataset_dir, annotations_dir)
    with captured(root / "logs" / "prepare.log"):
        # the bundle's own data preparation (builds the cache once), every item in "train"
        experiment = bundle_experiment(study, {**base, "data#split": {"kind": "runs"}})
        subjects = sorted({str(i["subject"]) for i in experiment["train"]})
        single = any(e in study.experiments for e in ("within", "leaky"))
        own_masks = {}
        if single and study.preprocessing.mask_strategy == "auto" and len(subjects) > 1:
            # single-subject models see their subject's own mask (the CNN gets it from the bundle)
            own_masks = {s: bundle_experiment(study, {**base, "data#subjects": [s], "data#split": {"kind": "runs"}})
                         for s in subjects}
    classes = tuple(experiment["classes"])
    table = VolumeTable(experiment)
    return StudyContext(
        study=study, root=root, dataset_dir=dataset_dir, annotations_dir=annotations_dir,
        synthetic_root=synthetic_root, base=base, experiment=experiment, classes=classes,
        plan=plan_study(experiment["train"], study, len(classes)), table=table,
        # cross/unseen linear models read the CNN's aligned frames when the study aligns
        views=DataViews(experiment, own_masks, context=study.training.temporal_context,
                        aligner=LinearAligner(study.alignment, experiment) if study.alignment.method != "none" else None),
        cnn=CNNRunner(study, root / "models" / "cnn", base), log=log,
    )
