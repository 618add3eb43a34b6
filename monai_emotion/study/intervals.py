"""95 % intervals of recall and balanced accuracy that respect autocorrelation: a block bootstrap.

Neighbouring volumes are not independent (slow BOLD, emotion episodes of several TRs), so a
Wilson interval that counts volumes as independent trials is too narrow. The block here is the
**episode**: a maximal stretch of one subject's run whose volumes share a true label, ordered by
volume, where a break of at most ``block_gap`` missing volumes (censored, unlabelled or TIE)
does not end the stretch. Episodes are resampled with replacement, within each true class
(stratified, so every class keeps its number of episodes), ``n_boot`` times; the interval is
the 2.5-97.5 % quantile range of the resampled recall (per class) and balanced accuracy (the
mean recall over the classes present). Works on whatever items exist: censoring only splits
episodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["episode_ids", "block_bootstrap"]


def episode_ids(frame: pd.DataFrame, block_gap: int = 2) -> np.ndarray:
    """Episode number of each row of a prediction table (``subject, run, volume, true_label``)."""
    if not len(frame):
        return np.zeros(0, dtype=np.int64)
    order = frame.sort_values(["subject", "run", "volume"], kind="stable")
    same = ((order["subject"].astype(str) == order["subject"].astype(str).shift())
            & (order["run"] == order["run"].shift())
            & (order["true_label"] == order["true_label"].shift())
            & (order["volume"] - order["volume"].shift() <= block_gap + 1))
    ids = np.cumsum(~same.to_numpy())
    out = np.empty(len(frame), dtype=np.int64)
    out[frame.index.get_indexer(order.index)] = ids - 1
    return out


def block_bootstrap(frame: pd.DataFrame, classes: Sequence[str], n_boot: int = 1000, block_gap: int = 2,
                    seed: int = 0) -> dict[str, Any]:
    """Block-bootstrap 95 % intervals of each class's recall and of the balanced accuracy.

    Parameters
    ----------
    frame
        Predictions (``subject, run, volume, true_label, predicted_label``) of one unit.
    classes
        Class names.
    n_boot
        Bootstrap resamples (0: no intervals).
    block_gap
        Missing volumes that do not end an episode.
    seed
        Seed of the resampling.

    Returns
    -------
    dict
        ``recall`` (class -> ``(low, high)`` or ``None`` for an absent class),
        ``balanced_accuracy`` (``(low, high)`` or ``None``), ``episodes`` (class -> count).
    """
    frame = frame.reset_index(drop=True)
    ids = episode_ids(frame, block_gap)
    correct = (frame["true_label"] == frame["predicted_label"]).to_numpy()
    n_episodes = int(ids.max()) + 1 if ids.size else 0
    hits = np.bincount(ids, weights=correct, minlength=n_episodes)
    sizes = np.bincount(ids, minlength=n_episodes).astype(float)
    label_of = np.empty(n_episodes, dtype=object)
    label_of[ids] = frame["true_label"].to_numpy()
    rng = np.random.default_rng(seed)
    recall: dict[str, tuple[float, float] | None] = {}
    draws = []
    episodes = {}
    for c in classes:
        members = np.flatnonzero(label_of == c)
        episodes[c] = int(members.size)
        if members.size == 0 or n_boot <= 0:
            recall[c] = None
            continue
        picks = members[rng.integers(0, members.size, size=(n_boot, members.size))]
        values = hits[picks].sum(axis=1) / sizes[picks].sum(axis=1)
        draws.append(values)
        low, high = np.quantile(values, [0.025, 0.975])
        recall[c] = (float(low), float(high))
    balanced = None
    if draws:
        low, high = np.quantile(np.mean(draws, axis=0), [0.025, 0.975])
        balanced = (float(low), float(high))
    return {"recall": recall, "balanced_accuracy": balanced, "episodes": episodes}
