"""Per-volume valence and arousal targets from the raw observer files (docs/dimensions.md).

Every Labs et al. (2015) episode carries ``arousal`` (LOW/HIGH) and ``valence`` (POS/NEG).
For a volume, at its label time (the label rule's: middle of the volume minus the lag, taken
from the label table, never recomputed here), the target of a dimension is

    fraction of observers with a covering episode saying the positive pole
    minus the fraction with a covering episode saying the negative pole,

so it lies in ``[-1, 1]``: valence is ``POS - NEG``, arousal ``HIGH - LOW``. Every episode
counts (any character, with or without an emotion category), each observer at most once per
pole; an observer whose covering episodes say both poles counts for both. A volume whose
label time lies outside its run's segment gets NaN under ``outside_run="none"`` (as its class
label is NONE there).

The targets are columns of the label table (:func:`add_dimensions`), so
:func:`~monai_emotion.data.labels.circular_shift_labels` rotates them with the labels and
:func:`~monai_emotion.data.datalist.labelled_items` carries them when asked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from monai_emotion.data.annotations import EMOTION_TOKENS, Episode, read_observers
from monai_emotion.data.labels import (
    OUTSIDE_COLUMN,
    LabelRule,
    circular_shift_labels,
    load_emotion_map,
)
from monai_emotion.errors import ConfigError, DataError

__all__ = ["DIMENSIONS", "POLES", "dimension_targets", "add_dimensions", "derive_dimensions",
           "check_dimensions", "attach_dimensions", "prepare_experiment_with_dimensions"]

#: the dimensions, in output order of a multi-task head
DIMENSIONS: tuple[str, ...] = ("valence", "arousal")
#: (positive pole, negative pole) of each dimension, as the raw files spell them
POLES: dict[str, tuple[str, str]] = {"valence": ("POS", "NEG"), "arousal": ("HIGH", "LOW")}


def check_dimensions(names: Sequence[str], where: str = "dimensions") -> tuple[str, ...]:
    """``names`` as a tuple, each one of :data:`DIMENSIONS` and listed once."""
    out = tuple(str(n) for n in names)
    bad = [n for n in out if n not in POLES]
    if bad or len(set(out)) != len(out) or not out:
        raise ConfigError(f"unknown or repeated dimension(s) {list(out)}", where=where,
                          fix=f"list some of {list(DIMENSIONS)}, each once")
    return out


def _pole_fraction(observers: Sequence[Sequence[Episode]], times: np.ndarray, attribute: str,
                   value: str) -> np.ndarray:
    """Fraction of observers with an episode covering each time whose ``attribute`` is ``value``."""
    count = np.zeros(times.size, dtype=np.int32)
    for episodes in observers:
        said = np.zeros(times.size, dtype=bool)
        for ep in episodes:
            if getattr(ep, attribute) == value:
                said |= (ep.start <= times) & (times < ep.end)
        count += said
    return count / max(len(observers), 1)


def dimension_targets(
    observers: Mapping[str, Sequence[Episode]] | Sequence[Sequence[Episode]],
    labels: pd.DataFrame,
    names: Sequence[str] = DIMENSIONS,
) -> pd.DataFrame:
    """Valence/arousal of every volume of a label table.

    Parameters
    ----------
    observers
        One episode list per observer (as :func:`~monai_emotion.data.labels.label_volumes` takes).
    labels
        The per-volume table of :func:`~monai_emotion.data.labels.label_volumes`: its
        ``label_time`` is the time each target is read at (same rule, same lag).
    names
        Dimensions to compute (:data:`DIMENSIONS`).

    Returns
    -------
    pandas.DataFrame
        ``run, volume`` and one column per dimension in ``[-1, 1]`` (NaN for volumes outside
        their run's segment when the table's rule made them NONE).
    """
    names = check_dimensions(names)
    lists = list(observers.values()) if isinstance(observers, Mapping) else list(observers)
    if not lists:
        raise DataError("no observers given", where="dimension targets", fix="pass at least one observer file")
    if "label_time" not in labels:
        raise DataError("the label table has no label_time column", where="dimension targets",
                        fix="give the table of label_volumes / derive_labels")
    times = labels["label_time"].to_numpy(dtype=float)
    out = labels[["run", "volume"]].copy()
    outside = np.zeros(times.size, dtype=bool)
    if OUTSIDE_COLUMN in labels and labels.attrs.get("outside_run", "none") == "none":
        outside = labels[OUTSIDE_COLUMN].to_numpy(dtype=bool)
    for name in names:
        high, low = POLES[name]
        value = _pole_fraction(lists, times, name, high) - _pole_fraction(lists, times, name, low)
        out[name] = np.where(outside, np.nan, value)
    return out


def add_dimensions(labels: pd.DataFrame, observers: Mapping[str, Sequence[Episode]],
                   names: Sequence[str] = DIMENSIONS) -> pd.DataFrame:
    """The label table with one column per dimension added (its ``attrs`` kept, ``dimensions`` added)."""
    targets = dimension_targets(observers, labels, names)
    out = labels.copy()
    for name in check_dimensions(names):
        out[name] = targets[name].to_numpy()
    out.attrs.update(labels.attrs, dimensions=list(check_dimensions(names)))
    return out


def derive_dimensions(annotations: str | os.PathLike, rule: LabelRule | Mapping[str, Any] | None = None,
                      names: Sequence[str] = DIMENSIONS, **options: Any) -> pd.DataFrame:
    """Label every volume by ``rule`` and add the dimension targets from the same observer files.

    ``options`` go to :func:`~monai_emotion.data.labels.derive_labels` (``segment_starts``,
    ``volumes_per_run``, ``runs``).
    """
    rule = LabelRule.from_dict(rule)
    table = rule.derive(annotations, **options)
    emap = load_emotion_map(rule.emotion_map)
    episodes = read_observers(annotations, rule.observers, EMOTION_TOKENS | set(emap.mapping))
    return add_dimensions(table, episodes, names)


def attach_dimensions(items: Sequence[Mapping[str, Any]], table: pd.DataFrame,
                      names: Sequence[str] = DIMENSIONS) -> list[dict]:
    """Copies of ``items`` with each dimension's target of their ``(run, frame)`` from ``table``.

    For item lists already built (the bundle's, after the cache is attached); new lists get
    them from :func:`~monai_emotion.data.datalist.labelled_items` with ``dimensions=``.
    """
    names = check_dimensions(names)
    missing = [n for n in names if n not in table]
    if missing:
        raise DataError(f"the label table has no {missing} column(s)", where="dimension targets",
                        fix="add them with monai_emotion.data.dimensions.add_dimensions")
    lookup = {(int(r), int(v)): row for r, v, *row in
              table[["run", "volume", *names]].itertuples(index=False, name=None)}
    out = []
    for item in items:
        key = (int(item["run"]), int(item["frame"]))
        if key not in lookup:
            raise DataError(f"no dimension targets for run {key[0]} volume {key[1]}", item.get("image"),
                            fix="derive the targets over every run and volume the items use")
        out.append({**item, **{n: float(v) for n, v in zip(names, lookup[key], strict=True)}})
    return out


def prepare_experiment_with_dimensions(dimensions: Sequence[str] = DIMENSIONS, **kwargs: Any) -> dict[str, Any]:
    """:func:`~monai_emotion.experiment.prepare_experiment`, its items carrying the dimension targets.

    What ``configs/dimensions.json`` puts in place of the experiment's ``_target_``. The targets
    follow the experiment's label rule and, with ``label_permutation``, the same circular
    shift as its labels (same seed, same runs: the same offsets).
    """
    from monai_emotion.experiment import prepare_experiment

    names = check_dimensions(dimensions, where="config 'dimensions#names'")
    experiment = prepare_experiment(**kwargs)
    table = derive_dimensions(experiment["annotations_dir"], experiment["label_rule"], names)
    if kwargs.get("label_permutation") is not None:
        table = circular_shift_labels(table, int(kwargs["label_permutation"]))
    for split in ("train", "validate", "test"):
        experiment[split] = attach_dimensions(experiment[split], table, names)
    experiment["dimensions"] = list(names)
    return experiment
