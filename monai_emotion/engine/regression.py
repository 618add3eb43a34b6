"""Per-dimension regression metrics (Pearson r, R²) with circular-shift chance, for MONAI engines.

:class:`DimensionMetric` is an Ignite metric reading ``dims_pred`` / ``dims_target`` (put there
by :class:`~monai_emotion.engine.losses.SplitDimensionsd`) and each sample's subject, run and
frame from the batch. At the epoch's end it computes, per dimension, Pearson r and R²
(``1 - SS_res / SS_tot`` around the held-out targets' mean) and a chance level: the targets
are rotated within each (subject, run), in frame order, by offsets drawn as the study's
permutations draw theirs (:func:`~monai_emotion.data.labels.shift_offset`), against the fixed
predictions, ``n_shifts`` times; ``p = (1 + #{null r >= r}) / (1 + n)``
(:func:`~monai_emotion.study.chance.single_test`). A rotation keeps both series'
autocorrelation, so it tests whether the predictions follow the targets in time.

Scalars go to ``engine.state.metrics`` (``<name>`` = the selected value, and
``<name>_r_<dim>``, ``<name>_r2_<dim>``, ``<name>_p_<dim>``, ``<name>_chance_r_<dim>``), so
MONAI's ``StatsHandler`` and ``TensorBoardStatsHandler`` log them; the report goes to
``engine.state.metric_details[name]``, which :class:`DimensionsJSONWriter` merges into the
classification metrics file (``metrics.json``) under ``"dimensions"``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced

from monai_emotion.data.dimensions import DIMENSIONS, check_dimensions
from monai_emotion.data.labels import shift_offset
from monai_emotion.engine.handlers import MetricsJSONWriter, subjects_from_batch
from monai_emotion.engine.losses import DIMS_PRED, DIMS_TARGET
from monai_emotion.errors import ConfigError, DataError
from monai_emotion.study.chance import single_test

__all__ = ["pearson_r", "r_squared", "shifted_null", "dimension_report", "DimensionMetric",
           "DimensionsJSONWriter", "with_dimensions_writer"]

_SELECT = ("mean_r", "r", "r2")


def pearson_r(pred: np.ndarray, target: np.ndarray) -> float:
    """Pearson correlation of two vectors (NaN when either is constant or shorter than 3)."""
    p, t = np.asarray(pred, dtype=float), np.asarray(target, dtype=float)
    if p.size < 3 or p.std() == 0 or t.std() == 0:
        return float("nan")
    return float(np.corrcoef(p, t)[0, 1])


def r_squared(pred: np.ndarray, target: np.ndarray) -> float:
    """``1 - SS_res / SS_tot`` (negative when worse than the targets' mean; NaN for constant targets)."""
    p, t = np.asarray(pred, dtype=float), np.asarray(target, dtype=float)
    total = float(((t - t.mean()) ** 2).sum()) if t.size else 0.0
    return float("nan") if total == 0 else 1.0 - float(((t - p) ** 2).sum()) / total


def shifted_null(pred: np.ndarray, target: np.ndarray, groups: np.ndarray, n_shifts: int,
                 seed: int = 0) -> np.ndarray:
    """Pearson r of ``pred`` against ``target`` rotated within each group, ``n_shifts`` times.

    ``groups`` labels each sample's (subject, run); samples must be in time order within a group.
    """
    rng = np.random.default_rng(seed)
    index = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    out = np.empty(n_shifts)
    for k in range(n_shifts):
        shifted = np.empty_like(target)
        for idx in index:
            shifted[idx] = np.roll(target[idx], shift_offset(rng, idx.size))
        out[k] = pearson_r(pred, shifted)
    return out


def dimension_report(pred: np.ndarray, target: np.ndarray, groups: np.ndarray, names: Sequence[str],
                     n_shifts: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per dimension: ``n``, ``r``, ``r2``, ``chance_r`` (null mean), ``chance_low/high``, ``p_value``.

    Parameters
    ----------
    pred, target
        ``(N, D)`` predictions and targets (rows with a NaN target are left out of that dimension).
    groups
        ``(N,)`` labels of each row's (subject, run), rows in time order within a group.
    names
        The ``D`` dimension names.
    n_shifts, seed
        Circular shifts of the chance level, and their seed.
    """
    report: dict[str, Any] = {"n_shifts": int(n_shifts), "chance": "targets rotated within (subject, run)"}
    for d, name in enumerate(names):
        keep = np.isfinite(target[:, d])
        p, t, g = pred[keep, d], target[keep, d], groups[keep]
        r = pearson_r(p, t)
        test = single_test(r, shifted_null(p, t, g, n_shifts, seed + d))
        report[name] = {"n": int(keep.sum()), "r": r, "r2": r_squared(p, t), "chance_r": test.chance_mean,
                        "chance_low": test.chance_low, "chance_high": test.chance_high, "p_value": test.p_value}
    return report


def _rows(output: Any, key: str) -> np.ndarray:
    values = [output[key]] if isinstance(output, Mapping) else [o[key] for o in output]
    rows = [torch.as_tensor(v).as_subclass(torch.Tensor).detach().float().cpu().reshape(-1, v.shape[-1])
            for v in values]
    return torch.cat(rows).numpy()


class DimensionMetric(Metric):
    """Pearson r and R² per dimension with circular-shift chance (module notes).

    Parameters
    ----------
    names
        Dimension names, in the output's order.
    metric
        What :meth:`compute` returns: ``"mean_r"`` (over dimensions), ``"r:<dim>"`` or ``"r2:<dim>"``.
    n_shifts, seed
        Circular shifts of the chance level, and their seed.
    group_keys, order_key
        Batch keys naming each sample's run (with its subject) and its time order.
    """

    def __init__(self, names: Sequence[str] = DIMENSIONS, metric: str = "mean_r", n_shifts: int = 1000,
                 seed: int = 0, group_keys: Sequence[str] = ("subject", "run"), order_key: str = "frame",
                 output_transform: Callable[[Any], Any] = lambda x: x) -> None:
        self.names = check_dimensions(names, where="DimensionMetric")
        kind, _, dim = metric.partition(":")
        if kind not in _SELECT or (kind == "mean_r") != (not dim) or (dim and dim not in self.names):
            raise ConfigError(f"unknown metric {metric!r}", where="DimensionMetric",
                              fix=f"use 'mean_r', 'r:<dim>' or 'r2:<dim>' with a dimension of {list(self.names)}")
        self.metric, self.n_shifts, self.seed = metric, int(n_shifts), int(seed)
        self.group_keys, self.order_key = tuple(group_keys), order_key
        self.report: dict[str, Any] | None = None
        super().__init__(output_transform=output_transform, device="cpu")

    @reinit__is_reduced
    def reset(self) -> None:
        """Forget the epoch's samples."""
        self._pred: list[np.ndarray] = []
        self._target: list[np.ndarray] = []
        self._keys: list[tuple[str, float]] = []

    def update(self, output: Any) -> None:  # pragma: no cover - iteration_completed does the work
        """Unused: samples are read in :meth:`iteration_completed` (they need the batch)."""

    @torch.no_grad()
    def iteration_completed(self, engine: Engine) -> None:
        """Store this batch's dimension predictions and targets with each sample's run and frame."""
        output = self._output_transform(engine.state.output)
        pred, target = _rows(output, DIMS_PRED), _rows(output, DIMS_TARGET)
        if pred.shape != target.shape or pred.shape[1] != len(self.names):
            raise DataError(f"dimension predictions {pred.shape} and targets {target.shape} for "
                            f"{len(self.names)} dimensions", where="DimensionMetric",
                            fix="run SplitDimensionsd first (configs/dimensions.json wraps the postprocessing)")
        parts = [subjects_from_batch(engine.state.batch, key) for key in self.group_keys]
        order = [float(v) for v in subjects_from_batch(engine.state.batch, self.order_key)]
        self._pred.append(pred)
        self._target.append(target)
        self._keys += [("/".join(g), o) for *g, o in zip(*parts, order, strict=True)]

    def compute(self) -> float:
        """The selected value over all ranks' samples (a collective under DDP)."""
        if not self._pred:
            raise NotComputableError("DimensionMetric needs at least one sample")
        gathered = idist.all_gather({"pred": np.concatenate(self._pred), "target": np.concatenate(self._target),
                                     "keys": list(self._keys)})
        parts = gathered if isinstance(gathered, list) else [gathered]
        pred = np.concatenate([p["pred"] for p in parts])
        target = np.concatenate([p["target"] for p in parts])
        keys = [k for p in parts for k in p["keys"]]
        order = sorted(range(len(keys)), key=lambda i: keys[i])  # by run, then frame: time order
        groups = np.array([keys[i][0] for i in order])
        self.report = dimension_report(pred[order], target[order], groups, self.names, self.n_shifts, self.seed)
        kind, _, dim = self.metric.partition(":")
        if kind == "mean_r":
            return float(np.nanmean([self.report[n]["r"] for n in self.names]))
        return float(self.report[dim][kind])

    def completed(self, engine: Engine, name: str) -> None:
        """The selected value, the per-dimension scalars and the report into the engine's state."""
        super().completed(engine, name)
        for dim in self.names:
            for key in ("r", "r2", "p_value", "chance_r"):
                short = {"p_value": "p"}.get(key, key)
                engine.state.metrics[f"{name}_{short}_{dim}"] = float(self.report[dim][key])
        if getattr(engine.state, "metric_details", None) is None:
            engine.state.metric_details = {}
        engine.state.metric_details[name] = self.report


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return {k: _finite(v) for k, v in value.items()} if isinstance(value, dict) else value


class DimensionsJSONWriter:
    """Merge the :class:`DimensionMetric` report into a metrics JSON file under ``"dimensions"``.

    Attached after the classification ``MetricsJSONWriter`` (same ``EPOCH_COMPLETED``), so it
    adds to the file that one has just written (or starts it). Rank 0 only.
    """

    def __init__(self, metric_name: str, path: str | os.PathLike) -> None:
        self.metric_name, self.path = metric_name, os.fspath(path)

    def attach(self, engine: Engine) -> None:
        """Register on ``EPOCH_COMPLETED``."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Rewrite the file atomically with the ``dimensions`` section."""
        if idist.get_rank() != 0:
            return
        details = (getattr(engine.state, "metric_details", None) or {}).get(self.metric_name)
        if details is None:
            raise ConfigError(f"no DimensionMetric named {self.metric_name!r}", where="DimensionsJSONWriter",
                              fix="attach monai_emotion.engine.regression.DimensionMetric under this name")
        payload: dict[str, Any] = {}
        if os.path.isfile(self.path):
            with open(self.path, encoding="utf-8") as f:
                payload = json.load(f)
        payload["dimensions"] = _finite({"metric_name": self.metric_name, "epoch": engine.state.epoch, **details})
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, allow_nan=False)
        os.replace(tmp, self.path)


def with_dimensions_writer(handlers: Sequence[Any], metric_name: str = "val_dimensions") -> list[Any]:
    """``handlers`` plus one :class:`DimensionsJSONWriter` per ``MetricsJSONWriter`` among them.

    What ``configs/dimensions.json`` gives the evaluator: training's per-epoch
    ``val_metrics.json`` and evaluation's ``eval/metrics.json`` both get the section, whatever
    config layered the handler list.
    """
    handlers = list(handlers)
    return handlers + [DimensionsJSONWriter(metric_name, h.path) for h in handlers if isinstance(h, MetricsJSONWriter)]
