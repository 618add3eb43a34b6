"""Inputs for the inference bundle: every volume of some 4D runs, through the model's contract.

A model only sees volumes prepared the way its training data were: the training's mask and
crop (from ``models/mask.nii.gz``, never recomputed from the new inputs), downsampling,
per-run detrending and z-scoring, with voxels outside a run's own coverage zero-filled
(:mod:`monai_emotion.contract`). A model trained with functional alignment aligns each
subject first, from its own responses to the model's alignment runs
(:func:`~monai_emotion.align.model.align_new_subjects`), and predicts the other runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_emotion.align.model import align_new_subjects, describe_alignment
from monai_emotion.contract import check_source_grid, load_contract
from monai_emotion.data.studyforrest import TR, discover_runs, normalize_subject, volume_movie_times
from monai_emotion.errors import LayoutError
from monai_emotion.fileio import atomic_write_json, read_json

__all__ = ["prepare_inference"]

_ENTITY = re.compile(r"sub-([A-Za-z0-9]+).*?run-0*(\d+)")
#: generous per-run volume cap for inputs that are not the studyforrest movie runs
_ANY_LENGTH = (10**6,) * 99


def _stage_files(files: Sequence[Path], staging: Path) -> str:
    """Link loose 4D files under BIDS-like names so the cache can discover them; returns a glob."""
    staging.mkdir(parents=True, exist_ok=True)
    for k, path in enumerate(sorted(files), start=1):
        match = _ENTITY.search(path.name)
        subject, run = (normalize_subject(match.group(1)), int(match.group(2))) if match else ("input", k)
        link = staging / f"sub-{subject}_run-{run:02d}_bold{''.join(path.suffixes[-2:])}"
        if link.is_symlink() or link.exists():
            if link.resolve() == path.resolve():
                continue
            link.unlink()
        link.symlink_to(path.resolve())
    return f"{staging.name}/sub-*_run-*_bold.nii*"


def prepare_inference(
    inputs: str | os.PathLike,
    ckpt_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    subjects: Sequence[str | int] | None = None,
    space: str | None = None,
    output_dir: str | os.PathLike | None = None,
    progress: bool = True,
    alignment_runs: Sequence[int] | None = None,
    alignment_predict_fit_runs: bool = False,
) -> dict[str, Any]:
    """Items for every volume of the given runs, cached through the model's contract.

    Parameters
    ----------
    inputs
        A 4D NIfTI file, a folder of them, or a BIDS root (then ``subjects`` and ``space``
        choose the runs, as for training). Every run must be on the training's source grid.
    ckpt_dir
        The model folder holding ``model.pt``, ``contract.json`` and ``mask.nii.gz``.
    cache_dir
        Where the preprocessed inputs go (default: a folder in the user cache).
    output_dir
        Where ``coverage.json`` (the covered fraction of the mask per run) and, for an aligned
        model, ``alignment.json`` (what the alignment used) are written.
    alignment_runs
        Aligned models: the runs each subject's transform is fitted on (default: the model's
        fit runs, ``contract.json`` ``alignment.fit_runs``); they must be among the inputs.
    alignment_predict_fit_runs
        Aligned models: predict the alignment runs too (stimulus-seen; default: not predicted).

    Returns
    -------
    dict
        ``items`` (one per volume, label -1), ``classes``, ``spatial_shape``, ``cache_dir``,
        ``coverage`` (``{"sub-XX_run-YY": fraction}``), ``temporal_context`` (the contract's
        volumes per sample: the dataset builds the training's windows from it), ``alignment``
        (the record of :func:`~monai_emotion.align.model.align_new_subjects`, or ``None``).

    Raises
    ------
    ImageError
        A run on another grid than the training's, or covering less than the contract's
        ``min_coverage`` of the training mask.
    """
    from monai_emotion.data.cache import prepare_cache
    from monai_emotion.runtime import user_cache_dir

    contract = load_contract(ckpt_dir)
    source = Path(inputs)
    if not source.exists():
        raise LayoutError("inference input not found", source,
                          fix="pass a 4D .nii/.nii.gz file, a folder of them, or a BIDS root")
    cache = Path(cache_dir) if cache_dir else (
        user_cache_dir() / "inference" / f"{source.resolve().name}-{contract.digest()}")
    bids = (source / "dataset_description.json").is_file() or any(p.is_dir() for p in source.glob("sub-*"))
    if source.is_dir() and bids:  # a BIDS root; a folder of loose sub-*_bold.nii.gz files is not one
        root, pattern = source, space or contract.space
        given: dict[str, str] = {}
    else:
        files = [source] if source.is_file() else sorted(
            p for p in source.iterdir() if p.name.endswith((".nii", ".nii.gz")))
        if not files:
            raise LayoutError("no .nii/.nii.gz files in this folder", source,
                              fix="pass a 4D run, a folder of runs, or a BIDS root")
        root = cache
        pattern = _stage_files(files, cache / "inputs")
        # errors name the user's file, not our link to it
        given = {str(link): os.readlink(link) for link in (cache / "inputs").iterdir() if link.is_symlink()}
    lengths = {"expected_volumes": _ANY_LENGTH} if pattern != contract.space else {}
    subject_list = [normalize_subject(s) for s in subjects] if subjects is not None else None
    check_source_grid(contract, discover_runs(root, pattern, subject_list, **lengths).runs, given)
    index = prepare_cache(root, cache / "preprocessed", contract.inference_spec(ckpt_dir), space=pattern,
                          subjects=subject_list, progress=progress, **lengths)
    index, aligned = align_new_subjects(index, contract.alignment, ckpt_dir, alignment_runs,
                                        alignment_predict_fit_runs)
    if aligned is not None and progress:
        print(describe_alignment(aligned), flush=True)
    items, coverage = [], {}
    for (subject, run), entry in sorted(index.items()):
        if entry.frame_shape != contract.spatial_shape:  # the contract's mask and crop make it equal
            raise LayoutError(f"cached grid {entry.frame_shape} differs from the model's {contract.spatial_shape}",
                              entry.sidecar, fix="delete this inference cache folder and run again")
        meta = read_json(entry.sidecar) or {}
        coverage[f"sub-{subject}_run-{run:02d}"] = float(meta.get("coverage", {}).get("fraction", 1.0))
        censored = set(entry.censored)  # still predicted (zero frames), marked in the events
        times = volume_movie_times(run, entry.n_volumes) if 1 <= run <= 8 else TR * np.arange(entry.n_volumes)
        items += [
            {"image": entry.path, "frame": t, "label": -1, "subject": subject, "run": run,
             "movie_time": float(times[t]), "source_image": entry.source, "censored": t in censored}
            for t in range(entry.n_volumes)
        ]
    if progress and coverage:
        lowest = min(coverage, key=coverage.get)
        print(f"coverage of the model's mask: {len(coverage)} runs, lowest {coverage[lowest]:.1%} ({lowest}); "
              "per run in coverage.json", flush=True)
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(output_dir) / "coverage.json",
                          {"min_coverage": contract.preprocessing.get("min_coverage"), "runs": coverage})
        if aligned is not None:
            atomic_write_json(Path(output_dir) / "alignment.json", aligned)
    return {"items": items, "classes": list(contract.classes), "spatial_shape": list(contract.spatial_shape),
            "cache_dir": str(cache), "coverage": coverage, "temporal_context": contract.temporal_context,
            "alignment": aligned}
