"""Run the bundle's own configs in-process: the study's only way to train and test a CNN.

Every CNN model of a study is ``configs/train.json`` run as a MONAI ``ConfigWorkflow`` with
overrides (``dataset_dir``, ``data#subjects``, ``data#split``, ``data#labels#lag``,
``data#label_permutation``, ``output_dir``, ``ckpt_dir``, ...), then
``[train.json, evaluate.json]`` once per test set. There is no second training loop.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from monai_emotion.errors import ConfigError
from monai_emotion.fileio import atomic_write_json, read_json
from monai_emotion.study.alignment import alignment_overrides
from monai_emotion.study.config import Study
from monai_emotion.study.plan import ModelSpec, TestSet

__all__ = ["base_overrides", "model_overrides", "test_overrides", "config_files", "parse_component",
           "bundle_experiment", "run_workflow",
           "CNNRunner"]


def base_overrides(study: Study, dataset_dir: str, annotations_dir: str) -> dict[str, Any]:
    """Bundle overrides shared by every model of the study (data, labels, network, training).

    The label rule and the preprocessing go in whole (``data#labels``, ``data#preprocessing``:
    every field), so the bundle's own defaults for them never enter a study.
    """
    overrides: dict[str, Any] = {
        "bundle_root": str(study.bundle),
        "dataset_dir": dataset_dir,
        "annotations_dir": annotations_dir,
        "cache_dir": study.data.cache_dir or "",
        "data#space": study.data.space,
        "data#labels": study.labels.to_dict(),
        "data#preprocessing": study.preprocessing.to_dict(),
        "data#subjects": list(study.subjects) if study.subjects else None,
    }
    overrides.update({f"network_def#{k}": v for k, v in study.network.items()})
    overrides.update(study.training.to_dict())
    overrides.update(study.bundle_overrides)
    return overrides


def model_overrides(spec: ModelSpec) -> dict[str, Any]:
    """The overrides that make the bundle train ``spec``."""
    return {
        "data#subjects": list(spec.subjects),
        "data#split": dict(spec.split),
        "data#labels#lag": float(spec.lag),
        "data#label_permutation": spec.permutation,
    }


def test_overrides(spec: ModelSpec, test: TestSet) -> dict[str, Any]:
    """The overrides that make ``evaluate.json`` score ``test`` (its ``test`` split part)."""
    return {**model_overrides(spec), "data#subjects": list(test.subjects), "data#split": dict(test.split),
            "eval_split": "test"}


def config_files(study: Study, *names: str) -> list[str]:
    """Paths of the bundle config files ``names`` (e.g. ``"train.json"``)."""
    return [str(study.bundle / "configs" / n) for n in names]


class _Sink(io.TextIOBase):
    """A stream that never closes, writing to the current model's log file (or nowhere).

    Loggers created while a workflow runs keep whatever ``sys.stdout`` was then; pointing them
    at this sink instead of a real file keeps them valid after the file is closed.
    """

    def __init__(self) -> None:
        self.target: Any = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.target is not None:
            self.target.write(text)
        return len(text)

    def flush(self) -> None:
        if self.target is not None:
            self.target.flush()


_SINK = _Sink()


@contextlib.contextmanager
def captured(log_path: Path | None) -> Iterator[None]:
    """Send the bundle's logging and prints to ``log_path`` (or discard them) for one workflow."""
    root = logging.getLogger()
    quiet = logging.getLogger("monai.bundle.workflows")  # says "skipping logging" on every run
    saved = (root.handlers[:], root.level, quiet.level)
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path or os.devnull, "a") as fh:
        _SINK.target = fh
        handler = logging.StreamHandler(_SINK)
        handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
        root.handlers = [handler]
        root.setLevel(logging.INFO)
        quiet.setLevel(logging.ERROR)
        try:
            # record=True also catches warnings raised under an inner simplefilter("always")
            # (make_splits warns on purpose for the leaky split): they go to the log, not the console
            with contextlib.redirect_stdout(_SINK), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    yield
                finally:
                    for w in caught:
                        fh.write(f"warning: {w.category.__name__}: {w.message}\n")
        finally:
            _SINK.flush()
            _SINK.target = None
            root.handlers, root.level = saved[0], saved[1]
            quiet.setLevel(saved[2])


def _close_writers(workflow: Any) -> None:
    # TensorBoard handlers keep a SummaryWriter (and its thread) open; flush and close them so
    # the event files are complete before the study reads them
    for key in ("train#handlers", "validate#handlers"):
        try:
            handlers = workflow.parser.get_parsed_content(key, lazy=True)
        except Exception:  # noqa: BLE001 - a config without this key has nothing to close
            continue
        for handler in handlers or []:
            close = getattr(handler, "close", None)
            if callable(close) and (hasattr(handler, "_writer") or hasattr(handler, "internal_writer")):
                close()


def _detached(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``overrides`` for a MONAI parser.

    The parser keeps the dicts it is given and writes nested keys into them: after
    ``{"data#labels": rule, "data#labels#lag": 0}`` the caller's ``rule`` would hold lag 0, and
    the study's shared overrides (and every model digest made from them) would change.
    """
    return copy.deepcopy(dict(overrides))


def run_workflow(files: list[str], overrides: Mapping[str, Any], log_path: Path | None = None,
                 tracking: str | None = None) -> Any:
    """Initialise, run and finalise one ``ConfigWorkflow`` in this process.

    ``tracking`` is MONAI's ``--tracking`` (a settings file such as configs/mlflow.json).
    Returns the workflow (its parser holds the parsed components).
    """
    from monai.bundle import ConfigWorkflow

    path_before = list(sys.path)
    with captured(log_path):
        workflow = ConfigWorkflow(config_file=files, workflow_type="train", logging_file=False,
                                  tracking=tracking, **_detached(overrides))
        try:
            workflow.initialize()
            workflow.run()
            workflow.finalize()
        finally:
            _close_writers(workflow)
            sys.path[:] = path_before  # ConfigWorkflow.run adds the bundle root on every call
    return workflow


def parse_component(study: Study, overrides: Mapping[str, Any], key: str) -> Any:
    """Build one component (``experiment``, ``network_def``, ...) of ``train.json`` under ``overrides``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files(study, "train.json"))
    parser.update(_detached(overrides))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return parser.get_parsed_content(key)


def bundle_experiment(study: Study, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """What the bundle's ``experiment`` component returns under ``overrides`` (items, classes, ...).

    Parsing only this component runs ``prepare_experiment`` exactly as training would.
    """
    return parse_component(study, overrides, "experiment")


class CNNRunner:
    """Train and test the study's CNN models through the bundle, skipping finished ones.

    A model's folder holds ``model.json`` (its spec and a digest of every setting that shapes
    it), ``train/`` (the bundle's output_dir: TensorBoard events, val_metrics.json, records),
    ``ckpt/`` (model.pt, training state) and ``eval/<test set>/`` (metrics.json,
    predictions.csv). A model whose digest and predictions are all present is not rerun.
    """

    def __init__(self, study: Study, root: Path, base: Mapping[str, Any]) -> None:
        self.study = study
        self.root = Path(root)
        self.base = dict(base)

    def folder(self, spec: ModelSpec) -> Path:
        return self.root / spec.id

    def _tracking(self, spec: ModelSpec) -> tuple[str | None, dict[str, Any]]:
        """MONAI's ``tracking`` settings file and its overrides for ``spec`` (none when off)."""
        runtime = self.study.runtime
        if not runtime.mlflow:
            return None, {}
        uri = runtime.mlflow_uri or f"sqlite:///{(self.root / 'mlruns.db').resolve()}"
        tags = {"study": self.study.name, "model": spec.id}
        return config_files(self.study, "mlflow.json")[0], {
            "tracking_uri": uri, "experiment_name": self.study.name, "run_name": spec.id, "tracking_tags": tags}

    def _digest(self, spec: ModelSpec) -> str:
        aligned = alignment_overrides(self.study.alignment, spec)  # {} unaligned: old digests hold
        return spec.digest({"base": self.base, "bundle": str(self.study.bundle), **aligned})

    def done(self, spec: ModelSpec) -> bool:
        """Whether ``spec``'s results exist and were made with the same settings."""
        saved = read_json(self.folder(spec) / "model.json")  # None: missing or unreadable
        return saved is not None and saved.get("digest") == self._digest(spec) and all(
            (self.folder(spec) / "eval" / t.name / "predictions.csv").is_file() for t in spec.test_sets
        )

    def run(self, spec: ModelSpec) -> dict[str, Any]:
        """Train ``spec`` and evaluate every test set; returns timings and the model folder."""
        folder = self.folder(spec)
        record_path = folder / "model.json"
        if record_path.is_file():
            record_path.unlink()  # an interrupted or outdated run is redone from scratch
        dirs = {"output_dir": str(folder / "train"), "ckpt_dir": str(folder / "ckpt")}
        for stale in Path(dirs["output_dir"]).glob("events.out.tfevents*"):
            stale.unlink()  # curves of an earlier, outdated run would otherwise be merged
        for stale in Path(dirs["ckpt_dir"]).glob("*.pt"):
            stale.unlink()  # the bundle resumes nothing unless told, but model.pt must be this run's
        start = time.perf_counter()
        aligned = alignment_overrides(self.study.alignment, spec)
        tracking, tracked = self._tracking(spec)  # not in the digest: tracking changes no result
        run_workflow(config_files(self.study, "train.json"),
                     {**self.base, **model_overrides(spec), **aligned, **dirs, **tracked},
                     folder / "train.log", tracking=tracking)
        train_s = time.perf_counter() - start
        if not (folder / "ckpt" / "model.pt").is_file():
            raise ConfigError(f"training {spec.id} wrote no model.pt", folder / "train.log",
                              fix="read the log; validation must run at least once (val_interval <= epochs)")
        evals = {}
        for test in spec.test_sets:
            t0 = time.perf_counter()
            eval_dir = folder / "eval" / test.name
            run_workflow(config_files(self.study, "train.json", "evaluate.json"),
                         {**self.base, **test_overrides(spec, test), **aligned, **dirs, "eval_dir": str(eval_dir)},
                         folder / "eval.log")
            evals[test.name] = time.perf_counter() - t0
        record = {"id": spec.id, "digest": self._digest(spec), "train_seconds": round(train_s, 2),
                  "eval_seconds": {k: round(v, 2) for k, v in evals.items()},
                  "epochs": self.base.get("epochs"), "spec": asdict(spec)}
        atomic_write_json(record_path, record)  # written last: its presence means the model is complete
        return record
