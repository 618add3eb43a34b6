"""Figures about the data and the learnt representation.

5. the annotations: per-volume class frequencies, and how the observers' 22 raw categories
   co-occur in time (the poster's "emotion clustering is difficult": categories the seed
   merged into one class are hardly more correlated with each other than with the rest);
6. the network's penultimate features in 2-D (PCA, t-SNE), coloured by emotion, with the
   silhouette score;
7. the class x run table (the run confound).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monai_emotion.data.annotations import EMOTION_TOKENS, Episode
from monai_emotion.data.labels import EmotionMap, class_by_run_table
from monai_emotion.data.studyforrest import MOVIE_END
from monai_emotion.study.figures import heatmap, new_figure, save

__all__ = ["category_votes", "category_structure", "fig_annotations", "fig_embedding", "fig_class_by_run"]


def category_votes(observers: Mapping[str, Sequence[Episode]], step: float = 1.0,
                   end: float = MOVIE_END) -> tuple[list[str], np.ndarray]:
    """``(tokens, votes)``: ``votes[t, k]`` = observers with an episode of token ``k`` covering second ``t``."""
    tokens = sorted(EMOTION_TOKENS)
    index = {t: k for k, t in enumerate(tokens)}
    times = np.arange(0.0, end, step) + step / 2
    votes = np.zeros((times.size, len(tokens)), dtype=np.int32)
    for episodes in observers.values():
        voted = np.zeros_like(votes, dtype=bool)  # one vote per observer, as in the label rule
        for ep in episodes:
            covers = (ep.start <= times) & (times < ep.end)
            for token in ep.emotions:
                if token in index:
                    voted[covers, index[token]] = True
        votes += voted
    return tokens, votes


def category_structure(tokens: Sequence[str], votes: np.ndarray, emotion_map: EmotionMap) -> dict[str, Any]:
    """Correlation of the categories' vote time courses, ordered by class, and a clustering contrast.

    Returns ``order`` (tokens by class), ``classes`` (class of each ordered token),
    ``correlation`` (ordered matrix), ``covariance``, ``within``/``between`` (mean off-diagonal
    correlation of token pairs in the same class / different classes) and ``frequency``
    (seconds with at least one vote, per token).
    """
    order = sorted(tokens, key=lambda t: (emotion_map.classes.index(c) if (c := emotion_map.mapping.get(t))
                                          in emotion_map.classes else len(emotion_map.classes), t))
    columns = [list(tokens).index(t) for t in order]
    data = votes[:, columns].astype(float)
    active = data.std(axis=0) > 0
    corr = np.full((len(order), len(order)), np.nan)
    corr[np.ix_(active, active)] = np.corrcoef(data[:, active], rowvar=False)
    classes = [emotion_map.mapping.get(t) or "none" for t in order]
    same = np.equal.outer(classes, classes)
    mapped = np.array([c != "none" for c in classes])
    # pairs of distinct tokens that both map to a class (GLOATING maps to none)
    off = ~np.eye(len(order), dtype=bool) & np.isfinite(corr) & np.outer(mapped, mapped)
    return {
        "order": order, "classes": classes, "correlation": corr, "covariance": np.cov(data, rowvar=False),
        "within": float(np.nanmean(corr[off & same])) if (off & same).any() else float("nan"),
        "between": float(np.nanmean(corr[off & ~same])) if (off & ~same).any() else float("nan"),
        "frequency": dict(zip(order, (data > 0).sum(axis=0).astype(int).tolist(), strict=True)),
    }


def fig_annotations(labels: pd.DataFrame, structure: Mapping[str, Any], path: Path) -> Path:
    """Figure 5: class frequencies of the labelled volumes and the 22 categories' correlation."""
    fig = new_figure(13.0, 5.6)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
    counts = labels["label"].value_counts()
    names = [*labels.attrs.get("classes", []), "TIE", "NONE"]
    values = [int(counts.get(n, 0)) for n in names]
    left.bar(range(len(names)), values, color=[f"C{k}" for k in range(len(names) - 2)] + ["grey", "lightgrey"])
    left.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    left.set_ylabel("volumes")
    left.set_title(f"per-volume labels (lag {labels.attrs.get('lag')} s, threshold {labels.attrs.get('threshold')})",
                   fontsize=9)
    for k, v in enumerate(values):
        left.text(k, v, str(v), ha="center", va="bottom", fontsize=7)
    order, classes = structure["order"], structure["classes"]
    image = heatmap(right, structure["correlation"], [f"{t} ({c[:4]})" for t, c in zip(order, classes, strict=True)],
                    order, "", vmin=-0.3, vmax=1.0, fmt="{:.1f}", cmap="RdBu_r")
    for k in range(1, len(classes)):
        if classes[k] != classes[k - 1]:
            right.axhline(k - 0.5, color="black", linewidth=0.8)
            right.axvline(k - 0.5, color="black", linewidth=0.8)
    right.set_title(f"observer votes per raw category: correlation over movie time\n"
                    f"mean r within a class {structure['within']:.2f} vs between classes {structure['between']:.2f}",
                    fontsize=9)
    for text in right.texts:
        text.set_fontsize(5)
    fig.colorbar(image, ax=right, fraction=0.03)
    return save(fig, path)


def fig_embedding(embedding: Mapping[str, Any], labels: Sequence[int], classes: Sequence[str], title: str,
                  path: Path) -> Path:
    """Figure 6: PCA and t-SNE of the penultimate features, coloured by the true emotion."""
    y = np.asarray(labels)
    fig = new_figure(11.0, 4.8)
    axes = fig.subplots(1, 2)
    panels = (("pca", "PCA", embedding.get("silhouette_pca")), ("tsne", "t-SNE", embedding.get("silhouette_tsne")))
    for ax, (key, name, score) in zip(axes, panels, strict=True):
        xy = embedding[key]
        for k, c in enumerate(classes):
            sel = y == k
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.7, color=f"C{k}", label=f"{c} ({int(sel.sum())})")
        ax.set_title(f"{name} (silhouette {score:.2f} in 2-D)" if score is not None else name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(fontsize=7, markerscale=2)
    fig.suptitle(f"{title}: silhouette (cosine, full feature space) "
                 f"{embedding.get('silhouette', float('nan')):.3f}", fontsize=10)
    return save(fig, path)


def fig_class_by_run(labels: pd.DataFrame, path: Path) -> tuple[Path, pd.DataFrame]:
    """Figure 7: labelled volumes per class and run (counts; colour = share of the class's volumes)."""
    table = class_by_run_table(labels)
    counts = table.drop(columns="total").to_numpy(dtype=float)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = new_figure(1.0 + 0.8 * counts.shape[1], 0.5 * counts.shape[0] + 1.8)
    ax = fig.add_subplot()
    heatmap(ax, share, [f"{r} ({int(t)})" for r, t in zip(table.index, table["total"], strict=True)],
            list(table.columns[:-1]), "volumes per class and run (colour: share of the class's volumes)",
            vmin=0, vmax=max(0.5, float(np.nanmax(share))), fmt="{:.2f}")
    for text, value in zip(ax.texts, counts.ravel(), strict=True):
        text.set_text(f"{int(value)}")
    return save(fig, path), table
