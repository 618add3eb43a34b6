"""Labelled items under any lag and label permutation, and their cached frames as a matrix.

The linear baseline refits hundreds of times (one fit per model per permutation). Asking the
bundle's ``prepare_experiment`` each time would re-read every NIfTI header and the cache
fingerprints (~0.5 s a call). :class:`VolumeTable` instead derives the labels once per lag with
the bundle's label rule and turns them into items with the bundle's own item builder
(:func:`~monai_emotion.data.datalist.labelled_items`), so its items are the bundle's (a unit
test holds them equal, permuted and not). :class:`FeatureStore` reads each cached run once
(float16 memory maps, kept open) and gathers frames with one fancy index per run.
:class:`DataViews` gives each model the table and frames of its own grid: the group grid for
models over several subjects, the subject's own mask for a single-subject model under
``mask_strategy "auto"`` (as the bundle gives the CNN).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monai_emotion.data.cache import censored_frames
from monai_emotion.data.context import check_temporal_context, context_frames
from monai_emotion.data.datalist import labelled_items
from monai_emotion.data.labels import LabelRule, circular_shift_labels
from monai_emotion.errors import DataError
from monai_emotion.fileio import read_json

__all__ = ["CachedRun", "VolumeTable", "FeatureStore", "DataViews", "select_subjects"]


def select_subjects(items: Sequence[dict], subjects: Sequence[str]) -> list[dict]:
    """Items of these subjects, in their original order (as ``discover_runs(subjects=...)`` gives)."""
    wanted = set(subjects)
    return [i for i in items if i["subject"] in wanted]


@dataclass(frozen=True)
class CachedRun:
    """One cached run: its subject, run, ``.npy`` path and number of frames."""

    subject: str
    run: int
    path: str
    n_volumes: int
    censored: tuple[int, ...] = ()


class VolumeTable:
    """Every volume of the study's cached runs, labelled by the bundle's rule at any lag/permutation.

    Parameters
    ----------
    experiment
        The bundle's ``experiment`` (unpermuted, every labelled item in ``train``): gives the
        cached runs, their order, the annotation folder and the label rule.
    rule
        The label rule (default: the one the bundle used, ``experiment["label_rule"]``); its
        ``lag`` is replaced by each call's.
    """

    def __init__(self, experiment: Mapping[str, Any], rule: LabelRule | None = None) -> None:
        self.annotations_dir = str(experiment["annotations_dir"])
        self.classes = list(experiment["classes"])
        self.rule = LabelRule.from_dict(rule if rule is not None else experiment["label_rule"])
        paths: dict[tuple[str, int], str] = {}
        for item in experiment["train"]:
            paths.setdefault((str(item["subject"]), int(item["run"])), str(item["image"]))
        self.runs = tuple(CachedRun(subject, run, path, int(np.load(path, mmap_mode="r").shape[0]),
                                    censored_frames(path))
                          for (subject, run), path in paths.items())
        self._censored = {r.path: set(r.censored) for r in self.runs if r.censored}
        self._labels: dict[float, pd.DataFrame] = {}
        self._items: dict[tuple[float, int | None], list[dict]] = {}

    @property
    def paths(self) -> list[str]:
        """The cached runs' files, in item order."""
        return [r.path for r in self.runs]

    def labels(self, lag: float) -> pd.DataFrame:
        """The per-volume label table at ``lag`` (derived once)."""
        lag = float(lag)
        if lag not in self._labels:
            self._labels[lag] = self.rule.replace(lag=lag).derive(self.annotations_dir)
        return self._labels[lag]

    def items(self, lag: float, permutation: int | None = None) -> list[dict]:
        """Labelled items (NONE and TIE dropped) at ``lag``, labels shifted by ``permutation``."""
        key = (float(lag), None if permutation is None else int(permutation))
        if key in self._items:
            return self._items[key]
        table = self.labels(lag)
        if permutation is not None:
            table = circular_shift_labels(table, int(permutation))
            # keep only the current permutation (at every lag): each is used by every model once
            for stale in [k for k in self._items if k[1] is not None and k[1] != key[1]]:
                del self._items[stale]
        items = labelled_items(self.runs, table)
        if self._censored:  # outlier volumes: out of training and scoring, as in the bundle
            items = [i for i in items if int(i["frame"]) not in self._censored.get(i["image"], ())]
        self._items[key] = items
        return self._items[key]


class FeatureStore:
    """Cached frames as rows of a float32 matrix over the in-mask voxels.

    Runs are held in RAM as float32 when they fit in ``max_ram_bytes`` (one fancy index per
    request), else read from their float16 memory maps, run by run.

    Parameters
    ----------
    paths
        Cached run files (``.npy``, frame-major ``(T, X, Y, Z)``).
    max_ram_bytes
        Budget for holding all runs in RAM.
    """

    def __init__(self, paths: Sequence[str], max_ram_bytes: float = 4e9) -> None:
        self.paths = list(dict.fromkeys(paths))
        maps = [np.load(p, mmap_mode="r") for p in self.paths]
        shapes = {m.shape[1:] for m in maps}
        if len(shapes) != 1:
            raise DataError(f"cached runs have different grids {sorted(shapes)}", self.paths[0],
                            fix="cache all subjects on one grid (preprocessing.mask_strategy 'group')")
        # voxels outside the mask are stored as exact zeros: drop them once for every fit
        used = np.zeros(int(np.prod(maps[0].shape[1:])), dtype=bool)
        for m in maps:
            used |= np.asarray(m[: min(10, m.shape[0])], dtype=np.float32).reshape(-1, used.size).std(axis=0) > 0
        self.columns = np.flatnonzero(used)
        self.shape = tuple(int(n) for n in maps[0].shape[1:])
        self._affine: np.ndarray | None = None
        lengths = np.array([m.shape[0] for m in maps])
        self._censored: dict[str, Any] = {}  # per run, read when a window first needs it
        self.offsets = dict(zip(self.paths, np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist(), strict=True))
        self._maps = dict(zip(self.paths, maps, strict=True))
        self.in_ram = float(lengths.sum()) * self.columns.size * 4 <= max_ram_bytes
        self._data = None
        if self.in_ram:
            self._data = np.concatenate(
                [np.asarray(m, dtype=np.float32).reshape(m.shape[0], -1)[:, self.columns] for m in maps])

    @property
    def affine(self) -> np.ndarray:
        """The grid's voxel-to-world affine, from the first run's cache sidecar (read once)."""
        if self._affine is None:
            meta = read_json(Path(self.paths[0]).with_suffix(".json")) or {}
            self._affine = np.asarray(meta["affine"], dtype=float)
        return self._affine

    @property
    def n_features(self) -> int:
        return int(self.columns.size)

    def matrix(self, items: Sequence[dict], context: int = 1) -> np.ndarray:
        """``(len(items), n_features)`` float32 frames of ``items`` (rows in item order).

        ``context`` k > 1: each row is the mean of the item's k-volume window, taken within its
        run by :func:`~monai_emotion.data.context.context_frames` (the CNN's windows).
        """
        if check_temporal_context(context, where="FeatureStore.matrix(context=...)") == 1:
            return self._frames(items)
        for path in {i["image"] for i in items} - self._censored.keys():
            self._censored[path] = censored_frames(path)
        windows = [(i, context_frames(int(i["frame"]), context, self._maps[i["image"]].shape[0],
                                      self._censored[i["image"]])) for i in items]
        out = np.zeros((len(items), self.n_features), dtype=np.float32)
        for j in range(context):  # one gather per window position: no (items, k, voxels) array
            out += self._frames([{"image": i["image"], "frame": int(w[j])} for i, w in windows])
        return out / np.float32(context)

    def _frames(self, items: Sequence[dict]) -> np.ndarray:
        if self._data is not None:
            rows = np.fromiter((self.offsets[i["image"]] + int(i["frame"]) for i in items), dtype=np.int64,
                               count=len(items))
            return self._data[rows]
        out = np.empty((len(items), self.n_features), dtype=np.float32)
        paths = np.array([i["image"] for i in items], dtype=object)
        frames = np.array([int(i["frame"]) for i in items], dtype=np.int64)
        for path in dict.fromkeys(paths.tolist()):
            where = np.flatnonzero(paths == path)
            block = self._maps[path][frames[where]]
            out[where] = block.reshape(block.shape[0], -1)[:, self.columns]
        return out


class DataViews:
    """The :class:`VolumeTable` and :class:`FeatureStore` of each model's grid, made once each.

    Parameters
    ----------
    experiment
        The bundle's ``experiment`` over every subject (the group grid).
    subject_experiments
        Subject -> the bundle's ``experiment`` of that subject alone, for single-subject
        models on the subject's own mask; empty when single-subject models use the group grid.
    rule
        The label rule (default: the bundle's).
    context
        Volumes per linear sample (their mean; 1 = the volume alone).
    aligner
        Model spec -> group-grid path to aligned path, or ``None`` for an unaligned model
        (:class:`~monai_emotion.study.alignment.LinearAligner`); ``None``: no model is aligned.
    """

    def __init__(self, experiment: Mapping[str, Any],
                 subject_experiments: Mapping[str, Mapping[str, Any]] | None = None,
                 rule: LabelRule | None = None, context: int = 1,
                 aligner: Callable[[Any], Mapping[str, str] | None] | None = None) -> None:
        self._experiments = {None: experiment, **dict(subject_experiments or {})}
        self._rule = rule
        self.aligner = aligner
        self._aligned: dict[tuple[str, ...], FeatureStore] = {}
        #: the linear baseline's temporal context (the study's ``training.temporal_context``)
        self.context = check_temporal_context(context, where="training.temporal_context")
        self._tables: dict[str | None, VolumeTable] = {}
        self._stores: dict[str | None, FeatureStore] = {}

    def with_rule(self, rule: LabelRule) -> DataViews:
        """The same grids and frames, labelled by another rule (e.g. the other observer set)."""
        other = DataViews(self._experiments[None], {k: v for k, v in self._experiments.items() if k is not None}, rule,
                          self.context, self.aligner)
        other._stores, other._aligned = self._stores, self._aligned  # the frames do not depend on the labels
        return other

    def model_data(self, spec: Any) -> tuple[list[dict], FeatureStore]:
        """The labelled items and frames of model ``spec`` (a :class:`~monai_emotion.study.plan.ModelSpec`):
        its grid's, or its aligned frames when the aligner aligns it (items then point at them)."""
        items = self.table(spec.subjects).items(spec.lag, spec.permutation)
        mapping = self.aligner(spec) if self.aligner is not None else None
        if not mapping:
            return items, self.store(spec.subjects)
        items = [{**i, "image": mapping.get(i["image"], i["image"])} for i in items]
        paths = tuple(dict.fromkeys(i["image"] for i in items))
        if paths not in self._aligned:
            self._aligned[paths] = FeatureStore(paths)
        return items, self._aligned[paths]

    def _key(self, subjects: Sequence[str]) -> str | None:
        return str(subjects[0]) if len(subjects) == 1 and str(subjects[0]) in self._experiments else None

    def grid(self, subjects: Sequence[str]) -> str:
        """``"group"`` or ``"subject"``: the grid a model over ``subjects`` uses."""
        return "group" if self._key(subjects) is None else "subject"

    def table(self, subjects: Sequence[str]) -> VolumeTable:
        """The items of a model over ``subjects``."""
        key = self._key(subjects)
        if key not in self._tables:
            self._tables[key] = VolumeTable(self._experiments[key], self._rule)
        return self._tables[key]

    def store(self, subjects: Sequence[str]) -> FeatureStore:
        """The frames of a model over ``subjects``."""
        key = self._key(subjects)
        if key not in self._stores:
            self._stores[key] = FeatureStore(self.table(subjects).paths)
        return self._stores[key]
