"""The report's sections read from the study folder: subject x emotion, warnings, provenance.

Part of :func:`monai_emotion.study.report.report_sections`: what ``results.csv``, each CNN
model's ``model.json`` and its training's ``versions.json`` say, formatted by the report's
own helpers.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import pandas as pd

from monai_emotion.fileio import file_sha256, json_digest, read_json
from monai_emotion.study.report import format_number, section, table

__all__ = ["subject_emotion", "model_records", "warnings", "provenance"]

#: (model id, model.json, train/versions.json) of each CNN model
Records = list[tuple[str, dict[str, Any], dict[str, Any]]]


def subject_emotion(summary: dict[str, Any], root: Path) -> dict[str, Any] | None:
    """Recall per subject and emotion on the held-out runs (results.csv), one row per decoder and subject."""
    path = root / "results.csv"
    if not path.is_file():
        return None
    results = pd.read_csv(path, dtype={"subject": str})
    classes = list(summary["classes"])
    units = results[results["experiment"].isin(["within", "cross"]) & (results["test_set"] == "heldout")
                    & (results["model"] == "*")]
    rows = []
    for (decoder, experiment, subject), group in units.groupby(["decoder", "experiment", "subject"], sort=True):
        by = group.set_index("emotion")
        rows.append([decoder, experiment, subject, *(format_number(by["recall"].get(c)) for c in classes),
                     format_number(by["balanced_accuracy"].get("ALL"))])
    return section("subject-emotion", "Subject x emotion", [
        "Recall per emotion on each subject's held-out runs (pooled over run folds; MEAN: mean over subjects, "
        "POOLED: all volumes), and the balanced accuracy, from `results.csv`. Click a column to sort."],
        tables=[table(["decoder", "experiment", "subject", *classes, "balanced acc."], rows)])


def model_records(root: Path) -> Records:
    """Each CNN model's ``model.json`` and its training's ``versions.json`` (empty when missing)."""
    out = []
    for path in sorted((root / "models" / "cnn").glob("**/model.json")):
        record = read_json(path) or {}
        if "spec" in record:  # the study's record of a model, not the network's ckpt/model.json
            out.append((str(record["id"]), record, read_json(path.parent / "train" / "versions.json") or {}))
    return out


def warnings(summary: dict[str, Any], records: Records) -> dict[str, Any]:
    """Everything that qualifies a number, in one place: flagged models, test sets, data problems."""
    flagged = (summary.get("warnings") or {}).get("flagged_models") or []
    out = section("warnings", "Warnings")
    if flagged:
        out["paragraphs"].append(f"{len(flagged)} model x test set(s) flagged as collapsed or degenerate "
                                 "(monai_emotion.metrics.degeneracy): their scores describe a class bias, not decoding.")
        out["paragraphs"].append("\n".join(
            f"- {f['decoder']} {f['model']} on {f['test_set']}: {format_number(f['top_class_share'], 2)} of its "
            f"volumes predicted {f['top_class']}; {'; '.join(f.get('reasons') or [])}" for f in flagged))
    else:
        out["paragraphs"].append("No model is flagged as collapsed or degenerate.")
    seen = sorted({f"{r['decoder']} {r['experiment']}/{r['test_set']}" for r in summary.get("headline", [])
                   if r.get("protocol") == "stimulus-seen"})
    if seen:
        out["paragraphs"].append(f"Stimulus-seen test sets ({len(seen)}): their movie moments were heard by the "
                                 f"training subjects, so they do not test generalisation to new stimuli: {', '.join(seen)}.")
    problems = sorted({p for _, _, v in records for p in (v.get("data") or {}).get("problems") or []})
    censored: dict[str, set[int]] = {}
    for _, _, v in records:
        for run, volumes in ((v.get("data") or {}).get("censored") or {}).items():
            censored.setdefault(run, set()).update(volumes)
    if censored:
        out["paragraphs"].append(f"Censored volumes (outliers, stored as zero frames; {sum(map(len, censored.values()))} "
                                 "in all):\n" + "\n".join(f"- {run}: {sorted(v)}" for run, v in sorted(censored.items())))
    if problems:
        out["paragraphs"].append(f"Data problems noted while loading ({len(problems)}; short runs are kept at "
                                 "their real length):\n" + "\n".join(f"- {p}" for p in problems))
    return out


def _versions() -> dict[str, str]:
    out = {}
    for name in ("monai-emotion", "monai", "torch", "numpy", "nilearn", "jinja2", "pandas", "matplotlib"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def provenance(summary: dict[str, Any], root: Path, records: Records) -> dict[str, Any]:
    """Study config, package versions, digests and the command that reproduces each model."""
    config = read_json(root / "study.json") or {}
    command = f"python -m monai_emotion study --config {summary['config']} --out {root}"
    trained = next((v for _, _, v in records if v), {})
    versions = [[name, str(trained.get(name.replace("-", "_"), "-")), now] for name, now in _versions().items()]
    digests = [["study config (study.json)", json_digest(config, 16) if config else "-"]]
    digests += [[name, file_sha256(root / name)[:16]] for name in ("results.csv", "summary.json") if (root / name).is_file()]
    digests += [[f"preprocessing cache {Path(c).name}", "(its name carries the data and preprocessing digest)"]
                for c in sorted({(v.get("data") or {}).get("cache_dir") for _, _, v in records} - {None})]
    def mask(model: str) -> str:  # the training mask's digest, from the model's contract
        contract = read_json(root / "models" / "cnn" / model / "ckpt" / "contract.json") or {}
        return str(contract.get("mask_sha256") or "-")[:16]

    models = [[model, record.get("digest", "-"), mask(model), format_number(record.get("train_seconds"), 1),
               f"{command} --only cnn:permutations --force" if model.startswith("perm-")
               else f"{command} --only '{model}' --force"] for model, record, _ in records]
    return section("provenance", "Provenance", [
        f"The whole study: `{command}` (finished models are reused). This report, without training: "
        f"`python -m monai_emotion report {root}`. Each model below: its settings digest (model.json; it covers "
        "every setting that shapes the model), the digest of the mask it was trained on (ckpt/contract.json) and "
        "the command that retrains it (every decoder of that model id)."],
        tables=[table(["study setting", "value"], [[k, json.dumps(v, sort_keys=True)] for k, v in config.items()]),
                table(["package", "training (versions.json)", "this report"], versions),
                table(["item", "digest"], digests),
                table(["model", "settings digest", "mask sha256", "train s", "command"], models)])
