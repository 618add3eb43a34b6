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
from monai_emotion.study.chance import Test, group_test, single_test, verdicts
from monai_emotion.study.intervals import block_bootstrap
from monai_emotion.study.plan import ModelSpec
from monai_emotion.study.scoring import MEAN, POOLED, report_of
from monai_emotion.study.settings import StatisticsSettings

__all__ = ["RESULT_COLUMNS", "GROUP_EXPERIMENTS", "read_predictions", "save_predictions", "tidy_results", "headline",
           "flagged_models"]

RESULT_COLUMNS = [
    "study", "decoder", "experiment", "protocol", "test_set", "subject", "model", "fold", "emotion", "n",
    "accuracy", "balanced_accuracy", "balanced_accuracy_ci_low", "balanced_accuracy_ci_high", "macro_f1", "recall",
    "recall_ci_low", "recall_ci_high", "precision", "f1", "support", "top_class", "top_class_share", "flagged",
    "n_models", "n_flagged", "chance_mean", "chance_low", "chance_high", "chance_method", "chance_test",
    "n_permutations", "p_value", "p_adjusted", "verdict",
]
#: why each model x test set of the last tidy_results call was flagged (the CSV keeps only the flag)
_REASONS: dict[tuple, list[str]] = {}
#: experiments whose models each see one subject: their MEAN rows get the group test
GROUP_EXPERIMENTS = ("within", "leaky")
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
            frames.append(frame.assign(decoder=decoder, experiment=spec.experiment, protocol=test.protocol,
                                       test_set=test.name, model=spec.id, fold=spec.fold,
                                       permutation=-1 if spec.permutation is None else spec.permutation))
    if not frames:
        return pd.DataFrame(columns=["decoder", "experiment", "protocol", "test_set", "model", "fold",
                                     "permutation", "subject", "true_label", "predicted_label"])
    return pd.concat(frames, ignore_index=True)


def _report_rows(report: dict[str, Any], base: dict[str, Any], boot: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The overall row and one row per emotion of one report (intervals: block bootstrap)."""
    boot = boot or {"recall": {}, "balanced_accuracy": None}
    ba_ci = boot["balanced_accuracy"] or (None, None)
    rows = [{**base, "emotion": "ALL", "n": report["n"], "accuracy": report["accuracy"],
             "balanced_accuracy": report["balanced_accuracy"], "balanced_accuracy_ci_low": ba_ci[0],
             "balanced_accuracy_ci_high": ba_ci[1], "macro_f1": report["macro_f1"]}]
    for c in report["class_names"]:
        ci = boot["recall"].get(c) or (None, None)
        rows.append({**base, "emotion": c, "n": report["support"][c], "recall": report["recall"][c],
                     "recall_ci_low": ci[0], "recall_ci_high": ci[1],
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


def _flag_columns(report: dict[str, Any]) -> dict[str, Any]:
    d = report.get("degeneracy") or {}
    return {"top_class": d.get("top_class"), "top_class_share": d.get("top_class_share"),
            "flagged": bool(d.get("flagged", False))}


def _model_rows(predictions: pd.DataFrame, classes: Sequence[str], study: str,
                stats: StatisticsSettings) -> tuple[list[dict[str, Any]], dict[tuple, bool]]:
    """Per model x test set rows, and whether each (decoder, experiment, test set, model) is flagged."""
    rows: list[dict[str, Any]] = []
    flags: dict[tuple, bool] = {}
    reasons = _REASONS
    reasons.clear()
    for (decoder, experiment, protocol, test_set, model, fold), group in predictions.groupby(
            [*_KEY[:2], "protocol", "test_set", "model", "fold"], sort=True):
        report = report_of(group, classes)
        flag = _flag_columns(report)
        flags[(decoder, experiment, test_set, model)] = flag["flagged"]
        reasons[(decoder, experiment, test_set, model)] = list((report.get("degeneracy") or {}).get("reasons") or [])
        base = {"study": study, "decoder": decoder, "experiment": experiment, "protocol": protocol,
                "test_set": test_set, "subject": "+".join(sorted(group["subject"].astype(str).unique())),
                "model": model, "fold": fold, **flag, "n_models": 1, "n_flagged": int(flag["flagged"])}
        rows += _report_rows(report, base, block_bootstrap(group, classes, stats.bootstrap, stats.block_gap))
    return rows, flags


def _unit_rows(predictions: pd.DataFrame, classes: Sequence[str], study: str, stats: StatisticsSettings,
               flags: dict[tuple, bool]) -> list[dict[str, Any]]:
    """Rows per subject, POOLED and MEAN of each decoder x experiment x test set."""
    rows: list[dict[str, Any]] = []
    for (decoder, experiment, protocol, test_set), group in predictions.groupby([*_KEY[:2], "protocol", "test_set"],
                                                                               sort=True):
        base = {"study": study, "decoder": decoder, "experiment": experiment, "protocol": protocol,
                "test_set": test_set, "model": "*", "fold": "all"}

        key = (decoder, experiment, test_set)

        def counts(part: pd.DataFrame, key: tuple = key) -> dict[str, int]:
            models = part["model"].unique()
            return {"n_models": int(len(models)), "n_flagged": int(sum(flags.get((*key, m), False) for m in models))}

        reports = []
        for subject, g in group.groupby("subject", sort=True):
            reports.append(report_of(g, classes))
            rows += _report_rows(reports[-1], {**base, "subject": str(subject), **counts(g)},
                                 block_bootstrap(g, classes, stats.bootstrap, stats.block_gap))
        rows += _report_rows(report_of(group, classes), {**base, "subject": POOLED, **counts(group)},
                             block_bootstrap(group, classes, stats.bootstrap, stats.block_gap))
        rows += _mean_rows(reports, {**base, "subject": MEAN, **counts(group)}, classes)
    return rows


def _tests(table: pd.DataFrame, null: pd.DataFrame, group_experiments: Sequence[str],
           stats: StatisticsSettings) -> pd.DataFrame:
    """Chance test, corrected p and verdict of every unit's overall row (module chance.py)."""
    overall = table[(table["model"] == "*") & (table["emotion"] == "ALL")]
    pools = {k: g["balanced_accuracy"].to_numpy(dtype=float) for k, g in null.groupby([*_KEY, "unit"])} \
        if len(null) else {}
    tests: list[Test] = []
    kinds = []
    for r in overall.itertuples():
        key = (r.decoder, r.experiment, r.test_set)
        if r.subject == MEAN and r.experiment in group_experiments:
            subjects = overall[(overall["decoder"] == r.decoder) & (overall["experiment"] == r.experiment)
                               & (overall["test_set"] == r.test_set)
                               & ~overall["subject"].isin([MEAN, POOLED])]
            test = group_test({s.subject: float(s.balanced_accuracy) for s in subjects.itertuples()},
                              {s.subject: pools.get((*key, s.subject), []) for s in subjects.itertuples()},
                              stats.group_draws)
        else:
            test = single_test(float(r.balanced_accuracy), pools.get((*key, r.subject), []))
        tests.append(test)
        kinds.append(r.subject if r.subject in (MEAN, POOLED) else "subject")
    out = pd.DataFrame({
        "chance_mean": [t.chance_mean for t in tests], "chance_low": [t.chance_low for t in tests],
        "chance_high": [t.chance_high for t in tests], "chance_method": [t.method for t in tests],
        "chance_test": ["group" if t.method == "group" else "single" if t.method != "none" else None for t in tests],
        "n_permutations": [t.n_permutations or None for t in tests], "p_value": [t.p_value for t in tests],
        "p_adjusted": np.nan, "verdict": "untested"}, index=overall.index)
    for kind in set(kinds):
        where = [k == kind for k in kinds]
        verdict, adjusted = verdicts([t for t, w in zip(tests, where, strict=True) if w], stats.alpha, stats.correction)
        out.loc[out.index[where], "verdict"] = verdict
        out.loc[out.index[where], "p_adjusted"] = adjusted
    return out


def tidy_results(predictions: pd.DataFrame, null: pd.DataFrame, classes: Sequence[str], study: str,
                 statistics: StatisticsSettings | None = None,
                 group_experiments: Sequence[str] = GROUP_EXPERIMENTS) -> pd.DataFrame:
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
    statistics
        Test level, correction, bootstrap settings (default: the study defaults).
    group_experiments
        Experiments of single-subject models with independent per-subject shifts: their MEAN
        rows get the group test.
    """
    stats = statistics or StatisticsSettings()
    predictions = predictions[predictions["permutation"] == -1] if "permutation" in predictions else predictions
    rows, flags = _model_rows(predictions, classes, study, stats)
    rows += _unit_rows(predictions, classes, study, stats, flags)
    table = pd.DataFrame(rows).reindex(columns=RESULT_COLUMNS)
    tested = _tests(table, null, group_experiments, stats)
    for column in tested.columns:
        values = table[column].astype(object)
        values.loc[tested.index] = tested[column].astype(object)
        table[column] = values if column in ("chance_method", "chance_test", "verdict") else values.astype(float)
    return table.reindex(columns=RESULT_COLUMNS)


def flagged_models(results: pd.DataFrame) -> list[dict[str, Any]]:
    """The models (per test set) whose predictions are flagged as collapsed or degenerate."""
    rows = results[(results["model"] != "*") & (results["emotion"] == "ALL") & (results["flagged"] == True)]  # noqa: E712
    return [{"decoder": r.decoder, "experiment": r.experiment, "test_set": r.test_set, "model": r.model,
             "top_class": r.top_class, "top_class_share": _plain(r.top_class_share),
             "reasons": _REASONS.get((r.decoder, r.experiment, r.test_set, r.model), [])} for r in rows.itertuples()]


def headline(results: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per decoder x experiment x test set: the MEAN and POOLED balanced accuracy with chance."""
    units = results[(results["model"] == "*") & (results["emotion"] == "ALL")
                    & results["subject"].isin([MEAN, POOLED])]
    out = []
    for (decoder, experiment, test_set), g in units.groupby(_KEY, sort=False):
        row: dict[str, Any] = {"decoder": decoder, "experiment": experiment, "test_set": test_set,
                               "protocol": g["protocol"].iloc[0]}
        mean = g[g["subject"] == MEAN]
        if len(mean):
            row["verdict"] = mean["verdict"].iloc[0]
        for unit in (MEAN, POOLED):
            r = g[g["subject"] == unit]
            if not len(r):
                continue
            r = r.iloc[0]
            row[unit.lower()] = {k: _plain(r[k]) for k in (
                "balanced_accuracy", "balanced_accuracy_ci_low", "balanced_accuracy_ci_high", "accuracy", "macro_f1",
                "chance_mean", "chance_low", "chance_high", "chance_method", "chance_test", "n_permutations",
                "p_value", "p_adjusted", "verdict", "n", "n_models", "n_flagged")}
        out.append(row)
    return out


def _plain(value: Any) -> Any:
    """A JSON-friendly scalar: numpy numbers as Python ones, NaN as None."""
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return round(float(value), 6) if np.isfinite(value) else None
    return value
