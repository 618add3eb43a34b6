"""Run a whole study: data, CNN models through the bundle, linear baseline, permutations, figures, report.

``python -m monai_emotion study --config studies/demo.json`` (or ``tools/run_study.py``). Every
stage skips what already exists (a CNN model whose ``model.json`` digest matches, a linear
test set whose ``predictions.csv`` exists, stored permutations), so an interrupted study
resumes, and ``--only`` runs a subset; results, figures and report are always rebuilt from
whatever has finished.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from monai_emotion.errors import ConfigError, MonaiEmotionError
from monai_emotion.fileio import atomic_write_json, json_digest, read_json
from monai_emotion.study.baseline import LinearBaseline
from monai_emotion.study.config import load_study
from monai_emotion.study.context import StudyContext, prepare_context, resolve_data
from monai_emotion.study.dimensions import DimensionStage, dimension_outputs
from monai_emotion.study.outputs import build_outputs
from monai_emotion.study.permutation import (
    LinearPermutations,
    permutation_seeds,
    stored_permutations,
)
from monai_emotion.study.plan import ModelSpec, selected, selected_permutations
from monai_emotion.study.report import write_report
from monai_emotion.study.results import save_predictions

__all__ = ["run_study", "study_cli", "resolve_data", "selected", "selected_permutations"]

#: the bundle overrides whose change makes stored linear results stale
_LINEAR_DATA_KEYS = ("dataset_dir", "annotations_dir", "cache_dir", "data#space", "data#labels",
                     "data#preprocessing", "data#subjects")


def _as_tokens(only: str | Sequence[str] | None) -> list[str] | None:
    if only is None or only == "":
        return None
    if isinstance(only, str):
        return [t.strip() for t in only.split(",") if t.strip()]
    return [str(t).strip() for t in only]


class _Timings(dict):
    """Seconds per stage, summed over repeats."""

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - start, 2)


def _run_cnn(ctx: StudyContext, specs: Sequence[ModelSpec], force: bool) -> None:
    todo = [s for s in specs if force or not ctx.cnn.done(s)]
    for n, spec in enumerate(todo, start=1):
        record = ctx.cnn.run(spec)
        ctx.log(f"  cnn [{n}/{len(todo)}] {spec.id}: trained in {record['train_seconds']:.1f} s, "
                f"tested {len(spec.test_sets)} set(s) in {sum(record['eval_seconds'].values()):.1f} s")
    if len(specs) > len(todo):
        ctx.log(f"  cnn: {len(specs) - len(todo)} model(s) already done, skipped")


def _cnn_permutation_specs(ctx: StudyContext) -> list[ModelSpec]:
    perms = ctx.study.permutations
    return [s.permuted(seed) for seed in permutation_seeds(perms.first_seed, perms.cnn)
            for s in ctx.plan.models if s.experiment in perms.cnn_experiments]


def _settings_changed(record: Path, settings: dict, log: Callable[[str], None], name: str) -> bool:
    """Whether ``record`` holds other settings than ``settings`` (then logged); records them in any case.

    A stage's stored results are valid only for the settings that made them: the caller
    discards them when this returns True.
    """
    digest = json_digest(settings, length=16)
    changed = record.is_file() and (read_json(record) or {}).get("digest") != digest
    if changed:
        log(f"  {name}: settings changed since the stored results; they are recomputed")
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, {"digest": digest, "settings": settings})
    return changed


class _Linear:
    """The linear baseline's stage: its models and permutations, resumable."""

    def __init__(self, ctx: StudyContext) -> None:
        self.ctx = ctx
        self.folder = ctx.root / "models" / "linear"
        self.null_path = ctx.root / "permutations_linear.csv"
        self._baseline: LinearBaseline | None = None

    def baseline(self) -> LinearBaseline:
        if self._baseline is None:
            self._baseline = LinearBaseline(self.ctx.views, self.ctx.study.baseline, self.ctx.classes)
        return self._baseline

    def seeds(self) -> list[int]:
        perms = self.ctx.study.permutations
        return permutation_seeds(perms.first_seed, perms.linear)

    def check_settings(self) -> None:
        """Discard stored linear results made with other baseline or data settings."""
        study, models = self.ctx.study, self.ctx.root / "models"
        settings = {"baseline": study.baseline.to_dict(), "data": {k: self.ctx.base.get(k) for k in _LINEAR_DATA_KEYS},
                    "leaky": study.leaky.to_dict(), "splits": study.splits.to_dict()}
        if study.training.temporal_context != 1:  # the window mean of k volumes (k = 1 keeps older records valid)
            settings["temporal_context"] = study.training.temporal_context
        if _settings_changed(models / "linear.json", settings, self.ctx.log, "linear"):
            for folder in (self.folder, models / "linear_av", models / "linear_ao"):
                shutil.rmtree(folder, ignore_errors=True)
            self.null_path.unlink(missing_ok=True)

    def done(self, spec: ModelSpec) -> bool:
        return all((self.folder / spec.id / t.name / "predictions.csv").is_file() for t in spec.test_sets)

    def todo(self, only: list[str] | None, force: bool) -> bool:
        """Whether the stage has anything to compute (else no worker is started)."""
        if force or any(not self.done(s) for s in self.ctx.plan.models if selected("linear", s, only)):
            return True
        other = self.other_observers()
        if other and not (self.ctx.root / "models" / f"linear_{other}").is_dir():
            return True
        if not (self.ctx.study.permutations.linear and selected_permutations("linear", only)):
            return False
        stored = stored_permutations(self.null_path, {m.experiment for m in self.ctx.plan.models})
        return not set(self.seeds()) <= stored

    def run(self, specs: Sequence[ModelSpec], force: bool) -> None:
        done = 0
        for spec in specs:
            if not force and self.done(spec):
                done += 1
                continue
            for name, frame in self.baseline().fit_predict(spec, with_probabilities=True).items():
                save_predictions(frame, self.folder / spec.id / name, self.ctx.classes)
        self.ctx.log(f"  linear: {len(specs) - done} model(s) fitted, {done} already done")
        self.run_other_observers(specs, force)

    def other_observers(self) -> str | None:
        """``"ao"`` or ``"av"``: the observer set of the sensitivity analysis (``None``: off)."""
        observers = self.ctx.table.rule.observers
        if not self.ctx.study.statistics.observer_sensitivity or observers not in ("av", "ao"):
            return None
        return "ao" if observers == "av" else "av"

    def run_other_observers(self, specs: Sequence[ModelSpec], force: bool) -> None:
        """The sensitivity analysis: the same linear models on the other observer set's labels."""
        other = self.other_observers()
        if other is None:
            return
        rule = self.ctx.table.rule
        folder = self.ctx.root / "models" / f"linear_{other}"
        baseline = LinearBaseline(self.ctx.views.with_rule(rule.replace(observers=other)),
                                  self.ctx.study.baseline, self.ctx.classes)
        try:  # synthetic worlds and partial copies of the annotations may lack the other set
            baseline.views.table(self.ctx.plan.subjects[:1]).labels(self.ctx.study.labels.lag)
        except MonaiEmotionError as exc:
            self.ctx.log(f"  linear on the {other.upper()} observers' labels: skipped ({exc.what})")
            folder.mkdir(parents=True, exist_ok=True)  # asked once, not on every resume
            return
        fitted = 0
        for spec in specs:
            if spec.permutation is not None or (not force and all(
                    (folder / spec.id / t.name / "predictions.csv").is_file() for t in spec.test_sets)):
                continue
            for name, frame in baseline.fit_predict(spec).items():
                save_predictions(frame, folder / spec.id / name, self.ctx.classes)
            fitted += 1
        self.ctx.log(f"  linear on the {other.upper()} observers' labels (sensitivity): {fitted} model(s) fitted")

    def run_permutations(self, only: list[str] | None) -> bool:
        """Compute the missing permutations, if selected; whether the stage ran."""
        count = self.ctx.study.permutations.linear
        if not (count and self.ctx.study.baseline.enabled and selected_permutations("linear", only)):
            return False
        runner = LinearPermutations(self.baseline(), self.ctx.plan.models, self.null_path)
        n = runner.run(self.seeds(), self.ctx.log)
        self.ctx.log(f"  linear permutations: {n} computed, {count - n} already stored")
        return True


class _Peers:
    """The field's standard decoders (:mod:`monai_emotion.study.peers`) on the study's folds, resumable."""

    def __init__(self, ctx: StudyContext) -> None:
        self.ctx = ctx
        self.settings = ctx.study.peers

    def folder(self, decoder: str) -> Path:
        return self.ctx.root / "models" / decoder

    def specs(self, only: list[str] | None) -> list[ModelSpec]:
        return [s for s in self.ctx.plan.models if self.settings.runs_for(s) and
                any(selected(d, s, only) for d in self.settings.decoders)]

    def done(self, decoder: str, spec: ModelSpec) -> bool:
        return all((self.folder(decoder) / spec.id / t.name / "predictions.csv").is_file() for t in spec.test_sets)

    def check_settings(self) -> None:
        """Discard stored peer results made with other peer or data settings."""
        study = self.ctx.study
        settings = {"peers": self.settings.to_dict(), "data": {k: self.ctx.base.get(k) for k in _LINEAR_DATA_KEYS},
                    "splits": study.splits.to_dict(), "leaky": study.leaky.to_dict()}
        for decoder in self.settings.decoders:
            if _settings_changed(self.ctx.root / "models" / f"{decoder}.json", settings, self.ctx.log, decoder):
                shutil.rmtree(self.folder(decoder), ignore_errors=True)

    def todo(self, only: list[str] | None, force: bool) -> bool:
        return any(force or not self.done(d, s) for d in self.settings.decoders for s in self.specs(only))

    def run(self, only: list[str] | None, force: bool) -> None:
        from monai_emotion.study.peers import NilearnPeer

        for decoder in self.settings.decoders:
            peer = NilearnPeer(self.ctx.views, self.settings, self.ctx.classes)
            specs = [s for s in self.specs(only) if force or not self.done(decoder, s)]
            for n, spec in enumerate(specs, start=1):
                start = time.perf_counter()
                frames = peer.fit_predict(spec)
                seconds = round(time.perf_counter() - start, 2)
                for name, frame in frames.items():
                    save_predictions(frame, self.folder(decoder) / spec.id / name, self.ctx.classes)
                atomic_write_json(self.folder(decoder) / spec.id / "fit.json", {"seconds": seconds})
                self.ctx.log(f"  {decoder} [{n}/{len(specs)}] {spec.id}: {seconds:.1f} s")


class _FileLog:
    """Progress lines of the baseline worker: into its log file, one flushed line at a time."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def __call__(self, line: str) -> None:
        with open(self.path, "a") as fh:
            fh.write(line + "\n")


def _baseline_stage(config: str, root: str, tokens: list[str] | None, force: bool,
                    log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Fit the linear models and their permutations (run in a worker process, or inline)."""
    import torch

    study = load_study(config)
    torch.set_num_threads(study.runtime.threads)
    timings = _Timings()
    with timings.timed("prepare"):
        ctx = prepare_context(study, Path(root), log or _FileLog(Path(root) / "logs" / "baseline.log"))
    linear = _Linear(ctx)
    if study.baseline.enabled:
        with timings.timed("linear"):
            linear.run([s for s in ctx.plan.models if selected("linear", s, tokens)], force)
    if study.peers.enabled:
        with timings.timed("peers"):
            _Peers(ctx).run(tokens, force)
    if study.dimensions.enabled:  # valence/arousal ridge (monai_emotion/study/dimensions.py)
        with timings.timed("dimensions"):
            DimensionStage(ctx).run(tokens, force)
    with timings.timed("linear_permutations"):
        ran = linear.run_permutations(tokens)
    if not ran:
        timings.pop("linear_permutations")
    return dict(timings)


def run_study(config: str | os.PathLike, out: str | os.PathLike | None = None,
              only: str | Sequence[str] | None = None, force: bool = False,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) a study and write its results, figures and report.

    Parameters
    ----------
    config
        The study JSON file (format: :mod:`monai_emotion.study.config`).
    out
        Output folder (default ``results/<study name>`` under the current directory).
    only
        Comma-separated ``[decoder:]pattern`` tokens selecting what to (re)compute: an
        experiment (``within``, ``cross``, ``unseen``, ``leaky``), a model id glob
        (``within/sub-01/*``), a decoder (``cnn``, ``linear``) or ``permutations``; the
        results, figures and report are rebuilt from everything finished.
    force
        Recompute selected models even if their results exist.
    log
        Where progress lines go.

    Returns
    -------
    dict
        The summary written to ``summary.json``.
    """
    import torch

    start = time.perf_counter()
    study = load_study(config)
    root = Path(out) if out else Path.cwd() / "results" / study.name
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / "study.json", study.to_dict())
    torch.set_num_threads(study.runtime.threads)
    tokens = _as_tokens(only)
    timings = _Timings()
    log(f"study '{study.name}' -> {root}")
    with timings.timed("prepare"):
        ctx = prepare_context(study, root, log)
    log(ctx.describe())
    linear, peers, dimensions = _Linear(ctx), _Peers(ctx), DimensionStage(ctx)
    enabled = study.baseline.enabled or study.peers.enabled or study.dimensions.enabled
    if study.baseline.enabled:
        linear.check_settings()
    if study.peers.enabled:
        peers.check_settings()
    if study.dimensions.enabled:
        dimensions.check_settings(_settings_changed, {k: ctx.base.get(k) for k in _LINEAR_DATA_KEYS})
    baseline_args = (str(study.source), str(root), tokens, force)
    pool, worker = None, None
    todo = ((study.baseline.enabled and linear.todo(tokens, force)) or (study.peers.enabled and peers.todo(tokens, force))
            or dimensions.todo(tokens, force))
    if enabled and not todo:
        log("linear baseline and peers: every selected model and permutation already done")
    elif enabled and study.runtime.parallel_baseline:
        import multiprocessing

        # spawn, not fork: the parent already holds torch and BLAS thread pools
        pool = multiprocessing.get_context("spawn").Pool(1)
        worker = pool.apply_async(_baseline_stage, baseline_args)
        log(f"linear baseline, peers and permutations: in a second process (log {root / 'logs' / 'baseline.log'})")
    elif enabled:
        log("linear baseline and peers:")
        timings.update(_baseline_stage(*baseline_args, log=log))
    try:
        log("CNN models (through the bundle configs):")
        with timings.timed("cnn"):
            _run_cnn(ctx, [s for s in ctx.plan.models if selected("cnn", s, tokens)], force)
        if study.permutations.cnn and selected_permutations("cnn", tokens):
            specs = _cnn_permutation_specs(ctx)
            log(f"cnn permutations: {study.permutations.cnn} x {list(study.permutations.cnn_experiments)} "
                f"({len(specs)} models)")
            with timings.timed("cnn_permutations"):
                _run_cnn(ctx, specs, force)
        if worker is not None:
            waited = time.perf_counter()
            parallel = worker.get()  # re-raises the worker's error, if any
            timings.update({f"{k} (parallel)": v for k, v in parallel.items() if k != "prepare"})
            log(f"linear baseline finished (waited {time.perf_counter() - waited:.0f} s for it)")
    finally:
        if pool is not None:
            pool.terminate()  # idle after get(); on an error or Ctrl-C it stops the worker too
    with timings.timed("outputs"):
        summary = build_outputs(ctx)
        summary["dimensions"] = dimension_outputs(ctx)
        if (summary["dimensions"] or {}).get("figure"):
            summary["figures"]["fig9"] = summary["dimensions"]["figure"]
    if study.saliency.enabled:  # optional stage: group saliency maps (monai_emotion/study/saliency.py)
        from monai_emotion.study.saliency import group_saliency

        with timings.timed("saliency"):
            summary["saliency"] = group_saliency(ctx)
    summary["timings"] = {**timings, "total": round(time.perf_counter() - start, 2)}
    atomic_write_json(root / "summary.json", summary)
    write_report(summary, root)
    log(f"done in {summary['timings']['total']:.0f} s: {root / 'report.md'}")
    return summary


def study_cli(config: str, out: str | None = None, only: str | None = None, force: bool = False) -> None:
    """:func:`run_study` behind a check that the study file exists (``monai-emotion study``)."""
    if not Path(config).is_file():
        raise ConfigError("study file not found", config, fix="pass e.g. --config studies/demo.json")
    run_study(config, out=out, only=only, force=force)
