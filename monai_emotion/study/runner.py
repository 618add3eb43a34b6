"""Run a whole study: data, CNN models through the bundle, linear baseline, permutations, figures, report.

``python -m monai_emotion study --config studies/demo.json`` (or ``tools/run_study.py``). Every
stage skips what already exists (a CNN model whose ``model.json`` digest matches, a linear
test set whose ``predictions.csv`` exists, stored permutations), so an interrupted study
resumes, and ``--only`` runs a subset; results, figures and report are always rebuilt from
whatever has finished.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from monai_emotion.errors import ConfigError
from monai_emotion.fileio import atomic_write_json
from monai_emotion.study.config import load_study
from monai_emotion.study.context import prepare_context, resolve_data
from monai_emotion.study.dimensions import DimensionStage, dimension_outputs
from monai_emotion.study.executor import local_models, ray_models
from monai_emotion.study.outputs import build_outputs
from monai_emotion.study.plan import selected, selected_permutations
from monai_emotion.study.report import write_report
from monai_emotion.study.stages import (
    LINEAR_DATA_KEYS,
    LinearStage,
    PeerStage,
    Timings,
    settings_changed,
)

__all__ = ["run_study", "study_cli", "resolve_data", "selected", "selected_permutations"]

def _as_tokens(only: str | Sequence[str] | None) -> list[str] | None:
    if only is None or only == "":
        return None
    if isinstance(only, str):
        return [t.strip() for t in only.split(",") if t.strip()]
    return [str(t).strip() for t in only]


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
    timings = Timings()
    log(f"study '{study.name}' -> {root}")
    with timings.timed("prepare"):
        ctx = prepare_context(study, root, log)
    log(ctx.describe())
    linear, peers, dimensions = LinearStage(ctx), PeerStage(ctx), DimensionStage(ctx)
    enabled = study.baseline.enabled or study.peers.enabled or study.dimensions.enabled
    if study.baseline.enabled:
        linear.check_settings()
    if study.peers.enabled:
        peers.check_settings()
    if study.dimensions.enabled:
        dimensions.check_settings(settings_changed, {k: ctx.base.get(k) for k in LINEAR_DATA_KEYS})
    if study.runtime.executor == "ray":  # one task per model (monai_emotion/study/executor.py)
        ray_models(ctx, tokens, force, timings)
    else:
        todo = ((study.baseline.enabled and linear.todo(tokens, force))
                or (study.peers.enabled and peers.todo(tokens, force)) or dimensions.todo(tokens, force))
        if enabled and not todo:
            log("linear baseline and peers: every selected model and permutation already done")
        local_models(ctx, tokens, force, timings, baseline_todo=bool(enabled and todo))
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
    html = write_report(summary, root)
    log(f"done in {summary['timings']['total']:.0f} s: {html}")
    return summary


def study_cli(config: str, out: str | None = None, only: str | None = None, force: bool = False) -> None:
    """:func:`run_study` behind a check that the study file exists (``monai-emotion study``)."""
    if not Path(config).is_file():
        raise ConfigError("study file not found", config, fix="pass e.g. --config studies/demo.json")
    run_study(config, out=out, only=only, force=force)
