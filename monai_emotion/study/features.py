"""Labelled items under any lag and label permutation, and their cached frames as a matrix.

The linear baseline refits hundreds of times (one fit per model per permutation). Asking the
bundle's ``prepare_experiment`` each time would re-read every NIfTI header and the cache
fingerprints (~0.5 s a call). :class:`VolumeTable` instead derives the labels once per lag with
the same functions (``derive_labels``, ``circular_shift_labels``) and turns them into the same
items; :meth:`VolumeTable.check_against` proves, for the unpermuted labels, that they equal
the bundle's items one for one. :class:`FeatureStore` reads each cached run once (float16
memory maps, kept open) and gathers frames with one fancy index per run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from monai_emotion.data.labels import circular_shift_labels, derive_labels
from monai_emotion.errors import DataError

__all__ = ["VolumeTable", "FeatureStore", "select_subjects"]

_ITEM_KEYS = ("image", "frame", "label", "label_name", "subject", "run", "movie_time", "label_time")


def select_subjects(items: Sequence[dict], subjects: Sequence[str]) -> list[dict]:
    """Items of these subjects, in their original order (as ``discover_runs(subjects=...)`` gives)."""
    wanted = set(subjects)
    return [i for i in items if i["subject"] in wanted]


class VolumeTable:
    """Every volume of the study's cached runs, labelled by the bundle's rule at any lag/permutation.

    Parameters
    ----------
    experiment
        The bundle's ``experiment`` (unpermuted, every labelled item in ``train``): gives the
        cached runs, their order and the annotation folder.
    observers, threshold
        The label rule's settings (as passed to the bundle).
    """

    def __init__(self, experiment: Mapping[str, Any], observers: str, threshold: float) -> None:
        self.annotations_dir = str(experiment["annotations_dir"])
        self.classes = list(experiment["classes"])
        self.observers = observers
        self.threshold = float(threshold)
        runs: dict[tuple[str, int], str] = {}
        for item in experiment["train"]:
            runs.setdefault((str(item["subject"]), int(item["run"])), str(item["image"]))
        self.runs = runs
        self._n_frames = {key: int(np.load(path, mmap_mode="r").shape[0]) for key, path in runs.items()}
        self._labels: dict[float, pd.DataFrame] = {}
        self._items: dict[tuple[float, int | None], list[dict]] = {}

    def labels(self, lag: float) -> pd.DataFrame:
        """The per-volume label table at ``lag`` (derived once)."""
        lag = float(lag)
        if lag not in self._labels:
            self._labels[lag] = derive_labels(self.annotations_dir, self.observers, self.threshold, lag)
        return self._labels[lag]

    def items(self, lag: float, permutation: int | None = None) -> list[dict]:
        """Labelled items (NONE and TIE dropped) at ``lag``, labels shifted by ``permutation``."""
        key = (float(lag), None if permutation is None else int(permutation))
        if key in self._items:
            return self._items[key]
        table = self.labels(lag)
        if permutation is not None:
            table = circular_shift_labels(table, int(permutation))
        by_run = {int(r): f for r, f in table.groupby("run", sort=False)}
        items: list[dict] = []
        for (subject, run), path in self.runs.items():
            frame = by_run[run]
            frame = frame[(frame["volume"] < self._n_frames[subject, run]) & (frame["label_index"] >= 0)]
            volumes = frame["volume"].to_numpy()
            labels = frame["label_index"].to_numpy()
            names = frame["label"].to_numpy()
            movie, label_time = frame["movie_time"].to_numpy(), frame["label_time"].to_numpy()
            items.extend(
                {"image": path, "frame": int(v), "label": int(c), "label_name": str(n), "subject": subject,
                 "run": run, "movie_time": float(m), "label_time": float(t)}
                for v, c, n, m, t in zip(volumes, labels, names, movie, label_time, strict=True)
            )
        if permutation is not None:
            # keep only the current permutation (at every lag): each is used by every model once
            for stale in [k for k in self._items if k[1] is not None and k[1] != key[1]]:
                del self._items[stale]
        self._items[key] = items
        return items

    def check_against(self, bundle_items: Sequence[dict], lag: float) -> None:
        """Raise unless :meth:`items` at ``lag`` equals the bundle's items, key by key and in order."""
        mine = self.items(lag)
        ours = [tuple(i[k] for k in _ITEM_KEYS) for i in mine]
        theirs = [tuple(i[k] for k in _ITEM_KEYS) for i in bundle_items]
        if ours != theirs:
            first = next((k for k, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                         min(len(ours), len(theirs)))
            raise DataError(
                f"the baseline's items differ from the bundle's at item {first} "
                f"({len(ours)} vs {len(theirs)} items)",
                where="study baseline",
                fix="keep monai_emotion/study/features.py in step with experiment.prepare_experiment",
            )


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
        lengths = np.array([m.shape[0] for m in maps])
        self.offsets = dict(zip(self.paths, np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist(), strict=True))
        self._maps = dict(zip(self.paths, maps, strict=True))
        self.in_ram = float(lengths.sum()) * self.columns.size * 4 <= max_ram_bytes
        self._data = None
        if self.in_ram:
            self._data = np.concatenate(
                [np.asarray(m, dtype=np.float32).reshape(m.shape[0], -1)[:, self.columns] for m in maps])

    @property
    def n_features(self) -> int:
        return int(self.columns.size)

    def matrix(self, items: Sequence[dict]) -> np.ndarray:
        """``(len(items), n_features)`` float32 frames of ``items`` (rows in item order)."""
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
