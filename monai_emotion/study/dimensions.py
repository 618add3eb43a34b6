"""Valence and arousal in the study: a ridge on the linear baseline's features, r and R² on held-out runs.

Study key ``dimensions`` (off by default; :class:`~monai_emotion.study.settings.DimensionSettings`).
For every unpermuted model of ``dimensions.experiments`` (within and cross by default) a
``StandardScaler -> Ridge`` is fitted on the model's training items (the linear baseline's
items, splits and frames: :func:`~monai_emotion.study.baseline.model_items`, the
:class:`~monai_emotion.study.features.DataViews` of the model's grid) to the per-volume targets
of :mod:`monai_emotion.data.dimensions`, and predicts each of its test sets
(``dimensions/predictions/<model>/<test set>.csv``, written by the baseline worker). The ridge's
penalty is ``alpha`` times the number of voxels, so one value suits any grid.

Scores (``dimensions.csv``), per experiment, test set, dimension and unit (a subject, its
predictions pooled over the run folds; ``POOLED``; ``MEAN`` over subjects): Pearson r and R²
(``1 - SS_res / SS_tot`` around the held-out targets' own mean). Chance: the held-out targets
are rotated within each (subject, run), in volume order, against the fixed predictions
(:func:`~monai_emotion.engine.regression.shifted_null`, ``dimensions.shifts`` times; the
subject's own stream of offsets), which keeps both series' autocorrelation. A subject or
POOLED row gets the single-model test, the MEAN row the group test over the subjects' own
shifts (:mod:`~monai_emotion.study.chance`); verdicts are corrected per unit kind across the
table, and with fewer than 19 shifts a row is ``untested``. This is a test of fixed
predictions, not of refits on shifted labels (cheap: no model is refitted).
"""

from __future__ import annotations

import shutil
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monai_emotion.data.dimensions import add_dimensions, attach_dimensions
from monai_emotion.fileio import load_json
from monai_emotion.study.baseline import model_items
from monai_emotion.study.chance import Test, group_test, single_test, verdicts
from monai_emotion.study.context import StudyContext
from monai_emotion.study.features import DataViews
from monai_emotion.study.plan import ModelSpec, selected
from monai_emotion.study.report import format_number, format_p
from monai_emotion.study.scoring import MEAN, POOLED
from monai_emotion.study.settings import DimensionSettings, StatisticsSettings

__all__ = ["DECODER", "FIGURE", "DimensionRidge", "DimensionStage", "score_dimensions", "dimension_outputs",
           "dimensions_markdown"]

#: the decoder name of the ridge in ``dimensions.csv``
DECODER = "ridge"
#: the figure's file name under ``figures/``
FIGURE = "fig9_dimensions.png"
_COLUMNS = ["study", "decoder", "experiment", "test_set", "subject", "dimension", "n", "r", "r2", "chance_mean",
            "chance_low", "chance_high", "chance_method", "chance_test", "n_shifts", "p_value", "p_adjusted",
            "verdict"]


class DimensionRidge:
    """Fit and apply the ridge of the study's dimensions for any model spec.

    Parameters
    ----------
    views
        The study's items and frames per model grid (the linear baseline's).
    settings
        The study's ``dimensions`` section.
    """

    def __init__(self, views: DataViews, settings: DimensionSettings) -> None:
        self.views, self.settings = views, settings
        self._targets: dict[float, pd.DataFrame] = {}

    def targets(self, subjects: Sequence[str], lag: float) -> pd.DataFrame:
        """The label table at ``lag`` with one column per dimension (derived once per lag)."""
        from monai_emotion.data.annotations import EMOTION_TOKENS, read_observers
        from monai_emotion.data.labels import load_emotion_map

        if float(lag) not in self._targets:
            table = self.views.table(subjects)
            rule = table.rule
            tokens = EMOTION_TOKENS | set(load_emotion_map(rule.emotion_map).mapping)
            observers = read_observers(table.annotations_dir, rule.observers, tokens)
            self._targets[float(lag)] = add_dimensions(table.labels(lag), observers, self.settings.names)
        return self._targets[float(lag)]

    def fit_predict(self, spec: ModelSpec) -> dict[str, pd.DataFrame]:
        """Train on ``spec``'s training items; per test set, a table of true and predicted targets.

        Returns
        -------
        dict
            Test set name -> ``subject, run, volume, movie_time, true_<dim>, pred_<dim>``.
        """
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from threadpoolctl import threadpool_limits

        names = list(self.settings.names)
        items = attach_dimensions(self.views.table(spec.subjects).items(spec.lag), self.targets(spec.subjects, spec.lag),
                                  names)
        store = self.views.store(spec.subjects)
        train, tests = model_items(items, spec)
        train = [i for i in train if all(np.isfinite(i[n]) for n in names)]
        y = np.array([[i[n] for n in names] for i in train], dtype=float)
        ridge = make_pipeline(StandardScaler(), Ridge(alpha=self.settings.alpha * store.n_features))
        out = {}
        with threadpool_limits(1), warnings.catch_warnings():  # BLAS threads fight for shared cores
            warnings.simplefilter("ignore")
            ridge.fit(store.matrix(train, self.views.context), y)
            for name, tested in tests.items():
                pred = ridge.predict(store.matrix(tested, self.views.context)).reshape(len(tested), len(names))
                frame = pd.DataFrame({"subject": [str(i["subject"]) for i in tested],
                                      "run": [int(i["run"]) for i in tested],
                                      "volume": [int(i["frame"]) for i in tested],
                                      "movie_time": [float(i["movie_time"]) for i in tested]})
                for d, dim in enumerate(names):
                    frame[f"true_{dim}"] = [float(i[dim]) for i in tested]
                    frame[f"pred_{dim}"] = pred[:, d]
                out[name] = frame
        return out


class DimensionStage:
    """The study's dimensions stage: a ridge per model (in the baseline worker), resumable."""

    def __init__(self, ctx: StudyContext) -> None:
        self.ctx, self.settings = ctx, ctx.study.dimensions
        self.folder = ctx.root / "dimensions" / "predictions"
        self.record = ctx.root / "dimensions" / "settings.json"

    def specs(self, only: list[str] | None = None) -> list[ModelSpec]:
        """The unpermuted models of the section's experiments selected by ``only``."""
        return [s for s in self.ctx.plan.models if s.permutation is None and s.experiment in self.settings.experiments
                and selected("linear", s, only)]

    def done(self, spec: ModelSpec) -> bool:
        """Whether every test set of ``spec`` has its stored predictions."""
        return all((self.folder / spec.id / f"{t.name}.csv").is_file() for t in spec.test_sets)

    def todo(self, only: list[str] | None, force: bool) -> bool:
        """Whether any selected model lacks its predictions."""
        return self.settings.enabled and any(force or not self.done(s) for s in self.specs(only))

    def check_settings(self, changed: Callable[[Path, dict, Callable[[str], None], str], bool],
                       data: Mapping[str, Any]) -> None:
        """Discard stored predictions made with other settings (``changed``: the runner's record check)."""
        study = self.ctx.study
        settings = {"dimensions": self.settings.to_dict(), "data": dict(data), "splits": study.splits.to_dict(),
                    "context": self.ctx.views.context}
        if changed(self.record, settings, self.ctx.log, "dimensions"):
            shutil.rmtree(self.folder, ignore_errors=True)

    def run(self, only: list[str] | None, force: bool) -> None:
        """Fit the ridge of every selected model without stored predictions."""
        ridge = DimensionRidge(self.ctx.views, self.settings)
        specs = [s for s in self.specs(only) if force or not self.done(s)]
        for spec in specs:
            for name, frame in ridge.fit_predict(spec).items():
                path = self.folder / spec.id / f"{name}.csv"
                path.parent.mkdir(parents=True, exist_ok=True)
                frame.to_csv(path.with_suffix(".tmp"), index=False, float_format="%.6g")
                path.with_suffix(".tmp").replace(path)
        self.ctx.log(f"  dimensions (ridge): {len(specs)} model(s) fitted")

    def predictions(self) -> pd.DataFrame:
        """Every stored prediction table, with its experiment, test set and model."""
        frames = [pd.read_csv(self.folder / s.id / f"{t.name}.csv", dtype={"subject": str}).assign(
                  experiment=s.experiment, test_set=t.name, model=s.id)
                  for s in self.specs() for t in s.test_sets if (self.folder / s.id / f"{t.name}.csv").is_file()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _seed(*parts: Any) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode())


def _scored(frame: pd.DataFrame, dim: str, shifts: int, seed: int) -> tuple[float, float, np.ndarray, int]:
    """r, R², the shift null and n of one unit's rows (in (subject, run, volume) order)."""
    from monai_emotion.engine.regression import pearson_r, r_squared, shifted_null

    frame = frame.sort_values(["subject", "run", "volume"])
    keep = np.isfinite(frame[f"true_{dim}"].to_numpy(dtype=float))
    p, t = frame[f"pred_{dim}"].to_numpy(dtype=float)[keep], frame[f"true_{dim}"].to_numpy(dtype=float)[keep]
    groups = (frame["subject"].astype(str) + "/" + frame["run"].astype(str)).to_numpy()[keep]
    null = shifted_null(p, t, groups, shifts, seed) if shifts else np.array([])
    return pearson_r(p, t), r_squared(p, t), null, int(keep.sum())


def _row(base: dict[str, Any], unit: str, n: int, r: float, r2: float, test: Test, kind: str) -> dict[str, Any]:
    return {**base, "subject": unit, "n": n, "r": r, "r2": r2, "chance_mean": test.chance_mean,
            "chance_low": test.chance_low, "chance_high": test.chance_high, "chance_method": test.method,
            "chance_test": kind, "n_shifts": test.n_permutations, "p_value": test.p_value, "_test": test}


def score_dimensions(predictions: pd.DataFrame, names: Sequence[str], shifts: int,
                     statistics: StatisticsSettings = StatisticsSettings(), study: str = "") -> pd.DataFrame:
    """The dimensions table (module notes): one row per experiment, test set, unit and dimension.

    Parameters
    ----------
    predictions
        Rows with ``experiment, test_set, subject, run, volume, true_<dim>, pred_<dim>``.
    names
        The dimensions.
    shifts
        Circular shifts per chance test.
    statistics
        The study's ``statistics`` section (alpha, correction, group draws).
    study
        The study's name (the ``study`` column).

    Returns
    -------
    pandas.DataFrame
        The columns of ``dimensions.csv``.
    """
    rows: list[dict[str, Any]] = []
    if not len(predictions):
        return pd.DataFrame(columns=_COLUMNS)
    for (experiment, test_set), group in predictions.groupby(["experiment", "test_set"], sort=True):
        for dim in names:
            base = {"study": study, "decoder": DECODER, "experiment": experiment, "test_set": test_set,
                    "dimension": dim}
            scores, nulls = {}, {}
            for subject, rows_s in group.groupby("subject", sort=True):
                r, r2, null, n = _scored(rows_s, dim, shifts, _seed(experiment, test_set, dim, subject))
                scores[str(subject)], nulls[str(subject)] = (r, r2), null
                rows.append(_row(base, str(subject), n, r, r2, single_test(r, null), "single"))
            r, r2, null, n = _scored(group, dim, shifts, _seed(experiment, test_set, dim, POOLED))
            rows.append(_row(base, POOLED, n, r, r2, single_test(r, null), "single"))
            test = group_test({s: v[0] for s, v in scores.items()}, nulls, statistics.group_draws,
                              _seed(experiment, test_set, dim, MEAN))
            rows.append(_row(base, MEAN, int(len(group)), float(np.nanmean([v[0] for v in scores.values()])),
                             float(np.nanmean([v[1] for v in scores.values()])), test, "group"))
    table = pd.DataFrame(rows)
    kinds = table["subject"].where(table["subject"].isin([MEAN, POOLED]), "subject")
    table["p_adjusted"], table["verdict"] = np.nan, "untested"
    for kind in kinds.unique():
        index = table.index[kinds == kind]
        found, adjusted = verdicts(list(table.loc[index, "_test"]), statistics.alpha, statistics.correction)
        table.loc[index, "verdict"], table.loc[index, "p_adjusted"] = found, adjusted
    return table.drop(columns="_test")[_COLUMNS]


def _figure(table: pd.DataFrame, path: Path) -> Path | None:
    """Bars: MEAN r per experiment x dimension with the group null's 95 % interval; dots: subjects."""
    from monai_emotion.study.figures import new_figure, save

    mean = table[table["subject"] == MEAN].reset_index(drop=True)
    if not len(mean):
        return None
    fig = new_figure(1.6 + 1.1 * len(mean), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    dims = list(dict.fromkeys(mean["dimension"]))
    for k, row in mean.iterrows():
        color = f"C{dims.index(row['dimension'])}"
        ax.bar(k, row["r"], 0.6, color=color, label=row["dimension"] if k == dims.index(row["dimension"]) else None)
        if np.isfinite(row["chance_low"]):
            ax.errorbar(k, (row["chance_low"] + row["chance_high"]) / 2, yerr=(row["chance_high"] - row["chance_low"]) / 2,
                        fmt="none", ecolor="black", capsize=4, label="95% shift chance" if k == 0 else None)
        subjects = table[(table["experiment"] == row["experiment"]) & (table["test_set"] == row["test_set"])
                         & (table["dimension"] == row["dimension"]) & ~table["subject"].isin([MEAN, POOLED])]
        ax.plot(np.full(len(subjects), k), subjects["r"], "o", color="black", markersize=3, alpha=0.6)
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xticks(range(len(mean)), [f"{r.experiment}\n{r.test_set}\n{r.dimension}" for r in mean.itertuples()],
                  fontsize=7)
    ax.set_ylabel("Pearson r, held-out runs (mean over subjects)")
    ax.set_title("ridge on the baseline's voxels: valence and arousal vs circular-shift chance", fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, path)


def dimension_outputs(ctx: StudyContext) -> dict[str, Any] | None:
    """Write ``dimensions.csv`` and the figure from the stored predictions; the summary's section.

    Returns ``None`` when the stage is off or nothing has been fitted yet.
    """
    settings = ctx.study.dimensions
    if not settings.enabled:
        return None
    predictions = DimensionStage(ctx).predictions()
    if not len(predictions):
        return None
    table = score_dimensions(predictions, settings.names, settings.shifts, ctx.study.statistics, ctx.study.name)
    table.to_csv(ctx.root / "dimensions.csv", index=False, float_format="%.6g")
    figure = _figure(table, ctx.root / "figures" / FIGURE)
    truth = None
    if ctx.synthetic_root and (Path(ctx.synthetic_root) / "ground_truth" / "generation.json").is_file():
        generation = load_json(Path(ctx.synthetic_root) / "ground_truth" / "generation.json")
        truth = {"null": bool(generation.get("null")), "dimension_strength": generation.get("dimension_strength", 0)}
    headline = table[table["subject"].isin([MEAN, POOLED])]
    return {"settings": settings.to_dict(), "decoder": DECODER, "csv": "dimensions.csv",
            "figure": figure.name if figure else None, "synthetic": truth,
            "rows": [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
                     for row in headline.drop(columns="study").to_dict(orient="records")]}


def dimensions_markdown(section: Mapping[str, Any] | None) -> list[str]:
    """The report's lines about valence and arousal (nothing when the stage did not run)."""
    if not section:
        return []
    s, truth = section["settings"], section.get("synthetic")
    planted = ("" if not truth else " Synthetic data: **null** (nothing planted)." if truth["null"] else
               f" Synthetic data: dimension patterns planted at strength {truth['dimension_strength']}"
               + (" (0: none)." if not truth["dimension_strength"] else "."))
    lines = ["## Valence and arousal", "",
             f"Ridge (alpha {s['alpha']} per voxel) on the linear baseline's voxels and splits, one per model of "
             f"{', '.join(s['experiments'])}; Pearson r and R² on held-out runs. Chance: held-out targets rotated "
             f"within (subject, run) against the fixed predictions, {s['shifts']} shifts (MEAN: group test over "
             f"the subjects' own shifts; fewer than 19 shifts: untested); all rows in `{section['csv']}` "
             f"(docs/dimensions.md).{planted}", "",
             "| experiment | test set | unit | dimension | n | r | R² | chance 95% | p (corrected) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in section["rows"]:
        chance = "-" if r.get("chance_low") is None else f"[{format_number(r['chance_low'])}, {format_number(r['chance_high'])}]"
        verdict = f"**{r['verdict']}**" if r["verdict"] == "above" else r["verdict"]
        lines.append(f"| {r['experiment']} | {r['test_set']} | {r['subject']} | {r['dimension']} | {r['n']} | "
                     f"{format_number(r['r'])} | {format_number(r['r2'])} | {chance} | {format_p(r.get('p_value'))} "
                     f"({format_p(r.get('p_adjusted'))}) | {verdict} |")
    if section.get("figure"):
        lines += ["", f"![valence and arousal](figures/{section['figure']})"]
    return [*lines, ""]
