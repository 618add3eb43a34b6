"""MONAI-style data lists: one item per labelled volume of a discovered run."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from monai_emotion.data.labels import CLASSES, NONE, TIE
from monai_emotion.data.studyforrest import Discovery, RunInfo, normalize_subject
from monai_emotion.errors import DataError

__all__ = ["make_datalist", "save_datalist", "load_datalist", "class_counts"]


def make_datalist(
    runs: Discovery | Sequence[RunInfo],
    labels: pd.DataFrame,
    *,
    drop: Iterable[str] = (NONE, TIE),
    subjects: Iterable[str | int] | None = None,
    run_ids: Iterable[int] | None = None,
    soft: bool = False,
) -> dict:
    """Pair each existing volume of each run with its label.

    Parameters
    ----------
    runs
        Output of :func:`~monai_emotion.data.studyforrest.discover_runs` (or its runs).
    labels
        Per-volume table from :func:`~monai_emotion.data.labels.label_volumes`; the same
        movie labels serve every subject.
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
        with items ``{"image", "frame", "label", "label_name", "subject", "run",
        "movie_time", "label_time"}``. Frames beyond a short run's end get no item.
    """
    run_list = runs.runs if isinstance(runs, Discovery) else list(runs)
    classes = list(labels.attrs.get("classes", CLASSES))
    keep_subjects = {normalize_subject(s) for s in subjects} if subjects is not None else None
    keep_runs = {int(r) for r in run_ids} if run_ids is not None else None
    dropped = set(drop)
    by_run = {int(r): frame for r, frame in labels.groupby("run")}
    items = []
    for info in run_list:
        if keep_subjects is not None and info.subject not in keep_subjects:
            continue
        if keep_runs is not None and info.run not in keep_runs:
            continue
        frame = by_run.get(info.run)
        if frame is None:
            raise DataError(
                f"no labels for run {info.run}",
                info.path,
                fix="derive labels for every run you use (check --runs / volumes_per_run)",
            )
        frame = frame[frame["volume"] < info.n_volumes]
        for row in frame.itertuples(index=False):
            if row.label in dropped:
                continue
            item = {
                "image": info.path,
                "frame": int(row.volume),
                "label": classes.index(row.label) if row.label in classes else -1,
                "label_name": row.label,
                "subject": info.subject,
                "run": info.run,
                "movie_time": float(row.movie_time),
                "label_time": float(row.label_time),
            }
            if soft:
                item["soft"] = [float(getattr(row, f"soft_{c}")) for c in classes]
            items.append(item)
    params = {k: v for k, v in labels.attrs.items() if k != "observer_files"}
    return {"classes": classes, "labels": params, "counts": class_counts(items), "items": items}


def class_counts(items: Iterable[dict]) -> dict[str, int]:
    """Number of items per label name."""
    return dict(sorted(Counter(i["label_name"] for i in items).items()))


def save_datalist(datalist: dict, path: str | os.PathLike) -> Path:
    """Write a data list as JSON (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(datalist, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return path


def load_datalist(path: str | os.PathLike) -> dict:
    """Read a data list written by :func:`save_datalist`, checking its shape."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError("data list not found", path, fix="create it with make_datalist") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON ({exc.msg})", path, line=exc.lineno,
                        fix="recreate the data list") from None
    if not isinstance(data, dict) or "items" not in data or "classes" not in data:
        raise DataError("not a monai-emotion data list (needs 'classes' and 'items')", path,
                        fix="recreate it with make_datalist")
    return data
