"""The report section comparing seen and unseen subjects with and without alignment and temporal context.

A variant is one study's ``results.csv`` (e.g. ``"none, k=1"``, ``"procrustes, k=1"``,
``"none, k=3"``): the same study file run with another ``alignment`` or
``training.temporal_context``, each in its own output folder (so no model id or digest of an
unaligned study changes). :func:`alignment_section` reads the pooled clean rows of every
variant (``emotion`` ALL, ``model`` ``*``, ``subject`` POOLED: the balanced accuracy over all
test volumes of an experiment, with its block-bootstrap interval, chance and verdict where
the statistics ran) for the CNN and the linear baseline on ``heldout`` (within and cross),
``seen_heldout`` and ``unseen_heldout``, and returns them as a report section (table and
figure), the first variant being the one every ratio refers to.

    python tools/alignment_compare.py --variant "none, k=1=/tmp/al/res_none" \\
        --variant "procrustes, k=1=/tmp/al/res_proc" --out /tmp/al/res_proc
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["DECODERS", "TEST_SETS", "pooled_scores", "alignment_section", "load_variants"]

DECODERS: tuple[str, ...] = ("cnn", "linear")
#: the clean test sets compared, in table order
TEST_SETS: tuple[str, ...] = ("heldout", "seen_heldout", "unseen_heldout")
FIGURE = "figures/alignment_seen_unseen.png"
_COLUMNS = ["decoder", "experiment", "test set", "variant", "balanced accuracy", "95% CI", "chance", "verdict",
            "ratio to " + "{first}"]


def load_variants(folders: Mapping[str, str | os.PathLike]) -> dict[str, pd.DataFrame]:
    """Each variant's ``results.csv`` (label -> results folder), in the given order."""
    return {label: pd.read_csv(Path(folder) / "results.csv") for label, folder in folders.items()}


def pooled_scores(results: pd.DataFrame) -> pd.DataFrame:
    """The pooled clean rows of the compared decoders and test sets (one per experiment and test set)."""
    return results[(results["emotion"] == "ALL") & (results["model"] == "*") & (results["subject"] == "POOLED")
                   & (results["protocol"] == "clean") & results["decoder"].isin(DECODERS)
                   & results["test_set"].isin(TEST_SETS)]


def _text(value: Any, digits: int = 3) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{float(value):.{digits}f}"


def _scores(variants: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    frames = [pooled_scores(r).assign(variant=label) for label, r in variants.items()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _goal(scores: pd.DataFrame, labels: list[str]) -> list[str]:
    """Sentences on the issue's goal: aligned unseen CNN >= 1.3x unaligned and >= 0.8x the within CNN."""
    def value(variant: str, experiment: str, test_set: str) -> float | None:
        row = scores[(scores["variant"] == variant) & (scores["decoder"] == "cnn")
                     & (scores["experiment"] == experiment) & (scores["test_set"] == test_set)]
        return float(row["balanced_accuracy"].iloc[0]) if len(row) else None

    first = value(labels[0], "unseen", "unseen_heldout")
    within = next((v for v in (value(label, "within", "heldout") for label in labels) if v is not None), None)
    out = []
    for label in labels[1:]:
        unseen = value(label, "unseen", "unseen_heldout")
        if unseen is None or first is None:
            continue
        line = f"CNN unseen_heldout, {label}: {unseen:.3f} = {unseen / first:.2f}x {labels[0]} (goal 1.3x)"
        if within:
            line += f", {unseen / within:.2f}x the within-subject CNN's {within:.3f} (goal 0.8x)"
        out.append(line + ".")
    return out


def _figure(scores: pd.DataFrame, labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = scores[["decoder", "experiment", "test_set"]].drop_duplicates().to_records(index=False).tolist()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(groups)), 3.6))
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        for g, (decoder, experiment, test_set) in enumerate(groups):
            row = scores[(scores["variant"] == label) & (scores["decoder"] == decoder)
                         & (scores["experiment"] == experiment) & (scores["test_set"] == test_set)]
            if not len(row):
                continue
            r = row.iloc[0]
            err = np.array([[r["balanced_accuracy"] - r["balanced_accuracy_ci_low"]],
                            [r["balanced_accuracy_ci_high"] - r["balanced_accuracy"]]])
            ax.bar(g + (j - (len(labels) - 1) / 2) * width, r["balanced_accuracy"], width, yerr=np.nan_to_num(err),
                   color=f"C{j}", label=label if g == 0 else None, capsize=2)
            if not np.isnan(r.get("chance_mean", np.nan)):
                ax.hlines(r["chance_mean"], g - 0.4, g + 0.4, colors="k", linestyles=":", linewidth=1)
    ax.set_xticks(range(len(groups)), [f"{d}\n{e}\n{t}" for d, e, t in groups], fontsize=8)
    ax.set_ylabel("balanced accuracy (pooled)")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def alignment_section(variants: Mapping[str, pd.DataFrame], results_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``alignment`` report section of ``variants`` (label -> results), its figure under ``results_dir``.

    Returns
    -------
    dict
        ``{"id", "title", "paragraphs", "tables": [{"columns", "rows", "sortable"}], "figures":
        [{"path", "caption"}]}``; every number is a pooled row of a variant's ``results.csv``.
    """
    labels = list(variants)
    scores = _scores(variants)
    columns = [c.format(first=labels[0]) if labels else c for c in _COLUMNS]
    rows = []
    for _, r in scores.iterrows():
        base = scores[(scores["variant"] == labels[0]) & (scores["decoder"] == r["decoder"])
                      & (scores["experiment"] == r["experiment"]) & (scores["test_set"] == r["test_set"])]
        ratio = (r["balanced_accuracy"] / base["balanced_accuracy"].iloc[0]) if len(base) else np.nan
        verdict = r.get("verdict")
        rows.append([r["decoder"], r["experiment"], r["test_set"], r["variant"], _text(r["balanced_accuracy"]),
                     f"[{_text(r['balanced_accuracy_ci_low'])}, {_text(r['balanced_accuracy_ci_high'])}]",
                     _text(r.get("chance_mean")), "" if pd.isna(verdict) else str(verdict), _text(ratio, 2) + "x"])
    rows.sort(key=lambda row: (DECODERS.index(row[0]), row[1], TEST_SETS.index(row[2]), labels.index(row[3])))
    figures = []
    if len(scores):
        _figure(scores, labels, Path(results_dir) / FIGURE)
        figures.append({"path": FIGURE, "caption": "Pooled balanced accuracy on held-out runs per variant "
                        "(bars: block-bootstrap 95 % interval; dotted: permutation chance where run)."})
    paragraphs = [
        "Seen and unseen subjects with and without functional alignment and temporal context: each variant is "
        f"the same study run with other settings ({', '.join(labels)}); pooled balanced accuracy over the "
        "clean held-out runs (seen_heldout: the training subjects; unseen_heldout: subjects no model trained "
        "on, aligned from their own fit runs, never the test runs).",
        *_goal(scores, labels),
    ]
    return {"id": "alignment", "title": "Functional alignment and temporal context", "paragraphs": paragraphs,
            "tables": [{"columns": columns, "rows": rows, "sortable": True}], "figures": figures}
