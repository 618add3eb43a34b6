"""Run a whole study: data, CNN models through the bundle, linear baseline, permutations, figures, report.

``python -m monai_emotion study --config studies/demo.json`` (or ``tools/run_study.py``). Every
stage skips what already exists (a CNN model whose ``model.json`` digest matches, a linear
test set whose ``predictions.csv`` exists, stored permutations), so an interrupted study
resumes, and ``--only`` runs a subset; results, figures and report are always rebuilt from
whatever has finished.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from monai_emotion.errors import ConfigError
from monai_emotion.study.baseline import LinearBaseline
from monai_emotion.study.bundle import CNNRunner, base_overrides, bundle_experiment, captured
from monai_emotion.study.config import Study, load_study
from monai_emotion.study.features import FeatureStore, VolumeTable
from monai_emotion.study.outputs import build_outputs
from monai_emotion.study.permutation import (
    LinearPermutations,
    permutation_seeds,
    read_null,
    stored_permutations,
)
from monai_emotion.study.plan import ModelSpec, StudyPlan, plan_study
from monai_emotion.study.report import write_report
from monai_emotion.study.results import read_predictions, save_predictions
from monai_emotion.study.scoring import unit_scores

__all__ = ["run_study", "study_cli", "resolve_data", "selected"]

DECODERS = ("cnn", "linear")


def resolve_data(study: Study, log: Callable[[str], None] = print) -> tuple[str, str, str | None]:
    """``(dataset_dir, annotations_dir, synthetic root or None)``; makes a synthetic dataset once."""
    data = study["data"]
    if data["dataset_dir"]:
        return data["dataset_dir"], data["annotations_dir"], None
    from monai_emotion.experiment import ensure_demo_dataset, user_cache_dir

    params = dict(data["synthetic"])
    root = data["synthetic_root"]
    if root is None and any(isinstance(v, (dict, list)) for v in params.values()):
        # nested parameters make poor folder names: name the folder by their digest instead
        digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
        root = str(user_cache_dir() / f"synthetic-{digest}")
    start = time.perf_counter()
    path = ensure_demo_dataset(root, **params)
    log(f"synthetic data: {path} ({time.perf_counter() - start:.1f} s)")
    return str(path), str(path / "annotations"), str(path)


def selected(decoder: str, spec: ModelSpec, only: Sequence[str] | None) -> bool:
    """Whether ``only`` (tokens ``[decoder:]pattern``) selects ``spec`` for ``decoder``.

    A pattern matches an experiment name (``within``), a model id glob (``within/sub-01/*``),
    the decoder itself (``linear``) or ``all``. Permuted models are selected by ``permutations``.
    """
    if only is None:
        return True
    for token in only:
        dec, _, pattern = token.rpartition(":")
        if dec and dec != decoder:
            continue
        if spec.permutation is not None:
            if pattern in ("permutations", "all"):
                return True
            continue
        if pattern in (decoder, "all", spec.experiment) or fnmatch.fnmatch(spec.id, pattern) \
                or fnmatch.fnmatch(spec.id, pattern.rstrip("/") + "/*"):
            return True
    return False


def _as_tokens(only: str | Sequence[str] | None) -> list[str] | None:
    if only is None or only == "":
        return None
    if isinstance(only, str):
        return [t.strip() for t in only.split(",") if t.strip()]
    return [str(t).strip() for t in only]


class _Study:
    """The state one study run shares between its stages."""

    def __init__(self, study: Study, root: Path, log: Callable[[str], None]) -> None:
        self.study, self.root, self.log = study, root, log
        self.timings: dict[str, float] = {}

    def timed(self, name: str, start: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 2)

    def prepare(self, quiet: bool = False) -> None:
        start = time.perf_counter()
        self.dataset_dir, self.annotations_dir, self.synthetic_root = resolve_data(self.study, self.log)
        self.base = base_overrides(self.study, self.dataset_dir, self.annotations_dir)
        with captured(self.root / "logs" / "prepare.log"):
            # the bundle's own data preparation (builds the cache once), every item in "train"
            self.experiment = bundle_experiment(self.study, {**self.base, "data#split": {"kind": "runs"}})
        self.classes = list(self.experiment["classes"])
        self.plan: StudyPlan = plan_study(self.experiment["train"], self.study.settings, len(self.classes))
        labels = self.study["labels"]
        self.table = VolumeTable(self.experiment, labels["observers"], labels["threshold"])
        self.table.check_against(self.experiment["train"], float(labels["lag"]))
        self.cnn = CNNRunner(self.study, self.root / "models" / "cnn", self.base)
        self.timed("prepare", start)
        described = self.plan.describe()
        if quiet:
            return
        self.log(f"data: {len(self.experiment['train'])} labelled volumes, subjects {described['subjects']}, "
                 f"grid {self.experiment['spatial_shape']}; run folds {described['run_folds']}; "
                 f"subject folds {described['subject_folds']}; models {described['models']}")

    def run_cnn(self, specs: Sequence[ModelSpec], force: bool) -> None:
        start = time.perf_counter()
        todo = [s for s in specs if force or not self.cnn.done(s)]
        for n, spec in enumerate(todo, start=1):
            record = self.cnn.run(spec)
            self.log(f"  cnn [{n}/{len(todo)}] {spec.id}: trained in {record['train_seconds']:.1f} s, "
                     f"tested {len(spec.test_sets)} set(s) in {sum(record['eval_seconds'].values()):.1f} s")
        if len(specs) > len(todo):
            self.log(f"  cnn: {len(specs) - len(todo)} model(s) already done, skipped")
        self.timed("cnn", start)

    def baseline(self) -> LinearBaseline:
        if not hasattr(self, "_baseline"):
            store = FeatureStore(list(self.table.runs.values()))
            self._baseline = LinearBaseline(self.table, store, self.study["baseline"], self.classes)
        return self._baseline

    def check_linear_settings(self) -> None:
        """Discard stored linear results made with other baseline or data settings."""
        record = self.root / "models" / "linear.json"
        keys = ("dataset_dir", "annotations_dir", "cache_dir", "data#space", "data#labels", "data#preprocessing",
                "data#subjects")
        settings = {"baseline": self.study["baseline"], "data": {k: self.base.get(k) for k in keys},
                    "leaky": self.study["leaky"], "splits": self.study["splits"]}
        digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        if record.is_file() and json.loads(record.read_text()).get("digest") != digest:
            import shutil

            self.log("  linear: settings changed since the stored results; they are recomputed")
            shutil.rmtree(self.root / "models" / "linear", ignore_errors=True)
            (self.root / "permutations_linear.csv").unlink(missing_ok=True)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"digest": digest, "settings": settings}, indent=2, default=str) + "\n")

    def linear_done(self, spec: ModelSpec) -> bool:
        root = self.root / "models" / "linear" / spec.id
        return all((root / t.name / "predictions.csv").is_file() for t in spec.test_sets)

    def linear_todo(self, only: list[str] | None, force: bool) -> bool:
        """Whether the baseline stage has anything to compute (else no worker is started)."""
        if force or any(not self.linear_done(s) for s in self.plan.models if selected("linear", s, only)):
            return True
        perms = self.study["permutations"]
        if not (int(perms["linear"]) and selected("linear", _PERM, only)):
            return False
        wanted = set(permutation_seeds(int(perms["first_seed"]), int(perms["linear"])))
        stored = stored_permutations(self.root / "permutations_linear.csv", {m.experiment for m in self.plan.models})
        return not wanted <= stored

    def run_linear(self, specs: Sequence[ModelSpec], force: bool) -> None:
        start = time.perf_counter()
        root = self.root / "models" / "linear"
        done = 0
        for spec in specs:
            folders = {t.name: root / spec.id / t.name for t in spec.test_sets}
            if not force and self.linear_done(spec):
                done += 1
                continue
            for name, frame in self.baseline().fit_predict(spec, with_probabilities=True).items():
                save_predictions(frame, folders[name], self.classes)
        self.log(f"  linear: {len(specs) - done} model(s) fitted, {done} already done")
        self.timed("linear", start)

    def run_linear_permutations(self, only: list[str] | None) -> None:
        perms = self.study["permutations"]
        if not (int(perms["linear"]) and self.study["baseline"]["enabled"] and selected("linear", _PERM, only)):
            return
        start = time.perf_counter()
        runner = LinearPermutations(self.baseline(), self.plan.models, self.root / "permutations_linear.csv")
        n = runner.run(permutation_seeds(int(perms["first_seed"]), int(perms["linear"])), self.log)
        self.log(f"  linear permutations: {n} computed, {int(perms['linear']) - n} already stored")
        self.timed("linear_permutations", start)

    def run_cnn_permutations(self, only: list[str] | None, force: bool) -> None:
        perms = self.study["permutations"]
        if not (int(perms["cnn"]) and selected("cnn", _PERM, only)):
            return
        start = time.perf_counter()
        specs = [s.permuted(seed) for seed in permutation_seeds(int(perms["first_seed"]), int(perms["cnn"]))
                 for s in self.plan.models if s.experiment in perms["cnn_experiments"]]
        self.log(f"cnn permutations: {perms['cnn']} x {perms['cnn_experiments']} ({len(specs)} models)")
        self.run_cnn(specs, force)
        self.timed("cnn_permutations", start)

    def predictions(self) -> pd.DataFrame:
        cnn = read_predictions(self.root / "models" / "cnn", self.plan.models, "cnn", "eval")
        linear = read_predictions(self.root / "models" / "linear", self.plan.models, "linear")
        return pd.concat([f for f in (cnn, linear) if len(f)] or [cnn], ignore_index=True)

    def null(self) -> pd.DataFrame:
        frames = [read_null(self.root / "permutations_linear.csv")]
        perms = self.study["permutations"]
        for seed in permutation_seeds(int(perms["first_seed"]), int(perms["cnn"])):
            for experiment in perms["cnn_experiments"]:
                specs = [s.permuted(seed) for s in self.plan.of(experiment)]
                if specs and all(self.cnn.done(s) for s in specs):  # a partial protocol would bias the null
                    preds = read_predictions(self.cnn.root, specs, "cnn", "eval")
                    frames.append(unit_scores(preds, self.classes).assign(permutation=seed))
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else read_null(self.root / "permutations_linear.csv")


_PERM = ModelSpec("permutations", "permutations", (), {}, 0.0, "", (), permutation=0)


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
    torch.set_num_threads(int(study["runtime"]["threads"]))
    state = _Study(study, Path(root), log or _FileLog(Path(root) / "logs" / "baseline.log"))
    state.prepare(quiet=True)
    state.run_linear([s for s in state.plan.models if selected("linear", s, tokens)], force)
    state.run_linear_permutations(tokens)
    return state.timings


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
    (root / "study.json").write_text(study.to_json())
    torch.set_num_threads(int(study["runtime"]["threads"]))
    tokens = _as_tokens(only)
    state = _Study(study, root, log)
    log(f"study '{study.name}' -> {root}")
    state.prepare()
    if study["baseline"]["enabled"]:
        state.check_linear_settings()
    baseline_args = (str(study.source), str(root), tokens, force)
    pool, worker = None, None
    if study["baseline"]["enabled"] and not state.linear_todo(tokens, force):
        log("linear baseline: every selected model and permutation already done")
    elif study["baseline"]["enabled"] and study["runtime"]["parallel_baseline"]:
        import multiprocessing

        # spawn, not fork: the parent already holds torch and BLAS thread pools
        pool = multiprocessing.get_context("spawn").Pool(1)
        worker = pool.apply_async(_baseline_stage, baseline_args)
        log(f"linear baseline and its permutations: in a second process (log {root / 'logs' / 'baseline.log'})")
    elif study["baseline"]["enabled"]:
        log("linear baseline:")
        state.timings.update(_baseline_stage(*baseline_args, log=log))
    try:
        log("CNN models (through the bundle configs):")
        state.run_cnn([s for s in state.plan.models if selected("cnn", s, tokens)], force)
        state.run_cnn_permutations(tokens, force)
        if worker is not None:
            waited = time.perf_counter()
            timings = worker.get()  # re-raises the worker's error, if any
            state.timings.update({f"{k} (parallel)": v for k, v in timings.items() if k != "prepare"})
            log(f"linear baseline finished (waited {time.perf_counter() - waited:.0f} s for it)")
    finally:
        if pool is not None:
            pool.terminate()  # idle after get(); on an error or Ctrl-C it stops the worker too
    t0 = time.perf_counter()
    summary = build_outputs(state, log)
    state.timed("outputs", t0)
    summary["timings"] = {**state.timings, "total": round(time.perf_counter() - start, 2)}
    (root / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    write_report(summary, root)
    log(f"done in {summary['timings']['total']:.0f} s: {root / 'report.md'}")
    return summary


def study_cli(config: str, out: str | None = None, only: str | None = None, force: bool = False) -> None:
    """Run a study from its JSON config (see ``studies/demo.json``).

    Parameters
    ----------
    config: the study file
    out: output folder (default results/<study name>)
    only: comma-separated subset to (re)compute: within, cross, unseen, leaky, cnn, linear, permutations, a model id glob (within/sub-01/*), or decoder:pattern (cnn:cross)
    force: recompute selected models even if their results exist
    """
    if not Path(config).is_file():
        raise ConfigError("study file not found", config, fix="pass e.g. --config studies/demo.json")
    run_study(config, out=out, only=only, force=force)
