"""Handlers that write per-volume outputs: ``predictions.csv`` (evaluation) and BIDS events (inference).

Both read MONAI's decollated ``engine.state.batch`` (item keys: subject, run, frame,
movie_time, label) beside ``engine.state.output`` (``prob``: softmax probabilities), gather
rows across DDP ranks, and write once per run on rank 0, atomically.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events

from monai_emotion.data.studyforrest import TR

__all__ = ["PredictionsCSVWriter", "EventsTSVWriter", "rows_from_engine"]


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.item() if value.numel() == 1 else value.numpy()
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.item()
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return _scalar(value[0])
    return value


def rows_from_engine(engine: Engine, prob_key: str = "prob") -> list[dict[str, Any]]:
    """One dict per sample of the last iteration: its item keys and class probabilities."""
    batch, output = engine.state.batch, engine.state.output
    if isinstance(batch, dict) or isinstance(output, dict):
        raise TypeError("PredictionsCSVWriter needs a decollated engine (decollate=True)")
    rows = []
    for item, out in zip(batch, output, strict=True):
        prob = out.get(prob_key)
        if prob is None:
            raise KeyError(f"engine output has no '{prob_key}': add CopyItemsd(pred -> {prob_key}) after softmax")
        label = item.get("label", -1)
        if isinstance(label, torch.Tensor) and label.numel() > 1:  # one-hot after AsDiscreted
            label = int(label.argmax())
        rows.append(
            {
                "subject": str(_scalar(item.get("subject", ""))),
                "run": int(_scalar(item.get("run", 0))),
                "volume": int(_scalar(item.get("frame", 0))),
                "movie_time": float(_scalar(item.get("movie_time", float("nan")))),
                "label": int(_scalar(label)),
                "censored": bool(_scalar(item.get("censored", False))),
                "prob": np.asarray(_scalar(prob), dtype=float).ravel().tolist(),
                # a multi-task model's dimension outputs (SplitDimensionsd), empty otherwise
                "dims": np.asarray(_scalar(out.get("dims_pred", [])), dtype=float).ravel().tolist(),
            }
        )
    return rows


class _RowCollector:
    """Collects rows each iteration; gathers and writes at epoch end."""

    def __init__(self, output_dir: str | os.PathLike, class_names: Sequence[str], prob_key: str = "prob") -> None:
        self.output_dir = Path(output_dir)
        self.class_names = [str(c) for c in class_names]
        self.prob_key = prob_key
        self._rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._finish)

    def _reset(self, engine: Engine) -> None:
        self._rows = []

    def _collect(self, engine: Engine) -> None:
        self._rows.extend(rows_from_engine(engine, self.prob_key))

    def _finish(self, engine: Engine) -> None:
        rows = self._rows
        if idist.get_world_size() > 1:
            rows = [r for part in idist.all_gather(rows) for r in part]
        if idist.get_rank() == 0:
            rows.sort(key=lambda r: (r["subject"], r["run"], r["volume"]))
            self.write(rows)

    def write(self, rows: list[dict[str, Any]]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _atomic_table(self, path: Path, header: list[str], lines: list[list[Any]], delimiter: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, delimiter=delimiter, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(lines)
        os.replace(tmp, path)


class PredictionsCSVWriter(_RowCollector):
    """Write ``predictions.csv``: subject, run, volume, movie time, true and predicted label,
    one probability column per class."""

    def __init__(self, output_dir: str | os.PathLike, class_names: Sequence[str],
                 filename: str = "predictions.csv", prob_key: str = "prob") -> None:
        super().__init__(output_dir, class_names, prob_key)
        self.filename = filename

    def write(self, rows: list[dict[str, Any]]) -> None:
        names = self.class_names
        header = ["subject", "run", "volume", "movie_time", "true_label", "predicted_label"]
        header += [f"prob_{c}" for c in names]
        lines = [
            [r["subject"], r["run"], r["volume"], f"{r['movie_time']:g}",
             names[r["label"]] if 0 <= r["label"] < len(names) else "NONE",
             names[int(np.argmax(r["prob"]))], *(f"{p:.6f}" for p in r["prob"])]
            for r in rows
        ]
        self._atomic_table(self.output_dir / self.filename, header, lines, ",")


class EventsTSVWriter(_RowCollector):
    """Write one BIDS-style ``*_events.tsv`` per run: onset, duration, predicted emotion and
    the probability of each class, one row per volume.

    A volume censored as an outlier (a motion spike; stored as a zero frame) keeps its row,
    with ``trial_type`` ``censored``, ``n/a`` probabilities and ``censored`` = 1. With
    ``dimension_names`` (a multi-task model's, e.g. valence and arousal) each row also gets the
    predicted value of each dimension, in a column of that name after ``censored``.
    """

    def __init__(self, output_dir: str | os.PathLike, class_names: Sequence[str],
                 dimension_names: Sequence[str] = (), prob_key: str = "prob") -> None:
        super().__init__(output_dir, class_names, prob_key)
        self.dimension_names = [str(d) for d in dimension_names]

    def _dimensions(self, row: dict[str, Any]) -> list[str]:
        if not self.dimension_names:
            return []
        if row.get("censored"):
            return ["n/a"] * len(self.dimension_names)
        if len(row["dims"]) != len(self.dimension_names):
            raise ValueError(f"{len(row['dims'])} dimension outputs for {self.dimension_names}: "
                             "put monai_emotion.engine.losses.SplitDimensionsd first in the postprocessing")
        return [f"{v:.6f}" for v in row["dims"]]

    def write(self, rows: list[dict[str, Any]]) -> None:
        names = self.class_names
        header = ["onset", "duration", "trial_type", *(f"prob_{c}" for c in names), "movie_time", "censored",
                  *self.dimension_names]
        by_run: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for r in rows:
            by_run.setdefault((r["subject"], r["run"]), []).append(r)
        for (subject, run), run_rows in by_run.items():
            lines = [
                [*([f"{TR * r['volume']:g}", f"{TR:g}", "censored", *(["n/a"] * len(names)), f"{r['movie_time']:g}", 1]
                   if r.get("censored") else
                   [f"{TR * r['volume']:g}", f"{TR:g}", names[int(np.argmax(r["prob"]))],
                    *(f"{p:.6f}" for p in r["prob"]), f"{r['movie_time']:g}", 0]), *self._dimensions(r)]
                for r in run_rows
            ]
            name = f"sub-{subject}_task-forrestgump_run-{run:02d}_desc-emotion_events.tsv"
            self._atomic_table(self.output_dir / name, header, lines, "\t")
