"""What ``configs/saliency.json`` runs: per-emotion saliency maps of the held-out volumes, as NIfTI.

Writes into ``output_dir`` (``runs/saliency`` under the bundle root):

- ``desc-<EMOTION>_saliency.nii.gz``: the mean map over every selected volume of that emotion;
- ``sub-XX_desc-<EMOTION>_saliency.nii.gz``: the same over one subject's volumes;
- ``desc-<EMOTION>_saliency.png``: a glass-brain figure of the first (when ``figures``);
- ``saliency.json``: method, selection, volumes per emotion and subject, accuracy of the
  explained split, seconds, the files, and (synthetic data only) each map's correlation with
  the planted pattern (:mod:`monai_emotion.interpret.truth`).

Every map is on the source grid of the model's contract, with its affine, zero outside the
training mask (:mod:`monai_emotion.interpret.maps`). An emotion without a selected volume gets
an all-zero map, and ``saliency.json`` says so (``n_volumes`` 0).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_emotion.contract import load_contract
from monai_emotion.fileio import atomic_write_json
from monai_emotion.interpret import maps, truth
from monai_emotion.interpret.saliency import SaliencySettings, SaliencySums, attribute_batches

__all__ = ["run_saliency", "write_maps"]


def _sources(items: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """A source run per subject (its header's qform/sform codes go into the maps)."""
    out: dict[str, str] = {}
    for item in items:
        source = item.get("source_image")
        if source:
            out.setdefault(str(item["subject"]), str(source))
    return out


def write_maps(sums: SaliencySums, ckpt_dir: str | os.PathLike, output_dir: str | os.PathLike,
               sources: Mapping[str, str] | None = None, dataset_dir: str | os.PathLike | None = None,
               figures: bool = True) -> dict[str, Any]:
    """Write every pooled and per-subject map (and figures) on the source grid; returns the record.

    Parameters
    ----------
    sums
        What :func:`~monai_emotion.interpret.saliency.attribute_batches` accumulated.
    ckpt_dir
        The model folder (``contract.json`` and ``mask.nii.gz``).
    output_dir
        Where the maps go.
    sources
        A source run per subject (for the header codes).
    dataset_dir
        The data set: when it holds the synthetic ground truth, every map is correlated with it.
    figures
        Whether to draw a PNG per emotion.
    """
    contract = load_contract(ckpt_dir)
    mask = maps.source_mask(contract, ckpt_dir)
    out = Path(output_dir)
    sources = dict(sources or {})
    reference = next(iter(sources.values()), None)
    record: dict[str, Any] = {"emotions": {}, "subjects": {}}
    contrasts = {s: truth.planted_contrasts(f) for s in sums.subjects
                 if dataset_dir and (f := truth.truth_file(dataset_dir, s)) is not None}
    for k, emotion in enumerate(sums.classes):
        values, n = sums.mean(k)
        pooled = maps.to_source(values, contract, mask)
        path = maps.save_map(out / f"desc-{emotion}_saliency.nii.gz", pooled, contract, reference,
                             f"saliency {emotion} n={n}")
        entry: dict[str, Any] = {"file": path.name, "n_volumes": n}
        if figures:
            from monai_emotion.interpret.figures import plot_map

            entry["figure"] = plot_map(path, out / f"desc-{emotion}_saliency.png",
                                       f"{emotion} saliency ({n} volumes)").name
        record["emotions"][emotion] = entry
        for subject in sums.subjects:
            values, n_s = sums.mean(k, subject)
            own = maps.to_source(values, contract, mask)
            name = f"sub-{subject}_desc-{emotion}_saliency.nii.gz"
            maps.save_map(out / name, own, contract, sources.get(subject, reference), f"saliency {emotion} n={n_s}")
            row: dict[str, Any] = {"file": name, "n_volumes": n_s}
            if subject in contrasts and n_s:
                row["truth"] = truth.map_truth_correlation(own, contrasts[subject][k], mask)
            record["subjects"].setdefault(subject, {})[emotion] = row
    if contrasts:
        record["truth_mean"] = _truth_means(record["subjects"], sums.classes)
    return record


def _truth_means(subjects: Mapping[str, Mapping[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """Per emotion, and over emotions: the mean over subjects of each truth correlation."""
    out: dict[str, Any] = {}
    for key in ("r_signed", "r_abs"):
        per = {e: [row["truth"][key] for rows in subjects.values() if (row := rows.get(e)) and "truth" in row
                   and row["truth"][key] is not None] for e in classes}
        out[key] = {e: float(np.mean(v)) if v else None for e, v in per.items()}
        values = [v for v in out[key].values() if v is not None]
        out[f"{key}_mean"] = float(np.mean(values)) if values else None
    return out


def run_saliency(
    network: Any, dataloader: Iterable[Mapping[str, Any]], experiment: Mapping[str, Any],
    ckpt_dir: str | os.PathLike, interpret: Mapping[str, Any], device: Any = "cpu", progress: bool = True,
) -> dict[str, Any]:
    """Explain the held-out volumes and write the maps (what ``configs/saliency.json`` calls).

    Parameters
    ----------
    network
        The network with ``model.pt`` loaded.
    dataloader
        Batches of the split to explain (the bundle's ``validate#dataloader`` over it).
    experiment
        The bundle's ``experiment`` (classes, items, dataset).
    ckpt_dir
        The model folder.
    interpret
        The config's ``interpret`` section: ``split``, ``output_dir``, ``figures``, ``progress``
        and the :class:`~monai_emotion.interpret.saliency.SaliencySettings` keys.
    device
        Where the network runs.
    progress
        Show a progress bar (and only if ``interpret["progress"]`` is not false).

    Returns
    -------
    dict
        The record written to ``saliency.json``.
    """
    settings = SaliencySettings.from_dict(interpret)
    split = str(interpret.get("split", "test"))
    items = list(experiment[split])
    out = Path(interpret["output_dir"])
    progress = progress and bool(interpret.get("progress", True))
    sums = attribute_batches(network, dataloader, experiment["classes"], settings, device, progress, len(items))
    record = write_maps(sums, ckpt_dir, out, _sources(items), experiment.get("dataset_dir"),
                        bool(interpret.get("figures", True)))
    explained = sum(sums.counts.values())
    record = {"method": settings.method, "settings": {**vars(settings)}, "split": split, "n_split": sums.seen,
              "n_correct": sums.correct, "n_explained": explained, "seconds": round(sums.seconds, 3),
              "seconds_per_volume": round(sums.seconds / explained, 4) if explained else None,
              "source_shape": list(load_contract(ckpt_dir).source_shape), **record}
    atomic_write_json(out / "saliency.json", record)
    empty = [e for e, v in record["emotions"].items() if not v["n_volumes"]]
    print(f"\nsaliency ({settings.method}, {settings.volumes} volumes of the {split} split): {explained} of "
          f"{sums.seen} volumes explained in {sums.seconds:.1f} s -> {out}", flush=True)
    if empty:
        print(f"no selected volume for {empty}: their maps are zero (try interpret#volumes 'all')", flush=True)
    if "truth_mean" in record:
        r = record["truth_mean"]
        print("correlation with the planted patterns (mean over emotions): "
              f"r_signed {_fmt(r['r_signed_mean'])}, r_abs {_fmt(r['r_abs_mean'])}", flush=True)
    return record


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
