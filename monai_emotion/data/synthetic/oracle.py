"""The oracle decoder of the synthetic dataset: template matching with the true patterns.

It knows what no real decoder knows (each class's spatial pattern in this subject), so its
score is a reference ceiling for decoders trained on the same data and labels, not a target.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from monai_emotion.data.labels import CLASSES, derive_labels
from monai_emotion.data.studyforrest import TR, discover_runs, normalize_subject, volume_movie_times
from monai_emotion.data.synthetic.timeline import Timeline
from monai_emotion.errors import ConfigError, LayoutError

__all__ = ["oracle_decode", "OracleScorer"]


def _read_voxels(path: str, flat: np.ndarray, chunk: int = 32) -> np.ndarray:
    """``(n, len(flat))`` float32 series of the voxels at Fortran-order indices ``flat``, read in chunks."""
    img = nib.load(path, keep_file_open=True)
    n = img.shape[3]
    out = np.empty((n, flat.size), dtype=np.float32)
    for t0 in range(0, n, chunk):
        block = np.asarray(img.dataobj[..., t0:t0 + chunk], dtype=np.float32)
        # a NIfTI block arrives Fortran-ordered: this reshape is a view, the take a row gather
        out[t0:t0 + block.shape[3]] = block.reshape((-1, block.shape[3]), order="F")[flat].T
    return out


def _detrend_zscore(data: np.ndarray, columns: int = 16384) -> np.ndarray:
    """Remove each column's linear trend and scale it to unit sd, in place (float32).

    What ``nilearn.signal.clean(detrend=True, standardize="zscore_sample")`` does, in column
    blocks and without float64 copies, which matter at full size.
    """
    t = np.arange(data.shape[0], dtype=np.float32)
    t -= t.mean()
    for j in range(0, data.shape[1], columns):
        part = data[:, j:j + columns]
        part -= part.mean(axis=0)
        part -= np.outer(t, (t @ part) / (t @ t))
        sd = part.std(axis=0, ddof=1)
        part /= np.where(sd > 0, sd, 1.0).astype(np.float32)
    return data


class _Collector:
    def __init__(self, n_volumes: int, keep: np.ndarray) -> None:
        self.data = np.empty((n_volumes, keep.size), dtype=np.float32)
        self.keep, self.filled = keep, 0

    def __call__(self, block: np.ndarray) -> None:
        self.data[self.filled:self.filled + len(block)] = block[:, self.keep]
        self.filled += len(block)


class OracleScorer:
    """Accumulates the oracle's predictions run by run (from files, or while generating).

    Parameters
    ----------
    root
        The synthetic dataset (its annotations give the label-rule labels).
    generation
        Its generation parameters (``ground_truth/generation.json``).
    subject, mask, patterns
        Subject label, the subject's brain mask (its coverage) and its ``(V, K)`` true patterns in mask order.
    lag, labels, threshold, max_voxels
        See :func:`oracle_decode`.
    """

    def __init__(self, root: Path, generation: dict, subject: str, mask: np.ndarray, patterns: np.ndarray,
                 *, lag: float = 4.0, labels: str = "rule", threshold: float = 0.5,
                 max_voxels: int | None = 200_000) -> None:
        if labels not in ("rule", "true"):
            raise ConfigError(f"labels must be 'rule' or 'true', got {labels!r}", fix="use 'rule' or 'true'")
        self.settings = {"subject": subject, "labels": labels, "lag": lag, "threshold": threshold}
        n_vox = int(mask.sum())
        self.keep = (np.arange(n_vox) if not max_voxels or n_vox <= max_voxels
                     else np.linspace(0, n_vox - 1, max_voxels).astype(int))
        self.flat = np.ravel_multi_index(np.nonzero(mask), mask.shape, order="F")[self.keep]
        templates = patterns[self.keep] - patterns[self.keep].mean(axis=0)
        self.templates = (templates / np.linalg.norm(templates, axis=0)).astype(np.float32)
        runs, lengths = generation["runs"], generation["volumes_per_run"]
        if labels == "rule":
            table = derive_labels(root / "annotations", generation["observers"], threshold=threshold,
                                  lag=lag, volumes_per_run=lengths, runs=runs)
            self.labels = {r: f["label_index"].to_numpy() for r, f in table.groupby("run")}
        else:
            timeline = Timeline.from_frame(pd.read_csv(root / "ground_truth" / "true_episodes.tsv", sep="\t"))
            self.labels = {r: timeline.classes_at(volume_movie_times(r, lengths[r - 1]) + TR / 2 - lag)
                           for r in runs}
        self.truth: list[np.ndarray] = []
        self.predicted: list[np.ndarray] = []

    def collector(self, n_volumes: int) -> _Collector:
        """A :func:`~monai_emotion.data.synthetic.bold.write_run` tap keeping this scorer's voxels."""
        return _Collector(n_volumes, self.keep)

    def add_run(self, run: int, data: np.ndarray) -> None:
        """Score one run: ``data`` is ``(n, len(keep))``, the kept voxels in any units (z-scored here)."""
        data = _detrend_zscore(data)
        labels = self.labels[run][: data.shape[0]]
        sel = labels >= 0
        self.truth.append(labels[sel])
        # templates are centred over voxels, so the dot product's argmax is the correlation's
        self.predicted.append(np.argmax(data @ self.templates, axis=1)[sel])

    def result(self) -> dict:
        from sklearn.metrics import balanced_accuracy_score, confusion_matrix

        truth = np.concatenate(self.truth) if self.truth else np.empty(0, int)
        pred = np.concatenate(self.predicted) if self.predicted else np.empty(0, int)
        k = len(CLASSES)
        confusion = confusion_matrix(truth, pred, labels=list(range(k)))
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.diag(confusion) / confusion.sum(axis=1)
        return {
            **self.settings, "n_voxels": int(self.keep.size),
            "balanced_accuracy": float(balanced_accuracy_score(truth, pred)) if truth.size else float("nan"),
            "chance": 1.0 / k,
            "recall": {c: (None if np.isnan(r) else float(r)) for c, r in zip(CLASSES, recall, strict=True)},
            "n_volumes": {c: int(n) for c, n in zip(CLASSES, confusion.sum(axis=1), strict=True)},
            "confusion": confusion.tolist(),
        }


def oracle_decode(
    out: str | os.PathLike,
    subject: str | int,
    lag: float = 4.0,
    *,
    labels: str = "rule",
    threshold: float = 0.5,
    max_voxels: int | None = 200_000,
) -> dict:
    """Decode a synthetic subject by matching its known class patterns (a reference ceiling).

    Each run is linearly detrended and z-scored per voxel; every volume with a class label
    is assigned the class whose true pattern correlates best with it.

    Parameters
    ----------
    out
        A folder written by :func:`~monai_emotion.data.synthetic.make_synthetic`.
    subject
        Subject label.
    lag
        Hemodynamic lag (s) of the labels.
    labels
        ``"rule"``: labels derived from the observer files by the label rule;
        ``"true"``: the hidden timeline read at ``lag``.
    threshold
        Label-rule threshold.
    max_voxels
        Use at most this many brain voxels (evenly spaced): ``4 * max_voxels`` bytes per
        volume of a run are held at once (0.4 GB for the longest run at full size).

    Returns
    -------
    dict
        ``balanced_accuracy``, ``recall`` per class, ``n_volumes`` per class, ``chance``
        (1/K), ``confusion`` (rows true, columns predicted, CLASSES order) and the settings.
    """
    root = Path(out)
    gen_path = root / "ground_truth" / "generation.json"
    if not gen_path.is_file():
        raise LayoutError("not a synthetic dataset (ground_truth/generation.json missing)", root,
                          fix="pass a folder written by make_synthetic")
    generation = json.loads(gen_path.read_text())
    sub = normalize_subject(subject)
    pattern_path = root / "ground_truth" / f"sub-{sub}_patterns.nii.gz"
    if not pattern_path.is_file():
        raise LayoutError(f"no ground-truth patterns for sub-{sub}", pattern_path,
                          fix=f"use one of the generated subjects {generation['subjects']}")
    # a realistic world's subject covers part of the group mask: its own mask says which part
    mask_path = root / "ground_truth" / f"sub-{sub}_brain_mask.nii.gz"
    if not mask_path.is_file():
        mask_path = root / "ground_truth" / "brain_mask.nii.gz"
    mask = np.asarray(nib.load(mask_path).dataobj) > 0
    patterns = np.asarray(nib.load(pattern_path).dataobj, dtype=np.float32)[mask]
    scorer = OracleScorer(root, generation, sub, mask, patterns, lag=lag, labels=labels,
                          threshold=threshold, max_voxels=max_voxels)
    for info in discover_runs(root, generation["space"], subjects=[sub], runs=generation["runs"]).runs:
        scorer.add_run(info.run, _read_voxels(info.path, scorer.flat))
    return scorer.result()
