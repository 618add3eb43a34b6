"""MONAI-style data lists: one item per labelled volume of a discovered run."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import pandas as pd

from monai_emotion.data.labels import CLASSES, NONE, TIE
from monai_emotion.data.studyforrest import Discovery, RunInfo, normalize_subject
from monai_emotion.errors import DataError
from monai_emotion.fileio import atomic_write_json, load_json

__all__ = ["LabelledRun", "labelled_items", "make_datalist", "save_datalist", "load_datalist", "class_counts"]


class LabelledRun(Protocol):
    """What :func:`labelled_items` needs of a run: a discovered run or a cached one."""

    @property
    def subject(self) -> str: ...

    @property
    def run(self) -> int: ...

    @property
    def path(self) -> str: ...

    @property
    def n_volumes(self) -> int: ...


def labelled_items(
    runs: Iterable[LabelledRun],
    labels: pd.DataFrame,
    *,
    drop: Iterable[str] = (NONE, TIE),
    soft: bool = False,
    dimensions: Sequence[str] = (),
) -> list[dict]:
    """One item per existing volume of each run whose label is not in ``drop``: the items rule.

    The bundle (:func:`make_datalist`, through ``prepare_experiment``) and the study's linear
    baseline (:class:`~monai_emotion.study.features.VolumeTable`, relabelling for every lag
    and permutation) both build their items here, so they are the same items.

    Parameters
    ----------
    runs
        Runs in item order (:class:`~monai_emotion.data.studyforrest.RunInfo`, or any object
        with ``subject``, ``run``, ``path`` and ``n_volumes``); ``path`` becomes ``image``.
    labels
        Per-volume table from :func:`~monai_emotion.data.labels.label_volumes` (or shifted by
        :func:`~monai_emotion.data.labels.circular_shift_labels`); the same movie labels serve
        every subject.
    drop
        Labels left out (``()``: every volume; NONE and TIE then get ``label`` -1).
    soft
        Add ``soft``: the fraction of observers per class.
    dimensions
        Columns of ``labels`` added to each item under their names, as floats (``("valence",
        "arousal")`` after :func:`~monai_emotion.data.dimensions.add_dimensions`); none by default.

    Returns
    -------
    list of dict
        ``{"image", "frame", "label", "label_name", "subject", "run", "movie_time",
        "label_time"}`` (and ``soft``, and the ``dimensions``). Frames beyond a short run's end
        get no item.
    """
    classes = list(labels.attrs.get("classes", CLASSES))
    index = {c: k for k, c in enumerate(classes)}
    dropped = list(drop)
    by_run = {int(r): frame for r, frame in labels.groupby("run", sort=False)}
    dims = [str(d) for d in dimensions]
    missing = [d for d in dims if d not in labels]
    if missing:
        raise DataError(f"the label table has no {missing} column(s)", where="labelled_items",
                        fix="add them with monai_emotion.data.dimensions.add_dimensions")
    items: list[dict] = []
    for info in runs:
        frame = by_run.get(int(info.run))
        if frame is None:
            raise DataError(f"no labels for run {info.run}", info.path,
                            fix="derive labels for every run you use (check --runs / volumes_per_run)")
        frame = frame[(frame["volume"] < info.n_volumes) & ~frame["label"].isin(dropped)]
        names = frame["label"].tolist()
        columns = [frame["volume"].tolist(), [index.get(n, -1) for n in names], names,
                   frame["movie_time"].astype(float).tolist(), frame["label_time"].astype(float).tolist()]
        if soft:
            columns.append(frame[[f"soft_{c}" for c in classes]].astype(float).to_numpy().tolist())
        columns += [frame[d].astype(float).tolist() for d in dims]
        for values in zip(*columns, strict=True):
            item = {"image": info.path, "frame": int(values[0]), "label": values[1], "label_name": str(values[2]),
                    "subject": info.subject, "run": info.run, "movie_time": values[3], "label_time": values[4]}
            if soft:
                item["soft"] = values[5]
            item.update(zip(dims, values[len(values) - len(dims):], strict=True))
            items.append(item)
    return items


def make_datalist(
    runs: Discovery | Sequence[RunInfo],
    labels: pd.DataFrame,
    *,
    drop: Iterable[str] = (NONE, TIE),
    subjects: Iterable[str | int] | None = None,
    run_ids: Iterable[int] | None = None,
    soft: bool = False,
) -> dict:
    """Pair each existing volume of each run with its label (:func:`labelled_items`).

    Parameters
    ----------
    runs
        Output of :func:`~monai_emotion.data.studyforrest.discover_runs` (or its runs).
    labels
        Per-volume table from :func:`~monai_emotion.data.labels.label_volumes`.
    drop
        Labels left out (NONE and TIE by default: the seed trained on 5 classes). Pass
        ``()`` to keep every volume (inference scores all of them; their ``label`` is -1).
    subjects, run_ids
        Keep only these.
    soft
        Add ``soft``: the fraction of observers per class.

    Returns
    -------
    dict
        ``{"classes": [...], "labels": {label parameters}, "counts": {...}, "items": [...]}``
        with the items of :func:`labelled_items`.
    """
    run_list = runs.runs if isinstance(runs, Discovery) else list(runs)
    keep_subjects = {normalize_subject(s) for s in subjects} if subjects is not None else None
    keep_runs = {int(r) for r in run_ids} if run_ids is not None else None
    chosen = [info for info in run_list if (keep_subjects is None or info.subject in keep_subjects)
              and (keep_runs is None or info.run in keep_runs)]
    items = labelled_items(chosen, labels, drop=drop, soft=soft)
    classes = list(labels.attrs.get("classes", CLASSES))
    params = {k: v for k, v in labels.attrs.items() if k != "observer_files"}
    return {"classes": classes, "labels": params, "counts": class_counts(items), "items": items}


def class_counts(items: Iterable[dict]) -> dict[str, int]:
    """Number of items per label name."""
    return dict(sorted(Counter(i["label_name"] for i in items).items()))


def save_datalist(datalist: dict, path: str | os.PathLike) -> Path:
    """Write a data list as JSON (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, datalist, DataError, indent=1)


def load_datalist(path: str | os.PathLike) -> dict:
    """Read a data list written by :func:`save_datalist`, checking its shape."""
    data = load_json(path, DataError, fix="create the data list with make_datalist")
    if not isinstance(data, dict) or "items" not in data or "classes" not in data:
        raise DataError("not a monai-emotion data list (needs 'classes' and 'items')", path,
                        fix="recreate it with make_datalist")
    return data
