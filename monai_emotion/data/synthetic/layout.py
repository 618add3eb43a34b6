"""Arguments and tree of a synthetic dataset: random streams, validated settings, BIDS files.

What :func:`~monai_emotion.data.synthetic.generate.make_synthetic` checks before it writes a
voxel, and the small files it writes around the runs (dataset description, participants,
sidecars, ground-truth NIfTIs).
"""

from __future__ import annotations

import json
import shutil
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_emotion import __version__
from monai_emotion.data.labels import CLASSES
from monai_emotion.data.studyforrest import (
    N_RUNS,
    SPACES,
    SUBJECTS,
    TR,
    VOLUMES_PER_RUN,
    normalize_subject,
)
from monai_emotion.data.synthetic.bold import Grid
from monai_emotion.data.synthetic.timeline import MIN_VOLUMES
from monai_emotion.errors import ConfigError, LayoutError

__all__ = ["rng", "per_class", "subject_labels", "run_lengths", "check_short_runs", "prepare",
           "write_json", "write_bids_metadata", "save_volumes"]


def rng(seed: int, *keys: int | str) -> np.random.Generator:
    """One random stream per purpose and keys (subject, run, ...).

    A subject's data then do not depend on which other subjects, runs or properties are made.
    """
    ints = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng([int(seed), *ints])


def per_class(given: Mapping[str, float] | None, default: Mapping[str, float], name: str,
              upper: float | None) -> np.ndarray:
    """``default`` updated with ``given`` as an array in ``CLASSES`` order, checked to lie in [0, upper]."""
    values = dict(default)
    for key, value in (given or {}).items():
        if key not in values:
            raise ConfigError(f"{name} names an unknown class {key!r}", fix=f"use classes from {list(CLASSES)}")
        values[key] = float(value)
    out = np.array([values[c] for c in CLASSES], dtype=float)
    if (out < 0).any() or (upper is not None and (out > upper).any()):
        raise ConfigError(f"{name} values must lie in [0, {upper if upper is not None else 'inf'}]: {values}",
                          fix=f"correct {name}")
    return out


def subject_labels(subjects: int | Sequence[str | int]) -> list[str]:
    """A count (the first real labels) or a list of labels, as distinct BIDS labels."""
    if isinstance(subjects, int):
        if not 1 <= subjects <= len(SUBJECTS):
            raise ConfigError(f"subjects={subjects}: between 1 and {len(SUBJECTS)} subjects",
                              fix="give a count up to 19, or a list of labels")
        return list(SUBJECTS[:subjects])
    labels = [normalize_subject(s) for s in subjects]
    if not labels or len(set(labels)) != len(labels):
        raise ConfigError(f"subjects must be distinct and non-empty: {labels}", fix="list each subject once")
    return labels


def run_lengths(volumes_per_run: int | Sequence[int] | None) -> list[int]:
    """Volumes of each of the 8 runs: the real counts, each capped at an int, or 8 counts."""
    if volumes_per_run is None:
        return list(VOLUMES_PER_RUN)
    if isinstance(volumes_per_run, int | np.integer):
        return [min(int(volumes_per_run), v) for v in VOLUMES_PER_RUN]
    lengths = [int(v) for v in volumes_per_run]
    if len(lengths) != N_RUNS or any(v > real for v, real in zip(lengths, VOLUMES_PER_RUN, strict=True)):
        raise ConfigError(f"volumes_per_run={lengths}: need {N_RUNS} counts, none above the real "
                          f"{list(VOLUMES_PER_RUN)}", fix="give 8 counts, or one int to cap every run")
    return lengths


def check_short_runs(short_runs: Mapping[tuple[str | int, int], int] | None, subjects: list[str],
                     lengths: list[int]) -> dict[tuple[str, int], int]:
    """``{(subject, run): n}`` with normalised keys; each must name a generated subject and fit its run."""
    out = {}
    for (sub, run), n in (short_runs or {}).items():
        sub, run, n = normalize_subject(sub), int(run), int(n)
        if sub not in subjects or not 1 <= run <= N_RUNS or not MIN_VOLUMES <= n <= lengths[run - 1]:
            raise ConfigError(
                f"short_runs entry ({sub!r}, {run}): {n} volumes is not usable",
                fix=f"name a generated subject, a run 1-{N_RUNS}, and {MIN_VOLUMES} to the run's "
                f"{lengths[run - 1] if 1 <= run <= N_RUNS else '?'} volumes",
            )
        out[(sub, run)] = n
    return out


def prepare(out: Path, overwrite: bool) -> None:
    """Create ``out``; replace an earlier synthetic dataset there only when ``overwrite``."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise LayoutError("folder is not empty", out,
                              fix="choose a new folder, or pass overwrite=True to replace an earlier synthetic dataset")
        if not (out / "ground_truth" / "generation.json").is_file():
            raise LayoutError("folder holds no synthetic dataset (no ground_truth/generation.json); "
                              "refusing to overwrite it", out, fix="choose an empty or new folder")
        for path in [*out.glob("sub-*"), out / "derivatives", out / "annotations", out / "ground_truth"]:
            if path.is_dir():
                shutil.rmtree(path)
    out.mkdir(parents=True, exist_ok=True)


def write_json(path: Path, data: dict) -> Path:
    """``data`` as indented JSON at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def write_bids_metadata(out: Path, subjects: list[str], space: str, seed: int,
                        absent: Sequence[str] = ()) -> None:
    """Dataset description, participants and the task sidecar (and the derivative's description).

    ``absent`` subjects are listed in ``participants.tsv`` and get an empty subject folder but
    no runs, as ds000113's sub-10 (no valid distortion correction, hence no aligned data).
    """
    generated_by = [{"Name": "monai-emotion synthetic", "Version": __version__,
                     "Description": "studyforrest-shaped synthetic data with a planted emotion signal"}]
    write_json(out / "dataset_description.json", {
        "Name": f"monai-emotion synthetic studyforrest (seed {seed})",
        "BIDSVersion": "1.8.0", "DatasetType": "raw", "GeneratedBy": generated_by})
    listed = sorted({*subjects, *absent}) if absent else subjects
    (out / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{s}\n" for s in listed))
    for sub in absent:
        (out / f"sub-{sub}" / "ses-forrestgump" / "func").mkdir(parents=True, exist_ok=True)
    write_json(out / "task-forrestgump_bold.json", {"RepetitionTime": TR, "TaskName": "forrestgump"})
    if SPACES[space].startswith("derivatives/"):
        write_json(out / SPACES[space].split("/sub-")[0] / "dataset_description.json", {
            "Name": f"synthetic {space} alignment", "BIDSVersion": "1.8.0",
            "DatasetType": "derivative", "GeneratedBy": generated_by})


def save_volumes(path: Path, mask: np.ndarray, values: np.ndarray, grid: Grid) -> Path:
    """``(k, V)`` values over the mask voxels as a float32 ``(X, Y, Z, k)`` NIfTI (0 outside)."""
    vol = np.zeros((*mask.shape, values.shape[0]), dtype=np.float32)
    vol[mask] = values.T
    img = nib.Nifti1Image(vol, grid.affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return path
