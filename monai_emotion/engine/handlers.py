"""Classification metrics and handlers for MONAI/Ignite engines.

:class:`ClassificationMetric` is an Ignite metric that accumulates one confusion matrix
(and one per subject) and returns a scalar (``balanced_accuracy``, ``macro_f1``, ...), so
it can be a ``key_val_metric``. It also puts the full report into
``engine.state.metric_details[name]``, which :class:`ClassificationTensorBoardHandler`
and :class:`MetricsJSONWriter` read. Under DDP the confusion matrices are summed over
ranks: with ``DistributedSampler(even_divisible=False)`` every sample is seen once, so the
values equal the single-process ones.

The numbers themselves come from the pure functions of :mod:`monai_emotion.metrics`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced

from monai_emotion.errors import ConfigError, DataError
from monai_emotion.metrics import (
    classification_report_from_confusion,
    confusion_from_labels,
    confusion_matrix_figure,
    figure_to_array,
)

__all__ = [
    "SCALAR_METRICS", "subjects_from_batch", "ClassificationMetric", "ClassificationTensorBoardHandler",
    "MetricsJSONWriter",
]  # fmt: skip

#: whole-set scalars a ClassificationMetric can return; per class: "recall:FEAR", "f1:0", ...
SCALAR_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
_PER_CLASS = ("recall", "precision", "f1")


def _lookup(item: Mapping, key: str) -> Any:
    if key in item:
        return item[key]
    image = item.get("image")
    meta = getattr(image, "meta", None) or item.get("image_meta_dict") or {}
    if key in meta:
        return meta[key]
    raise DataError(
        f"the batch has no {key!r} (looked in the item, image.meta and image_meta_dict)",
        where="per-subject metrics",
        fix=f"keep {key!r} in the datalist items, or set subject_key to null",
    )


def subjects_from_batch(batch: Any, key: str = "subject") -> list[str]:
    """Subject labels of a collated batch (dict of lists) or a decollated one (list of dicts)."""
    values = [_lookup(batch, key)] if isinstance(batch, Mapping) else [_lookup(i, key) for i in batch]
    flat: list[str] = []
    for value in values:  # one str/int per decollated item, a list or tensor per collated batch
        if isinstance(value, torch.Tensor):
            value = value.reshape(-1).tolist()
        flat += [str(value)] if isinstance(value, (str, int, np.integer)) else [str(v) for v in value]
    return flat


def _to_indices(x: Any, num_classes: int) -> torch.Tensor:
    # accepts per-sample lists (decollated) or batches; scores/one-hot (B, K) or indices (B,)/(B, 1)
    if isinstance(x, (list, tuple)):
        x = torch.stack([torch.as_tensor(v).as_subclass(torch.Tensor) for v in x])
    x = torch.as_tensor(x).as_subclass(torch.Tensor).detach()
    if x.ndim >= 2 and x.shape[-1] == num_classes:
        x = x.argmax(dim=-1)
    return x.reshape(-1).long().cpu()


def _pred_label_transform(output: Any) -> tuple[Any, Any]:
    # MONAI engines: dict (batch) or list of dicts (decollated) with "pred" and "label"
    if isinstance(output, Mapping):
        return output["pred"], output["label"]
    return [o["pred"] for o in output], [o["label"] for o in output]


class ClassificationMetric(Metric):
    """Confusion-matrix metric returning one scalar, with the full report as details.

    Parameters
    ----------
    num_classes
        Number of classes ``K``.
    metric
        What :meth:`compute` returns: ``"accuracy"``, ``"balanced_accuracy"``,
        ``"macro_f1"``, or a per-class ``"recall:<class>"``, ``"precision:<class>"``,
        ``"f1:<class>"`` (class name or index; NaN when undefined).
    class_names
        ``K`` names used in the report (default ``"0"..."K-1"``).
    subject_key
        Batch key (or ``image.meta`` key) holding each sample's subject; when set, the
        details also hold a report per subject, logged at each epoch.
    output_transform
        Maps ``engine.state.output`` to ``(pred, label)``; default takes ``"pred"`` and
        ``"label"`` of MONAI's (decollated) output. Either may be scores, one-hot or indices.

    Notes
    -----
    After each epoch ``engine.state.metric_details[name]`` is the
    :func:`classification_report_from_confusion` dict plus ``per_subject`` (subject ->
    report). Do not list this name in ``MetricsSaver(metric_details=...)``.
    """

    def __init__(
        self,
        num_classes: int = 5,
        metric: str = "balanced_accuracy",
        class_names: Sequence[str] | None = None,
        subject_key: str | None = None,
        output_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.num_classes = int(num_classes)
        self.class_names = [str(c) for c in (class_names or range(self.num_classes))]
        if len(self.class_names) != self.num_classes:
            raise ConfigError(
                f"{len(self.class_names)} class_names for num_classes={num_classes}",
                where="ClassificationMetric",
                fix="give one name per class",
            )
        self.metric = metric
        self._select(None)  # validate the metric name now, not at the first epoch
        self.subject_key = subject_key
        self.report: dict[str, Any] | None = None
        # counts stay on the CPU (K x K ints); idist moves them to the backend's device to reduce
        super().__init__(output_transform=output_transform or _pred_label_transform, device="cpu")

    def _select(self, report: dict[str, Any] | None) -> float:
        kind, _, cls = self.metric.partition(":")
        if not cls and kind in SCALAR_METRICS:
            value = report[kind] if report else None
        elif cls and kind in _PER_CLASS and (cls in self.class_names or cls in map(str, range(self.num_classes))):
            name = cls if cls in self.class_names else self.class_names[int(cls)]
            value = report[kind][name] if report else None
        else:
            choices = list(SCALAR_METRICS) + [f"{k}:<class>" for k in _PER_CLASS]
            raise ConfigError(
                f"unknown metric {self.metric!r} (classes: {self.class_names})",
                where="ClassificationMetric",
                fix=f"use one of {choices}",
            )
        return float("nan") if value is None else float(value)

    @reinit__is_reduced
    def reset(self) -> None:
        """Zero the counts (Ignite calls it at each epoch start)."""
        self._cm = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self._by_subject: dict[str, np.ndarray] = {}

    @reinit__is_reduced
    def _accumulate(self, pred: Any, label: Any, subjects: list[str] | None = None) -> None:
        p, t = _to_indices(pred, self.num_classes).numpy(), _to_indices(label, self.num_classes).numpy()
        if p.shape != t.shape:
            raise DataError(f"{p.size} predictions for {t.size} labels", where="ClassificationMetric")
        self._cm += confusion_from_labels(t, p, self.num_classes)
        if subjects is None:
            return
        if len(subjects) != t.size:
            raise DataError(f"{len(subjects)} subjects for {t.size} samples", where="ClassificationMetric")
        names = np.asarray(subjects)
        for subject in np.unique(names):
            mask = names == subject
            cm = confusion_from_labels(t[mask], p[mask], self.num_classes)
            self._by_subject[str(subject)] = self._by_subject.get(str(subject), 0) + cm

    def update(self, output: Sequence[Any]) -> None:
        """Add ``(pred, label)`` of one batch."""
        self._accumulate(output[0], output[1])

    @torch.no_grad()
    def iteration_completed(self, engine: Engine) -> None:
        """Read predictions from the output and, if asked, subjects from ``engine.state.batch``."""
        output = self._output_transform(engine.state.output)
        if isinstance(output, Mapping):
            output = (output["y_pred"], output["y"])
        subjects = subjects_from_batch(engine.state.batch, self.subject_key) if self.subject_key else None
        self._accumulate(output[0], output[1], subjects)

    def compute(self) -> float:
        """The selected scalar over all ranks' samples (a collective: every rank must call it)."""
        # counts add exactly over ranks, so the result equals the single-process one
        cm = idist.all_reduce(torch.from_numpy(self._cm.copy())).numpy()
        per_subject: dict[str, np.ndarray] = {}
        if self.subject_key:
            for part in idist.all_gather(dict(self._by_subject)):
                for subject, counts in part.items():
                    per_subject[subject] = per_subject.get(subject, 0) + counts
        if cm.sum() == 0:
            raise NotComputableError("ClassificationMetric needs at least one sample")
        self.report = classification_report_from_confusion(cm, self.class_names)
        self.report["per_subject"] = {
            s: classification_report_from_confusion(per_subject[s], self.class_names)
            for s in sorted(per_subject)
        }
        return self._select(self.report)

    def completed(self, engine: Engine, name: str) -> None:
        """Store the scalar in ``state.metrics`` and the report in ``state.metric_details``."""
        super().completed(engine, name)
        if getattr(engine.state, "metric_details", None) is None:
            engine.state.metric_details = {}  # plain Ignite engines lack it; MONAI's have it
        engine.state.metric_details[name] = self.report
        per_subject = self.report["per_subject"]
        if per_subject and idist.get_rank() == 0:
            text = ", ".join(f"{s}={r['balanced_accuracy']:.3f} (n={r['n']})" for s, r in per_subject.items())
            engine.logger.info(f"{name} per-subject balanced accuracy: {text}")


class _ReportHandler:
    """Runs on rank 0 at ``EPOCH_COMPLETED`` with the report of the metric ``metric_name``."""

    metric_name: str

    def attach(self, engine: Engine) -> None:
        """Register on ``EPOCH_COMPLETED`` (after the metrics, which were attached first)."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Write this epoch's report (rank 0 only: the metric already gathered all ranks)."""
        if idist.get_rank() != 0:
            return
        details = getattr(engine.state, "metric_details", None) or {}
        if self.metric_name not in details:
            raise ConfigError(
                f"no ClassificationMetric details named {self.metric_name!r} (have {sorted(details)})",
                where=type(self).__name__,
                fix="attach a monai_emotion.engine.handlers.ClassificationMetric under this name in "
                "key_val_metric/additional_metrics (names must match exactly)",
            )
        self.write(engine, details[self.metric_name])

    def write(self, engine: Engine, report: dict[str, Any]) -> None:  # pragma: no cover
        raise NotImplementedError


class ClassificationTensorBoardHandler(_ReportHandler):
    """Write per-class recall, balanced accuracy, macro F1 and a confusion-matrix image.

    The step is ``global_epoch_transform(engine.state.epoch)``; inside training MONAI's
    evaluator already carries the trainer's epoch, so it lines up with the train curves.
    Scalar tags: ``<prefix>/balanced_accuracy``, ``<prefix>/macro_f1``, ``<prefix>/accuracy``,
    ``<prefix>/recall/<class>``, ``<prefix>/per_subject/<subject>/balanced_accuracy``;
    image tag: ``<prefix>/confusion_matrix``.

    Parameters
    ----------
    metric_name
        Name the ClassificationMetric was attached under (e.g. ``"val_balanced_accuracy"``).
    log_dir
        Event file folder when ``summary_writer`` is not given (the writer is made lazily,
        on rank 0 only).
    summary_writer
        An existing ``SummaryWriter`` to share (this handler then never closes it).
    tag_prefix
        First part of every tag.
    global_epoch_transform
        Maps the engine's epoch to the TensorBoard step.
    """

    def __init__(
        self,
        metric_name: str,
        log_dir: str = "./runs",
        summary_writer: Any = None,
        tag_prefix: str = "val",
        global_epoch_transform: Callable[[int], int] = lambda epoch: epoch,
    ) -> None:
        self.metric_name = metric_name
        self.log_dir = log_dir
        self._writer = summary_writer
        self._own_writer = summary_writer is None
        self.tag_prefix = tag_prefix
        self.global_epoch_transform = global_epoch_transform

    def write(self, engine: Engine, report: dict[str, Any]) -> None:
        """Add this epoch's scalars and image, then flush."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.log_dir)
        step, p = self.global_epoch_transform(engine.state.epoch), self.tag_prefix
        scalars = {f"{p}/{key}": report[key] for key in SCALAR_METRICS}
        scalars.update({f"{p}/recall/{c}": v for c, v in report["recall"].items()})
        for subject, sub in report["per_subject"].items():
            scalars[f"{p}/per_subject/{subject}/balanced_accuracy"] = sub["balanced_accuracy"]
        for tag, value in scalars.items():
            if value is not None:  # undefined (class absent this epoch): leave a gap
                self._writer.add_scalar(tag, value, step)
        fig = confusion_matrix_figure(report["confusion_matrix"], report["class_names"], f"epoch {step}")
        self._writer.add_image(f"{p}/confusion_matrix", figure_to_array(fig), step, dataformats="HWC")
        self._writer.flush()

    def close(self) -> None:
        """Close the writer if this handler created it."""
        if self._own_writer and self._writer is not None:
            self._writer.close()
            self._writer = None


class MetricsJSONWriter(_ReportHandler):
    """Write ``metrics.json`` at each evaluation's ``EPOCH_COMPLETED`` (rank 0).

    The file holds :func:`classification_report_from_confusion`'s keys (accuracy, balanced
    accuracy, macro F1, per-class recall/precision/F1 and counts, confusion matrix,
    ``chance_level`` = 1/K), ``per_subject``, ``metric_name``, ``value`` and ``epoch``. It is
    replaced atomically each epoch, so it always describes the last evaluation.

    Parameters
    ----------
    metric_name
        Name the ClassificationMetric was attached under.
    output_dir
        Folder (created if missing).
    filename
        File name inside ``output_dir``.
    warn_degenerate
        Log a warning (and raise a ``UserWarning``) when the report's ``degeneracy`` flags the
        model (one class for most volumes, or accuracy below the majority share): on for a
        final evaluation, off for the per-epoch validation file.
    """

    def __init__(self, metric_name: str, output_dir: str | os.PathLike, filename: str = "metrics.json",
                 warn_degenerate: bool = False) -> None:
        self.metric_name = metric_name
        self.path = os.path.join(os.fspath(output_dir), filename)
        self.warn_degenerate = warn_degenerate

    def write(self, engine: Engine, report: dict[str, Any]) -> None:
        """Write the file."""
        value = engine.state.metrics.get(self.metric_name)
        payload = {
            "metric_name": self.metric_name,
            "value": None if isinstance(value, float) and math.isnan(value) else value,
            "epoch": engine.state.epoch,
            **report,
        }
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, allow_nan=False)
        os.replace(tmp, self.path)
        flags = report.get("degeneracy") or {}
        if self.warn_degenerate and flags.get("flagged"):
            message = (f"degenerate model ({self.path}): {'; '.join(flags['reasons'])}. Fix to try: "
                       "class_weights 'balanced', a smaller head (network_def#head 'gap'), weight_decay, "
                       "fewer epochs or early stopping; check the runs for outlier volumes")
            logging.getLogger("monai_emotion").warning(message)
            warnings.warn(message, UserWarning, stacklevel=2)
