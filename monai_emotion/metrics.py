"""Classification reports from confusion matrices: the numbers every evaluation reports.

Pure functions (numpy in, dicts out) shared by the Ignite metric handlers, the study runner
and the reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from monai_emotion.errors import ConfigError, DataError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "confusion_from_labels", "wilson_interval", "classification_report_from_confusion",
    "degeneracy", "COLLAPSE_SHARE", "confusion_matrix_figure", "figure_to_array",
]  # fmt: skip

#: a model whose most frequent predicted class takes more than this share of the volumes is
#: flagged as collapsed: with the five emotions of the study the largest true class holds
#: 25-35 % of the volumes, so 80 % means the model calls nearly everything one class
COLLAPSE_SHARE = 0.8


def confusion_from_labels(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Confusion matrix ``cm[true, pred]`` (int64) of class indices in ``0..num_classes-1``."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    for what, idx in (("label", t), ("prediction", p)):
        bad = idx[(idx < 0) | (idx >= num_classes)]
        if bad.size:
            raise DataError(
                f"{what} {int(bad[0])} is outside the classes 0..{num_classes - 1}",
                where="confusion matrix",
                fix="set num_classes to the number of classes, and keep TIE/NONE volumes "
                "out of the datalist",
            )
    return np.bincount(num_classes * t + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (95 % by default); ``None`` when ``n == 0``."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def classification_report_from_confusion(
    cm: Any, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Every number the study reports, from one confusion matrix ``cm[true, pred]``.

    Follows scikit-learn where a value is defined: ``balanced_accuracy`` averages recall
    over the classes present in the labels; ``macro_f1`` averages F1 over the classes
    present in labels or predictions. Undefined per-class values are ``None`` (JSON null).

    Parameters
    ----------
    cm
        Square ``(K, K)`` counts, rows = true class, columns = predicted class.
    class_names
        ``K`` names; default ``"0"..."K-1"``.

    Returns
    -------
    dict
        ``n``, ``num_classes``, ``class_names``, ``chance_level`` (1/K: the expected
        balanced accuracy of any uninformed classifier), ``majority_accuracy`` (accuracy of
        always predicting the largest class), ``accuracy``, ``balanced_accuracy``,
        ``macro_f1``, per-class dicts ``recall``, ``recall_ci95`` (Wilson), ``precision``,
        ``f1``, ``support`` (true counts), ``predicted`` (predicted counts), and
        ``confusion_matrix`` (nested lists).
    """
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise DataError(f"confusion matrix must be square, got shape {cm.shape}")
    k = cm.shape[0]
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    if len(names) != k:
        raise ConfigError(f"{len(names)} class names for {k} classes", fix="give one name per class")
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    n = int(cm.sum())
    recall = [_ratio(tp[i], support[i]) for i in range(k)]
    # 2TP / (2TP + FP + FN): defined whenever the class occurs in labels or predictions
    f1 = [_ratio(2 * tp[i], support[i] + predicted[i]) for i in range(k)]
    defined_recall = [r for r in recall if r is not None]
    defined_f1 = [f for f in f1 if f is not None]
    return {
        "n": n,
        "num_classes": k,
        "class_names": names,
        "chance_level": 1.0 / k,
        "majority_accuracy": _ratio(support.max(), n),
        "accuracy": _ratio(np.trace(cm), n),
        "balanced_accuracy": float(np.mean(defined_recall)) if defined_recall else None,
        "macro_f1": float(np.mean(defined_f1)) if defined_f1 else None,
        "recall": dict(zip(names, recall, strict=True)),
        "recall_ci95": {c: wilson_interval(int(tp[i]), int(support[i])) for i, c in enumerate(names)},
        "precision": {c: _ratio(tp[i], predicted[i]) for i, c in enumerate(names)},
        "f1": dict(zip(names, f1, strict=True)),
        "support": {c: int(support[i]) for i, c in enumerate(names)},
        "predicted": {c: int(predicted[i]) for i, c in enumerate(names)},
        "confusion_matrix": cm.tolist(),
        "degeneracy": degeneracy(cm, names),
    }


def degeneracy(cm: Any, class_names: Sequence[str] | None = None,
               collapse_share: float = COLLAPSE_SHARE) -> dict[str, Any]:
    """How far a model's predictions are from using its classes: the collapse check.

    Parameters
    ----------
    cm
        Square ``(K, K)`` counts, rows = true class, columns = predicted class.
    class_names
        ``K`` names.
    collapse_share
        The share of the most frequent predicted class above which the model is flagged.

    Returns
    -------
    dict
        ``top_class`` and ``top_class_share`` (the most frequent prediction and its share),
        ``entropy`` (of the predicted-class distribution, in bits) and ``entropy_ratio`` (over
        its maximum, log2 K: 1 = every class predicted equally often, 0 = one class),
        ``majority_share`` (the largest true class's share), ``flagged`` and ``reasons``: a
        model is flagged when ``top_class_share > collapse_share``, or when always answering
        the largest class beats it on both accuracy (``majority_share``) and balanced accuracy
        (``1/K``). Accuracy below the majority share alone is not a flag: class weighting
        trades accuracy for balanced accuracy by design.
    """
    cm = np.asarray(cm, dtype=np.int64)
    k = cm.shape[0]
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    n = int(cm.sum())
    if n == 0:
        return {"top_class": None, "top_class_share": None, "entropy": None, "entropy_ratio": None,
                "majority_share": None, "flagged": False, "reasons": []}
    predicted = cm.sum(axis=0) / n
    top = int(np.argmax(predicted))
    nonzero = predicted[predicted > 0]
    entropy = max(0.0, float(-(nonzero * np.log2(nonzero)).sum()))
    majority = float(cm.sum(axis=1).max() / n)
    accuracy = float(np.trace(cm) / n)
    reasons = []
    if predicted[top] > collapse_share:
        reasons.append(f"{predicted[top]:.0%} of the volumes predicted {names[top]} "
                       f"(more than {collapse_share:.0%}: collapsed)")
    support = cm.sum(axis=1)
    balanced = float(np.mean(np.diag(cm)[support > 0] / support[support > 0]))
    # dominated by the rule "always answer the largest class" (accuracy = majority share,
    # balanced accuracy = 1/K): below it on accuracy alone is what class weighting trades for
    if accuracy < majority and balanced <= 1.0 / k:
        reasons.append(f"accuracy {accuracy:.3f} below the majority-class share {majority:.3f} and balanced "
                       f"accuracy {balanced:.3f} at or below 1/K: always answering the largest class does better")
    return {"top_class": names[top], "top_class_share": float(predicted[top]), "entropy": entropy,
            "entropy_ratio": entropy / math.log2(k) if k > 1 else 0.0, "majority_share": majority,
            "flagged": bool(reasons), "reasons": reasons}


def confusion_matrix_figure(cm: Any, class_names: Sequence[str] | None = None, title: str = "") -> Figure:
    """A matplotlib ``Figure``: row-normalised colours (recall), raw counts as text.

    Built on ``matplotlib.figure.Figure`` directly, so no pyplot state leaks between calls.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm, dtype=np.int64)
    k = cm.shape[0]
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    fig = Figure(figsize=(1.2 * k + 1.6, 1.1 * k + 1.2), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}\n{frac[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def figure_to_array(fig: Any) -> np.ndarray:
    """Render a figure to an ``(H, W, 3)`` uint8 array (TensorBoard ``dataformats="HWC"``)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
