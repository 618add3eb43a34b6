"""From a bundle config's data section to cached train/validate/test item lists.

The bundle configs call :func:`prepare_experiment` once; it discovers the runs, derives the
labels, builds (or reuses) the preprocessing cache and applies the configured split. With no
``dataset_dir`` it makes (once) and uses a small synthetic studyforrest demo dataset in the
user cache folder, so the bundle trains out of the box.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_emotion.data.cache.spec import PreprocessingSpec
from monai_emotion.data.datalist import class_counts, make_datalist
from monai_emotion.data.labels import LabelRule, circular_shift_labels
from monai_emotion.data.splits import (
    default_gap,
    leaky_random_split,
    split_by_runs,
    split_by_subjects,
)
from monai_emotion.data.studyforrest import (
    SPACES,
    Discovery,
    bold_path,
    discover_runs,
    normalize_subject,
)
from monai_emotion.data.synthetic.demo import ensure_demo_dataset
from monai_emotion.errors import ConfigError, LayoutError
from monai_emotion.runtime import barrier, is_rank0, user_cache_dir

__all__ = ["DATA_KEYS", "check_data_keys", "default_cache_dir", "make_splits", "prepare_experiment", "resolved_gap"]

#: names configs written for monai-emotion 0.1.0 reach through this module; they live elsewhere now
_MOVED = {
    "DEMO": "monai_emotion.data.synthetic.demo",
    "ensure_demo_dataset": "monai_emotion.data.synthetic.demo",
    "bundle_root": "monai_emotion.runtime",
    "user_cache_dir": "monai_emotion.runtime",
    "write_run_record": "monai_emotion.runtime",
    "print_summary": "monai_emotion.runtime",
    "latest_checkpoint": "monai_emotion.engine.resume",
    "attach_training_state": "monai_emotion.engine.resume",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolved_gap(split: Mapping[str, Any], lag: float | None = None) -> float:
    """The split's ``gap`` in seconds; ``null`` or absent: lag + HRF (:func:`~monai_emotion.data.splits.default_gap`).

    ``lag`` is the label rule's (its default when not given), since the gap must cover it.
    """
    gap = split.get("gap")
    if gap is None:
        return default_gap(LabelRule().lag if lag is None else float(lag))
    return float(gap)


def make_splits(items: Sequence[dict], split: Mapping[str, Any], lag: float | None = None) -> dict[str, list[dict]]:
    """Apply a split spec from the config.

    ``{"kind": "runs", "validate_runs": [...], "test_runs": [...], "gap": null}``: held-out runs
    (within-subject, or cross-subject when several subjects are given). ``gap`` widens the
    held-out runs' movie windows in label time (:func:`resolved_gap`; ``null``: lag + 16 s).
    ``{"kind": "subjects", "test_subjects": [...], "validate_runs": [...], "test_runs": [...]}``:
    unseen subjects; their ``test_runs`` are also held out of training (no movie moment seen),
    unless ``test_runs`` is null (then the report must say the stimulus was seen).
    ``{"kind": "leaky_random", "test_fraction": 0.2, "seed": 0}``: the seed's per-volume split
    (warns; for the leaky comparison only).
    """
    kind = split.get("kind", "runs")
    gap = resolved_gap(split, lag)
    if kind == "runs":
        val_runs, test_runs = list(split.get("validate_runs") or []), list(split.get("test_runs") or [])
        if set(val_runs) & set(test_runs):
            raise ConfigError(f"runs {sorted(set(val_runs) & set(test_runs))} are both validation and test",
                              fix="give disjoint validate_runs and test_runs")
        rest, test = split_by_runs(items, test_runs, gap) if test_runs else (list(items), [])
        train, val = split_by_runs(rest, val_runs, gap) if val_runs else (rest, [])
        return {"train": train, "validate": val, "test": test}
    if kind == "subjects":
        unseen = split.get("test_subjects") or []
        test_runs = split.get("test_runs")
        train_pool, test = split_by_subjects(items, unseen, test_runs, gap)
        val_runs = list(split.get("validate_runs") or [])
        train, val = split_by_runs(train_pool, val_runs, gap) if val_runs else (train_pool, [])
        return {"train": train, "validate": val, "test": test}
    if kind == "leaky_random":
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            train, test = leaky_random_split(items, float(split.get("test_fraction", 0.2)),
                                             int(split.get("seed", 0)))
        return {"train": train, "validate": test, "test": test}
    raise ConfigError(f"unknown split kind '{kind}'", fix="use 'runs', 'subjects' or 'leaky_random'")


#: the keys of a bundle config's ``data`` section (anything else is a typo or a moved key)
DATA_KEYS = ("space", "subjects", "runs", "labels", "preprocessing", "split", "demo",
             "label_permutation", "cache_shard", "alignment")
_MOVED_KEYS = {"observers": "data#labels#observers", "threshold": "data#labels#threshold",
               "lag": "data#labels#lag", "preprocessing#shard": "data#cache_shard"}


def check_data_keys(keys: Sequence[str]) -> None:
    """Refuse unknown keys in a config's ``data`` section (an override would be silently ignored)."""
    unknown = [k for k in keys if k not in DATA_KEYS]
    if unknown:
        moved = [f"data#{k} is now {_MOVED_KEYS[k]}" for k in unknown if k in _MOVED_KEYS]
        raise ConfigError(f"unknown key(s) {['data#' + k for k in unknown]} in the config's data section",
                          where="config 'data'",
                          fix="; ".join(moved) or f"use only {['data#' + k for k in DATA_KEYS]}")


def default_cache_dir(dataset_dir: str | os.PathLike, space: str, spec: PreprocessingSpec) -> Path:
    """The user-cache folder for one dataset, space and preprocessing (never inside the dataset)."""
    return user_cache_dir() / "cache" / f"{Path(dataset_dir).name}-{spec.digest(str(Path(dataset_dir).resolve()), space)}"


def prepare_experiment(
    dataset_dir: str | None = None,
    annotations_dir: str | None = None,
    cache_dir: str | None = None,
    space: str = "nonlinear",
    subjects: Sequence[str | int] | None = None,
    runs: Sequence[int] | None = None,
    labels: LabelRule | Mapping[str, Any] | None = None,
    preprocessing: PreprocessingSpec | Mapping[str, Any] | None = None,
    split: Mapping[str, Any] | None = None,
    demo: Mapping[str, Any] | None = None,
    label_permutation: int | None = None,
    cache_shard: Sequence[int] | None = None,
    alignment: Mapping[str, Any] | None = None,
    progress: bool = True,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    data_keys: Sequence[str] | None = None,
    **label_overrides: Any,
) -> dict[str, Any]:
    """Everything a bundle needs about the data, as one dict.

    Checks run before anything is cached: ``data_keys`` (the config's ``data`` section) must
    be known, explicitly listed ``subjects`` and ``runs`` must exist, and the config's
    ``num_classes`` / ``class_names`` (when given) must be the labels' classes, in order (a
    network with other outputs would train on shifted labels).

    Parameters
    ----------
    labels
        The label rule (:class:`~monai_emotion.data.labels.LabelRule` or its dict); its
        fields may also be given as keywords (``lag=0``), which override it.
    preprocessing
        The :class:`~monai_emotion.data.cache.spec.PreprocessingSpec` (or its dict).
    cache_shard
        ``(rank, world_size)`` under DDP: each rank caches its share of the runs.
    alignment
        ``data#alignment`` (:class:`~monai_emotion.align.stage.AlignmentSpec`): functional
        alignment into a reference subject's space, as an aligned cache derived from this one.

    Returns
    -------
    dict
        ``train``, ``validate``, ``test`` (item lists pointing at cached runs), ``classes``,
        ``spatial_shape`` of the cached grid, ``counts`` per split, ``dataset_dir``,
        ``annotations_dir``, ``cache_dir``, ``problems`` (missing/short runs), ``space``,
        ``label_rule`` and ``preprocessing`` (the typed specs as used).
    """
    from monai_emotion.align.stage import align_cache, check_alignment
    from monai_emotion.data.cache import attach_cache, prepare_cache

    if data_keys is not None:
        check_data_keys(data_keys)
    rule = LabelRule.from_dict(labels, **label_overrides)
    spec = PreprocessingSpec.from_dict(preprocessing)
    if not dataset_dir:
        # under DDP one rank generates the demo data while the others wait for it
        if is_rank0():
            dataset_dir = str(ensure_demo_dataset(**dict(demo or {})))
        barrier()
        dataset_dir = str(ensure_demo_dataset(**dict(demo or {})))
        annotations_dir = annotations_dir or str(Path(dataset_dir) / "annotations")
    if not annotations_dir:
        raise ConfigError("no annotations_dir given for a real dataset",
                          fix="pass --annotations_dir /path/to/studyforrest-data-annotations")
    if not Path(dataset_dir).is_dir():
        raise LayoutError("dataset_dir not found", dataset_dir, fix="pass the BIDS root of ds000113")
    found = discover_runs(dataset_dir, space, subjects, runs)
    _check_selection(found, dataset_dir, space, subjects, runs)
    _check_one_grid(found, spec)
    spec = spec.resolved(len(found.subjects))  # "auto": one subject -> its own mask, else the group's
    cache_dir = str(cache_dir or default_cache_dir(dataset_dir, space, spec))
    for problem in found.problems[:4]:
        print(f"! {problem}", flush=True)
    if len(found.problems) > 4:
        print(f"! ... and {len(found.problems) - 4} more (listed in versions.json, data.problems)", flush=True)
    table = rule.derive(annotations_dir)
    _check_classes(table, num_classes, class_names)
    if label_permutation is not None:
        # null model for chance levels: labels rotated within runs, the BOLD untouched
        table = circular_shift_labels(table, int(label_permutation))
    datalist = make_datalist(found, table)
    # split before caching: a split that cannot work fails in seconds, not after hours
    split = dict(split or {"kind": "runs", "validate_runs": [7], "test_runs": [8]})
    if split.get("kind", "runs") != "leaky_random":
        split["gap"] = resolved_gap(split, rule.lag)  # recorded as used
    parts = make_splits(datalist["items"], split, rule.lag)
    check_alignment(alignment, split, sorted({r.run for r in found.runs}))
    if not parts["train"]:
        raise ConfigError("the split leaves no training items", fix="hold out fewer runs or subjects")
    index = prepare_cache(dataset_dir, cache_dir, spec, space=space, subjects=found.subjects, runs=runs,
                          shard=tuple(cache_shard) if cache_shard else None, progress=progress)
    index, aligned = align_cache(index, alignment, split, resolved_gap(split, rule.lag), lambda ref: prepare_cache(
        dataset_dir, cache_dir, spec, space=space, subjects=[ref], runs=runs, progress=progress))
    parts = {name: attach_cache(part, index) for name, part in parts.items()}
    if not parts["train"]:
        raise ConfigError("every training item sits on a censored outlier volume",
                          fix="check the runs (cache_summary.json lists censored volumes), or set "
                          "data#preprocessing#outliers to 'none'")
    first = parts["train"][0]
    shape = index[first["subject"], first["run"]].shape[1:]
    return {
        **parts,
        "classes": datalist["classes"],
        "spatial_shape": tuple(int(s) for s in shape),
        "counts": {k: class_counts(v) for k, v in parts.items()},
        "dataset_dir": str(dataset_dir),
        "annotations_dir": str(annotations_dir),
        "cache_dir": str(cache_dir),
        "problems": list(found.problems),
        "censored": {f"sub-{r.subject}_run-{r.run:02d}": list(r.censored) for r in index.values() if r.censored},
        "space": space,
        "label_rule": rule,
        "preprocessing": spec,
        "split": split,
        "alignment": aligned,
    }


def _check_selection(
    found: Discovery,
    dataset_dir: str,
    space: str,
    subjects: Sequence[str | int] | None,
    runs: Sequence[int] | None,
) -> None:
    """Subjects and runs the config names explicitly must exist (discovery only reports gaps)."""
    if subjects is not None:
        missing = [s for s in map(normalize_subject, subjects) if s not in found.subjects]
        if missing:
            raise LayoutError(
                f"no runs for subject(s) {', '.join('sub-' + s for s in missing)} in space '{space}'",
                dataset_dir,
                fix="correct data#subjects (null: every subject found), or the dataset_dir/space",
            )
    if runs is not None:
        have = {(r.subject, r.run) for r in found.runs}
        for subject in found.subjects:
            for run in sorted({int(r) for r in runs}):
                if (subject, run) not in have:
                    where = bold_path(dataset_dir, subject, run, space) if space in SPACES else dataset_dir
                    raise LayoutError(
                        f"sub-{subject} run {run} is missing (data#runs lists it)",
                        where,
                        fix="copy the run into the dataset, or leave it out of data#runs",
                    )


def _check_one_grid(found: Discovery, spec: PreprocessingSpec) -> None:
    """One model needs one grid: per-subject masks cannot serve a model over several subjects."""
    if spec.mask is None and spec.mask_strategy == "subject" and len(found.subjects) > 1:
        raise ConfigError(
            f"mask_strategy 'subject' gives each of the {len(found.subjects)} subjects its own grid, but one "
            "model (cross-subject or unseen-subject) needs one grid for all",
            where="config 'data#preprocessing#mask_strategy'",
            fix="use mask_strategy 'group' (the default) or a mask file, or select one subject (data#subjects)",
        )


def _check_classes(
    labels: Any, num_classes: int | None, class_names: Sequence[str] | None
) -> None:
    """The config's class count and names must be the labels' (the emotion map's), in order."""
    classes = [str(c) for c in labels.attrs.get("classes", [])]
    source = labels.attrs.get("emotion_map", "the emotion map")
    if num_classes is not None and int(num_classes) != len(classes):
        raise ConfigError(
            f"num_classes={num_classes}, but the labels have {len(classes)} classes {classes} "
            f"(from {source})",
            where="config 'num_classes'",
            fix=f"set num_classes to {len(classes)} and class_names to {classes}, or label with an "
            "emotion map of that many classes",
        )
    if class_names is not None and [str(c) for c in class_names] != classes:
        raise ConfigError(
            f"class_names {list(class_names)} are not the labels' classes {classes} (in this order, "
            f"from {source})",
            where="config 'class_names'",
            fix=f"set class_names to {classes}",
        )
