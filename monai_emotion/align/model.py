"""The alignment saved with a model, and a new subject aligned from its own runs at inference.

Training with ``data#alignment`` writes, beside ``model.pt`` (:func:`save_alignment`, called by
:func:`~monai_emotion.contract.save_contract`)::

    models/alignment/
      parcels.npz                   the training's parcels (flat voxel indices on the model's grid)
      reference/sub-XX_run-YY.npy   the reference subject's cached frames of the fit runs (float16)
      reference/sub-XX_run-YY.json  their sidecars (grid, censored volumes, fingerprint)

and the contract's ``alignment`` entry (method, settings, reference, fit runs, gap, the movie's
run lengths). That is everything a new subject's fit needs, so an exported bundle is
self-contained; its size is the reference's fit frames: runs x volumes x grid voxels x 2 bytes.

At inference (:func:`align_new_subjects`, called by
:func:`~monai_emotion.inference.prepare_inference`) each subject's transform is fitted from its
own **alignment runs** (``alignment_runs``; default: the model's fit runs, the only runs whose
reference frames the model holds) exactly as in training: same parcels, same reference
frames, same gap around the other runs of the movie; then every other given run is mapped and
predicted. The alignment runs are not predicted by default: the CNN was trained on the
reference's frames of those movie moments and the fit maps the subject's frames of them onto
the reference's, so predictions there are stimulus-seen (and transductive). With
``alignment_predict_fit_runs`` they are predicted too and listed as ``stimulus_seen_runs``.
A subject with the reference's label is the reference (identity transform).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_emotion import fileio
from monai_emotion.align.stage import AlignmentSpec, align_cache
from monai_emotion.data.cache.index import CacheIndex
from monai_emotion.errors import ConfigError

__all__ = ["ALIGNMENT_DIR", "save_alignment", "align_new_subjects", "describe_alignment"]

#: the folder of the model (``models/``) that holds what a new subject's fit needs
ALIGNMENT_DIR = "alignment"
_SETTINGS = ("method", "parcellation", "parcel_voxels", "reference", "fit_runs", "gap", "run_lengths",
             "n_parcels", "digest")


def save_alignment(ckpt_dir: str | os.PathLike, record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Copy the parcels and the reference's fit frames into ``<ckpt_dir>/alignment``; the contract's entry.

    Parameters
    ----------
    ckpt_dir
        The model folder.
    record
        The training experiment's ``alignment`` (:func:`~monai_emotion.align.stage.align_cache`);
        ``None`` (no alignment) removes a stale folder and returns ``None``.
    """
    folder = Path(ckpt_dir) / ALIGNMENT_DIR
    if folder.exists():  # a retraining into the same folder must not keep another alignment's frames
        shutil.rmtree(folder)
    if not record:
        return None
    (folder / "reference").mkdir(parents=True)
    shutil.copy2(Path(record["folder"]) / "parcels.npz", folder / "parcels.npz")
    nbytes = (folder / "parcels.npz").stat().st_size
    for sidecar in record["reference_runs"].values():
        meta = fileio.read_json(sidecar) or {}
        for path in (Path(sidecar), Path(sidecar).parent / meta["file"]):
            shutil.copy2(path, folder / "reference" / path.name)
            nbytes += path.stat().st_size
    return {**{k: record[k] for k in _SETTINGS}, "folder": ALIGNMENT_DIR, "nbytes": int(nbytes)}


def _runs_of(index: CacheIndex) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for subject, run in index:
        out.setdefault(subject, []).append(run)
    return out


def _check_runs(saved: Mapping[str, Any], index: CacheIndex, fit: tuple[int, ...], predict_fit_runs: bool,
                where: str) -> list[int]:
    """The runs to predict; clear errors for alignment runs the model or the inputs lack."""
    held = sorted(int(r) for r in saved["fit_runs"])
    extra = sorted(set(fit) - set(held))
    if extra:
        raise ConfigError(f"alignment runs {extra} are not among the runs whose reference frames the model holds "
                          f"({held})", where=where,
                          fix=f"choose alignment_runs among {held} (or leave it null: all of them)")
    for subject, runs in sorted(_runs_of(index).items()):
        missing = sorted(set(fit) - set(runs))
        if missing:
            raise ConfigError(
                f"sub-{subject}: alignment run(s) {missing} are missing from the inputs (the model aligns a new "
                f"subject from its own responses to those movie runs)", where=where,
                fix=f"give sub-{subject}'s run(s) {missing} as well, or set alignment_runs to the runs you have "
                f"among {held}")
    runs = sorted({run for _, run in index})
    predict = runs if predict_fit_runs else [r for r in runs if r not in fit]
    if not predict:
        raise ConfigError(f"every input run {runs} is an alignment run: nothing is left to predict", where=where,
                          fix="give the runs to predict too, or set alignment_predict_fit_runs true "
                          "(predictions on the fit runs are stimulus-seen)")
    return predict


def align_new_subjects(
    index: CacheIndex,
    saved: Mapping[str, Any] | None,
    ckpt_dir: str | os.PathLike,
    alignment_runs: Sequence[int] | None = None,
    predict_fit_runs: bool = False,
) -> tuple[CacheIndex, dict[str, Any] | None]:
    """Fit each subject's transform from its alignment runs, map its runs; the runs to predict and a record.

    Parameters
    ----------
    index
        The subjects' runs cached through the model's contract.
    saved
        The contract's ``alignment`` entry (``None``: the model was trained without alignment).
    ckpt_dir
        The model folder (its ``alignment/`` holds the parcels and the reference's frames).
    alignment_runs
        The runs each subject's transform is fitted on (default: the model's fit runs).
    predict_fit_runs
        Predict the alignment runs too (they are then ``stimulus_seen_runs`` in the record).

    Returns
    -------
    tuple
        The aligned index of the runs to predict, and the record (reference, alignment runs,
        predicted runs, and per subject its fit runs, volumes, seconds, transform file and
        whether a saved transform was reused); ``(index, None)`` without alignment.
    """
    where = "config 'alignment_runs'"
    if not saved:
        if alignment_runs:
            raise ConfigError("alignment_runs given, but this model was trained without alignment", where=where,
                              fix="leave alignment_runs null")
        return index, None
    fit = tuple(sorted({int(r) for r in (alignment_runs or saved["fit_runs"])}))
    predict = _check_runs(saved, index, fit, predict_fit_runs, where)
    models = Path(ckpt_dir) / saved.get("folder", ALIGNMENT_DIR)
    spec = AlignmentSpec(method=saved["method"], fit_runs=fit, reference=saved["reference"],
                         parcellation=saved["parcellation"], parcel_voxels=saved["parcel_voxels"])
    started = time.perf_counter()
    # no test runs in this split: the runs to predict were checked against the fit runs above
    aligned, record = align_cache(index, spec, {"kind": "subjects", "test_runs": [], "validate_runs": []},
                                  float(saved["gap"]), lambda _: CacheIndex.load(models / "reference"),
                                  parcels=models / "parcels.npz",
                                  lengths={int(r): int(n) for r, n in saved["run_lengths"].items()})
    seconds = time.perf_counter() - started
    subjects = {}
    for subject, fit_record in record["fits"].items():
        subjects[subject] = ({"reference": True} if fit_record.get("reference") else {
            "fit_runs": fit_record["fit_runs"], "fit_volumes": fit_record["fit_volumes"],
            "fit_seconds": fit_record["fit_seconds"], "reused": bool(fit_record.get("reused")),
            "transform": record["transforms"][subject]})
    kept = CacheIndex(aligned.root, [entry for entry in aligned.values() if entry.run in predict])
    return kept, {"method": spec.method, "reference": spec.reference, "alignment_runs": list(fit),
                  "predicted_runs": predict, "stimulus_seen_runs": sorted(set(predict) & set(fit)),
                  "model_alignment": str(models), "folder": record["folder"], "seconds": round(seconds, 3),
                  "subjects": subjects}


def describe_alignment(record: Mapping[str, Any]) -> str:
    """One log line for :func:`align_new_subjects`' record: reference, runs, volumes, seconds."""
    fits = []
    for subject, fit in sorted(record["subjects"].items()):
        if fit.get("reference"):
            fits.append(f"sub-{subject} (the reference)")
        else:
            cost = "saved transform reused" if fit["reused"] else f"fitted in {fit['fit_seconds']} s"
            fits.append(f"sub-{subject} ({fit['fit_volumes']} volumes, {cost})")
    seen = record["stimulus_seen_runs"]
    return (f"alignment ({record['method']}, reference sub-{record['reference']}) from runs "
            f"{record['alignment_runs']}: {', '.join(fits)}; predicting runs {record['predicted_runs']}"
            + (f" (stimulus-seen: {seen})" if seen else ""))
