"""Collect every model's predictions into the tidy ``results.csv`` and ``summary.json``.

``results.csv`` has one row per model x test set x emotion (``emotion = "ALL"`` for the overall
row), plus the same rows per *unit* (``model = "*"``: a subject's predictions pooled over the
run folds and models that tested it, ``POOLED`` and ``MEAN`` over subjects, see
:mod:`~monai_emotion.study.scoring`). Unit rows carry the permutation chance interval and
p-value of their balanced accuracy.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monai_emotion.fileio import atomic_write_json
from monai_emotion.study.permutation import chance_table, p_value
from monai_emotion.study.plan import ModelSpec
from monai_emotion.study.scoring import MEAN, POOLED, report_of

__all__ = ["RESULT_COLUMNS", "read_predictions", "save_predictions", "tidy_results", "headline"]

RESULT_COLUMNS = [
    "study", "decoder", "experiment", "protocol", "test_set", "subject", "model", "fold", "emotion", "n",
    "accuracy", "balanced_accuracy", "macro_f1", "recall", "recall_ci_low", "recall_ci_high", "precision", "f1",
    "support", "chance_mean", "chance_low", "chance_high", "chance_method", "n_permutations", "p_value",
]
_KEY = ["decoder", "experiment", "test_set"]


def save_predictions(frame: pd.DataFrame, folder: Path, classes: Sequence[str]) -> None:
    """Write ``predictions.csv`` and ``metrics.json`` (the full report) of one test set."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "predictions.csv.tmp"
    frame.to_csv(tmp, index=False, float_format="%.6g")
    atomic_write_json(folder / "metrics.json", report_of(frame, classes))
    os.replace(tmp, folder / "predictions.csv")  # last: its presence means the test set is complete


def read_predictions(root: Path, specs: Iterable[ModelSpec], decoder: str, eval_folder: str = "") -> pd.DataFrame:
    """Predictions of every finished model in ``specs`` under ``root``, with their provenance.

    ``eval_folder`` is the subfolder holding the test sets (``"eval"`` for bundle runs).
    """
    frames = []
    for spec in specs:
        for test in spec.test_sets:
            path = Path(root) / spec.id / eval_folder / test.name / "predictions.csv"
            if not path.is_file():
                continue
            frame = pd.read_csv(path, dtype={"subject": str})
            frames.append(frame.assign(decoder=decoder, experiment=spec.experiment, protocol=spec.protocol,
                                       test_set=test.name, model=spec.id, fold=spec.fold,
                                       permutation=-1 if spec.permutation is None else spec.permutation))
    if not frames:
        return pd.DataFrame(columns=["decoder", "experiment", "protocol", "test_set", "model", "fold",
                                     "permutation", "subject", "true_label", "predicted_label"])
    return pd.concat(frames, ignore_index=True)


def _report_rows(report: dict[str, Any], base: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{**base, "emotion": "ALL", "n": report["n"], "accuracy": report["accuracy"],
             "balanced_accuracy": report["balanced_accuracy"], "macro_f1": report["macro_f1"]}]
    for c in report["class_names"]:
        ci = report["recall_ci95"][c]
        rows.append({**base, "emotion": c, "n": report["support"][c], "recall": report["recall"][c],
                     "recall_ci_low": ci[0] if ci else None, "recall_ci_high": ci[1] if ci else None,
                     "precision": report["precision"][c], "f1": report["f1"][c], "support": report["support"][c]})
    return rows


def _mean_rows(reports: list[dict[str, Any]], base: dict[str, Any], classes: Sequence[str]) -> list[dict[str, Any]]:
    def mean(values: Iterable[Any]) -> float | None:
        kept = [v for v in values if v is not None]
        return float(np.mean(kept)) if kept else None

    rows = [{**base, "emotion": "ALL", "n": sum(r["n"] for r in reports),
             **{k: mean(r[k] for r in reports) for k in ("accuracy", "balanced_accuracy", "macro_f1")}}]
    for c in classes:
        rows.append({**base, "emotion": c, "n": sum(r["support"][c] for r in reports),
                     "recall": mean(r["recall"][c] for r in reports),
                     "precision": mean(r["precision"][c] for r in reports), "f1": mean(r["f1"][c] for r in reports),
                     "support": sum(r["support"][c] for r in reports)})
    return rows


def tidy_results(predictions: pd.DataFrame, null: pd.DataFrame, classes: Sequence[str], study: str) -> pd.DataFrame:
    """The tidy results table (see the module notes) of the unpermuted predictions.

    Parameters
    ----------
    predictions
        Unpermuted predictions of every decoder (from :func:`read_predictions`).
    null
        Permutation scores (``decoder, permutation, experiment, test_set, unit, balanced_accuracy``).
    classes
        Class names.
    study
        Study name (first column).
    """
    rows: list[dict[str, Any]] = []
    for (decoder, experiment, protocol, test_set, model, fold), group in predictions.groupby(
            [*_KEY[:2], "protocol", "test_set", "model", "fold"], sort=True):
        subjects = sorted(group["subject"].astype(str).unique())
        base = {"study": study, "decoder": decoder, "experiment": experiment, "protocol": protocol,
                "test_set": test_set, "subject": "+".join(subjects), "model": model, "fold": fold}
        rows += _report_rows(report_of(group, classes), base)
    for (decoder, experiment, protocol, test_set), group in predictions.groupby([*_KEY[:2], "protocol", "test_set"],
                                                                                   sort=True):
        base = {"study": study, "decoder": decoder, "experiment": experiment, "protocol": protocol,
                "test_set": test_set, "model": "*", "fold": "all"}
        reports = []
        for subject, g in group.groupby("subject", sort=True):
            reports.append(report_of(g, classes))
            rows += _report_rows(reports[-1], {**base, "subject": str(subject)})
        rows += _report_rows(report_of(group, classes), {**base, "subject": POOLED})
        rows += _mean_rows(reports, {**base, "subject": MEAN}, classes)
    table = pd.DataFrame(rows)
    if len(null):
        chance = chance_table(null).rename(columns={"unit": "subject"})
        table = table.merge(chance, on=[*_KEY, "subject"], how="left", suffixes=("", "_c"))
        overall = (table["model"] == "*") & (table["emotion"] == "ALL")
        groups = {k: g["balanced_accuracy"].to_numpy(dtype=float)
                  for k, g in null.groupby([*_KEY, "unit"])}
        table.loc[overall, "p_value"] = [
            p_value(float(r.balanced_accuracy), groups.get((r.decoder, r.experiment, r.test_set, r.subject), []))
            for r in table[overall].itertuples()]
        not_overall = ~overall
        table.loc[not_overall, ["chance_mean", "chance_low", "chance_high", "chance_method", "n_permutations"]] = None
    return table.reindex(columns=RESULT_COLUMNS)


def headline(results: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per decoder x experiment x test set: the MEAN and POOLED balanced accuracy with chance."""
    units = results[(results["model"] == "*") & (results["emotion"] == "ALL")
                    & results["subject"].isin([MEAN, POOLED])]
    out = []
    for (decoder, experiment, test_set), g in units.groupby(_KEY, sort=False):
        row: dict[str, Any] = {"decoder": decoder, "experiment": experiment, "test_set": test_set,
                               "protocol": g["protocol"].iloc[0]}
        for unit in (MEAN, POOLED):
            r = g[g["subject"] == unit]
            if not len(r):
                continue
            r = r.iloc[0]
            row[unit.lower()] = {k: _plain(r[k]) for k in ("balanced_accuracy", "accuracy", "macro_f1", "chance_mean",
                                                          "chance_low", "chance_high", "chance_method",
                                                          "n_permutations", "p_value", "n")}
        out.append(row)
    return out


def _plain(value: Any) -> Any:
    """A JSON-friendly scalar: numpy numbers as Python ones, NaN as None."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return round(float(value), 6) if np.isfinite(value) else None
    return value
