"""Figures of the study's results (matplotlib, Agg; no pyplot state).

1. emotion x subject recall on held-out runs within subject, cross-subject model as "ALL";
2. one subject's volumes of one emotion: what the model called them (the poster's pie);
3. seen vs unseen subjects, one heatmap per subject fold;
4. train and validation accuracy over epochs (mean +/- sd of the single-subject models, and
   the cross-subject models);
8. the seed's leaky protocol next to the clean one, with permutation chance intervals.

Figures 5-7 (annotations, embedding, class x run table) are in :mod:`.figures_data`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monai_emotion.study.scoring import MEAN, POOLED, report_of

__all__ = ["decoder_label", "decoders_in", "new_figure", "save", "heatmap", "fig_within_heatmap", "fig_pie", "fig_seen_unseen", "fig_curves",
           "fig_leaky_vs_clean"]

DECODER_NAMES = {"cnn": "3D CNN", "linear": "linear baseline", "nilearn": "nilearn Decoder"}


def decoder_label(decoder: str) -> str:
    """A decoder's display name (its own name when it has none)."""
    return DECODER_NAMES.get(decoder, decoder)


def decoders_in(frame: pd.DataFrame) -> list[str]:
    """The decoders of a results or predictions table: ``cnn`` first, then the others by name."""
    found = sorted(str(d) for d in frame["decoder"].unique()) if "decoder" in frame else []
    return sorted(found, key=lambda d: (d != "cnn", d))


def new_figure(width: float, height: float) -> Any:
    """A ``Figure`` with an Agg canvas (thread-safe, never shown)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as PNG (tight layout)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def heatmap(ax: Any, values: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str = "",
            vmin: float = 0.0, vmax: float = 1.0, fmt: str = "{:.2f}", cmap: str = "viridis") -> Any:
    """Draw ``values`` (rows x cols, NaN = blank) with each cell's number written in it."""
    image = ax.imshow(np.ma.masked_invalid(values), vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                    color="black" if (v - vmin) / ((vmax - vmin) or 1) > 0.6 else "white")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return image


def _units(results: pd.DataFrame, decoder: str, experiment: str, test_set: str) -> pd.DataFrame:
    return results[(results["decoder"] == decoder) & (results["experiment"] == experiment)
                   & (results["test_set"] == test_set) & (results["model"] == "*")]


def _recall_column(units: pd.DataFrame, subject: str, classes: Sequence[str]) -> list[float]:
    rows = units[units["subject"] == subject].set_index("emotion")
    return [float(rows.loc[c, "recall"]) if c in rows.index and pd.notna(rows.loc[c, "recall"]) else np.nan
            for c in classes]


def _balanced(units: pd.DataFrame, subject: str) -> float:
    hit = units[(units["subject"] == subject) & (units["emotion"] == "ALL")]
    return float(hit["balanced_accuracy"].iloc[0]) if len(hit) else float("nan")


def _decoder_panels(results: pd.DataFrame, experiment: str, test_set: str,
                    width: float) -> tuple[Any, list[tuple[Any, str]]] | None:
    """A figure with one panel (``width`` inches) per decoder that has unit rows for the test set."""
    decoders = [d for d in decoders_in(results) if len(_units(results, d, experiment, test_set))]
    if not decoders:
        return None
    fig = new_figure(width * len(decoders) + 1, 4.2)
    axes = fig.subplots(1, len(decoders), squeeze=False)[0]
    return fig, list(zip(axes, decoders, strict=True))


def fig_within_heatmap(results: pd.DataFrame, classes: Sequence[str], path: Path) -> Path | None:
    """Figure 1: per-emotion recall of each subject's own models (+ the cross-subject "ALL")."""
    panels = _decoder_panels(results, "within", "heldout", 4.5)
    if panels is None:
        return None
    fig, axes = panels
    for ax, decoder in axes:
        within = _units(results, decoder, "within", "heldout")
        subjects = sorted(s for s in within["subject"].unique() if s not in (MEAN, POOLED))
        columns = [_recall_column(within, s, classes) for s in subjects]
        labels = [f"sub-{s}" for s in subjects]
        cross = _units(results, decoder, "cross", "heldout")
        if len(cross):
            columns.append(_recall_column(cross, POOLED, classes))
            labels.append("ALL")
        values = np.array(columns).T
        bal = [_balanced(within, s) for s in subjects] + ([_balanced(cross, POOLED)] if len(cross) else [])
        values = np.vstack([values, bal])
        heatmap(ax, values, [*classes, "balanced acc."], labels,
                f"{decoder_label(decoder)}: recall on held-out runs\n(chance 1/{len(classes)}; ALL = cross-subject model)")
    return save(fig, path)


def fig_pie(predictions: pd.DataFrame, subject: str, emotion: str, path: Path) -> tuple[Path, dict] | None:
    """Figure 2: what one subject's held-out ``emotion`` volumes were predicted as (within-subject)."""
    for decoder in decoders_in(predictions):
        rows = predictions[(predictions["decoder"] == decoder) & (predictions["experiment"] == "within")
                           & (predictions["subject"] == subject) & (predictions["true_label"] == emotion)]
        if len(rows):
            break
    else:
        return None
    counts = rows["predicted_label"].value_counts()
    fig = new_figure(5.0, 4.2)
    ax = fig.add_subplot()
    colors = {c: f"C{k}" for k, c in enumerate(sorted(predictions["true_label"].unique()))}
    ax.pie(counts.to_numpy(), labels=[f"{c} ({n})" for c, n in counts.items()], autopct="%1.0f%%",
           colors=[colors.get(c, "grey") for c in counts.index], startangle=90, textprops={"fontsize": 8})
    ax.set_title(f"sub-{subject}: {len(rows)} held-out {emotion} volumes, predicted as\n"
                 f"({decoder_label(decoder)}, within-subject)", fontsize=9)
    return save(fig, path), {"decoder": decoder, "n": int(len(rows)),
                             "predicted": {str(k): int(v) for k, v in counts.items()}}


def fig_seen_unseen(predictions: pd.DataFrame, classes: Sequence[str], path: Path, decoder: str = "cnn") -> Path | None:
    """Figure 3: per subject fold, recall of seen subjects vs unseen ones (held-out and all runs)."""
    rows = predictions[(predictions["decoder"] == decoder) & (predictions["experiment"] == "unseen")]
    if not len(rows):
        return None
    sets = (("seen_heldout", "seen"), ("unseen_heldout", "unseen"), ("unseen_all_runs", "unseen, all runs"))
    panels = []
    for model in sorted(rows["model"].unique()):
        columns, labels = [], []
        for test_set, tag in sets:
            part = rows[(rows["model"] == model) & (rows["test_set"] == test_set)]
            for subject, g in part.groupby("subject", sort=True):
                report = report_of(g, classes)
                columns.append([np.nan if report["recall"][c] is None else report["recall"][c] for c in classes]
                               + [report["balanced_accuracy"]])
                labels.append(f"{subject} ({tag})")
        panels.append((model, columns, labels))
    widest = max(len(labels) for _, _, labels in panels)
    fig = new_figure(min(24.0, 3.0 + 0.6 * widest), 3.6 * len(panels))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (model, columns, labels) in zip(axes, panels, strict=True):
        heatmap(ax, np.array(columns).T, [*classes, "balanced acc."], labels,
                f"{decoder_label(decoder)} {model}: subjects seen in training vs unseen")
    return save(fig, path)


def fig_curves(curves: pd.DataFrame, path: Path) -> Path | None:
    """Figure 4: accuracy over epochs, mean +/- sd over single-subject models, and cross-subject models."""
    if not len(curves):
        return None
    fig = new_figure(10.0, 4.0)
    axes = fig.subplots(1, 2)
    panels = ((("train_accuracy", "train"), ("val_accuracy", "validation")),
              (("val_balanced_accuracy", "validation"),))
    for ax, panel in zip(axes, panels, strict=True):
        for k, (curve, label) in enumerate(panel):
            data = curves[curves["curve"] == curve]
            within = data[data["model"].str.startswith("within/")]
            if len(within):
                stats = within.groupby("epoch")["value"].agg(["mean", "std", "count"]).reset_index()
                n = int(stats["count"].max())
                ax.plot(stats["epoch"], stats["mean"], color=f"C{k}", label=f"{label}: single-subject (mean of {n})")
                ax.fill_between(stats["epoch"], stats["mean"] - stats["std"].fillna(0),
                                stats["mean"] + stats["std"].fillna(0), color=f"C{k}", alpha=0.2)
            for j, (_model, g) in enumerate(data[data["model"].str.startswith("cross/")].groupby("model")):
                ax.plot(g["epoch"], g["value"], color=f"C{k}", linestyle="--", linewidth=1,
                        label=f"{label}: cross-subject" if j == 0 else None)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("accuracy")
    axes[1].set_ylabel("balanced accuracy (checkpoint selection)")
    axes[0].set_title("train vs validation accuracy", fontsize=9)
    axes[1].set_title("validation balanced accuracy", fontsize=9)
    return save(fig, path)


def fig_leaky_vs_clean(results: pd.DataFrame, path: Path) -> Path | None:
    """Figure 8: per subject, the clean within-subject score next to the seed's leaky protocol."""
    pairs = (("within", "heldout", "clean: held-out runs, lag 4 s"),
             ("leaky", "leaky_random", "leaky: random 80/20 volumes, no lag"))
    panels = _decoder_panels(results, "leaky", "leaky_random", 5.0)
    if panels is None:
        return None
    fig, axes = panels
    for ax, decoder in axes:
        subjects = sorted({s for e, t, _ in pairs for s in _units(results, decoder, e, t)["subject"]} - {POOLED})
        subjects = [s for s in subjects if s != MEAN] + [MEAN]
        width = 0.38
        for k, (experiment, test_set, label) in enumerate(pairs):
            units = _units(results, decoder, experiment, test_set)
            overall = units[units["emotion"] == "ALL"].set_index("subject")
            x = np.arange(len(subjects)) + (k - 0.5) * width
            values = [overall["balanced_accuracy"].get(s, np.nan) for s in subjects]
            ax.bar(x, values, width, color=f"C{k}", label=label)
            low = np.array([overall["chance_low"].get(s, np.nan) if "chance_low" in overall else np.nan
                            for s in subjects], dtype=float)
            high = np.array([overall["chance_high"].get(s, np.nan) if "chance_high" in overall else np.nan
                             for s in subjects], dtype=float)
            ok = np.isfinite(low) & np.isfinite(high)
            if ok.any():
                ax.errorbar(x[ok], (low[ok] + high[ok]) / 2, yerr=(high[ok] - low[ok]) / 2, fmt="none", ecolor="black",
                            capsize=3, label="permutation 95% chance interval" if k == 0 else None)
        ax.axhline(0.2, color="grey", linestyle=":", linewidth=1, label="1/5")
        ax.set_xticks(range(len(subjects)), [s if s == MEAN else f"sub-{s}" for s in subjects], rotation=45,
                      ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("balanced accuracy")
        ax.set_title(f"{decoder_label(decoder)}: the seed's protocol vs a clean one", fontsize=9)
        ax.legend(fontsize=7)
    return save(fig, path)
