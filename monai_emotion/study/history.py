"""Training curves from the TensorBoard event files the bundle writes in each model's output_dir.

The bundle's train handlers log ``train_accuracy`` (key train metric) and ``train_loss``; the
validation handlers ``val_accuracy``, ``val_balanced_accuracy``, ``val_macro_f1`` and the
``val/...`` family of :class:`~monai_emotion.engine.handlers.ClassificationTensorBoardHandler`.
Several writers share one folder, so every event file is read and their scalars merged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

__all__ = ["read_scalars", "epoch_curves", "CURVE_TAGS"]

#: curve name -> TensorBoard tags that may hold it (first found wins)
CURVE_TAGS: dict[str, tuple[str, ...]] = {
    "train_accuracy": ("train_accuracy",),
    "val_accuracy": ("val_accuracy", "val/accuracy"),
    "val_balanced_accuracy": ("val_balanced_accuracy", "val/balanced_accuracy"),
}


def read_scalars(folder: str | Path, tags: Iterable[str] | None = None) -> pd.DataFrame:
    """All scalars (``tag, step, value``) of the event files in ``folder`` (last write per step wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    wanted = set(tags) if tags is not None else None
    rows = []
    for path in sorted(Path(folder).glob("events.out.tfevents*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 1, "tensors": 1})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if wanted is None or tag in wanted:
                rows += [(tag, int(e.step), float(e.value), float(e.wall_time)) for e in acc.Scalars(tag)]
    frame = pd.DataFrame(rows, columns=["tag", "step", "value", "wall_time"])
    frame = frame.sort_values("wall_time").drop_duplicates(["tag", "step"], keep="last")
    return frame.drop(columns="wall_time").sort_values(["tag", "step"]).reset_index(drop=True)


def epoch_curves(folders: Sequence[tuple[str, Path]]) -> pd.DataFrame:
    """Per model and epoch: train accuracy, validation accuracy and balanced accuracy.

    Parameters
    ----------
    folders
        ``(model id, output_dir)`` pairs.

    Returns
    -------
    pandas.DataFrame
        ``model, curve, epoch, value`` (long format; missing curves are left out).
    """
    all_tags = {t for tags in CURVE_TAGS.values() for t in tags}
    frames = []
    for model, folder in folders:
        scalars = read_scalars(folder, all_tags)
        for curve, tags in CURVE_TAGS.items():
            for tag in tags:
                hit = scalars[scalars["tag"] == tag]
                if len(hit):
                    frames.append(pd.DataFrame({"model": model, "curve": curve, "epoch": hit["step"].to_numpy(),
                                                "value": hit["value"].to_numpy()}))
                    break
    if not frames:
        return pd.DataFrame(columns=["model", "curve", "epoch", "value"])
    return pd.concat(frames, ignore_index=True)
