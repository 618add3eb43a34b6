"""The study's CPU stages: linear baseline, its permutations, observer sensitivity, peers, dimensions.

Each stage skips what already exists (a linear test set whose ``predictions.csv`` exists,
stored permutations), so an interrupted study resumes. :func:`baseline_stage` runs them all
one after another (in the runner's second process, or inline); the Ray executor
(:mod:`monai_emotion.study.executor`) runs the same methods one model per task.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from monai_emotion.errors import MonaiEmotionError
from monai_emotion.fileio import atomic_write_json, json_digest, read_json
from monai_emotion.study.baseline import LinearBaseline
from monai_emotion.study.config import load_study
from monai_emotion.study.context import StudyContext, prepare_context
from monai_emotion.study.dimensions import DimensionStage
from monai_emotion.study.permutation import (
    LinearPermutations,
    permutation_seeds,
    stored_permutations,
)
from monai_emotion.study.plan import ModelSpec, selected, selected_permutations
from monai_emotion.study.results import save_predictions

__all__ = ["LINEAR_DATA_KEYS", "Timings", "settings_changed", "LinearStage", "PeerStage", "FileLog", "baseline_stage"]

#: the bundle overrides whose change makes stored linear results stale
LINEAR_DATA_KEYS = ("dataset_dir", "annotations_dir", "cache_dir", "data#space", "data#labels",
                     "data#preprocessing", "data#subjects")


class Timings(dict):
    """Seconds per stage, summed over repeats."""

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - start, 2)


def settings_changed(record: Path, settings: dict, log: Callable[[str], None], name: str) -> bool:
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


class LinearStage:
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
        settings = {"baseline": study.baseline.to_dict(), "data": {k: self.ctx.base.get(k) for k in LINEAR_DATA_KEYS},
                    "leaky": study.leaky.to_dict(), "splits": study.splits.to_dict()}
        if study.training.temporal_context != 1:  # the window mean of k volumes (k = 1 keeps older records valid)
            settings["temporal_context"] = study.training.temporal_context
        if study.alignment.method != "none":  # aligned frames for cross/unseen models (none keeps records valid)
            settings["alignment"] = study.alignment.to_dict()
        if settings_changed(models / "linear.json", settings, self.ctx.log, "linear"):
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

    def fit_one(self, spec: ModelSpec) -> None:
        """Fit ``spec``'s linear model and write each test set's predictions (each file atomic)."""
        for name, frame in self.baseline().fit_predict(spec, with_probabilities=True).items():
            save_predictions(frame, self.folder / spec.id / name, self.ctx.classes)

    def run(self, specs: Sequence[ModelSpec], force: bool) -> None:
        done = 0
        for spec in specs:
            if not force and self.done(spec):
                done += 1
                continue
            self.fit_one(spec)
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


class PeerStage:
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
        settings = {"peers": self.settings.to_dict(), "data": {k: self.ctx.base.get(k) for k in LINEAR_DATA_KEYS},
                    "splits": study.splits.to_dict(), "leaky": study.leaky.to_dict()}
        if study.alignment.method != "none":
            settings["alignment"] = study.alignment.to_dict()
        for decoder in self.settings.decoders:
            if settings_changed(self.ctx.root / "models" / f"{decoder}.json", settings, self.ctx.log, decoder):
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


class FileLog:
    """Progress lines of the baseline worker: into its log file, one flushed line at a time."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def __call__(self, line: str) -> None:
        with open(self.path, "a") as fh:
            fh.write(line + "\n")


def baseline_stage(config: str, root: str, tokens: list[str] | None, force: bool,
                    log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Fit the linear models and their permutations (run in a worker process, or inline)."""
    import torch

    study = load_study(config)
    torch.set_num_threads(study.runtime.threads)
    timings = Timings()
    with timings.timed("prepare"):
        ctx = prepare_context(study, Path(root), log or FileLog(Path(root) / "logs" / "baseline.log"))
    linear = LinearStage(ctx)
    if study.baseline.enabled:
        with timings.timed("linear"):
            linear.run([s for s in ctx.plan.models if selected("linear", s, tokens)], force)
    if study.peers.enabled:
        with timings.timed("peers"):
            PeerStage(ctx).run(tokens, force)
    if study.dimensions.enabled:  # valence/arousal ridge (monai_emotion/study/dimensions.py)
        with timings.timed("dimensions"):
            DimensionStage(ctx).run(tokens, force)
    with timings.timed("linear_permutations"):
        ran = linear.run_permutations(tokens)
    if not ran:
        timings.pop("linear_permutations")
    return dict(timings)
