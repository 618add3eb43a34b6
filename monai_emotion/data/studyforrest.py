"""Studyforrest facts and BIDS discovery of the 7T audio-movie runs.

Every number about the dataset lives here (Hanke et al. 2014; docs/domain.md). Discovery
reads NIfTI headers only: no voxel data is loaded.
"""

from __future__ import annotations

import json
import os
import re
import struct
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_emotion.errors import ImageError, LayoutError

__all__ = [
    "TR",
    "SHORT_RUNS",
    "N_RUNS",
    "SEGMENT_STARTS",
    "VOLUMES_PER_RUN",
    "MOVIE_END",
    "OVERLAP_SECONDS",
    "ALIGNED_SHAPE",
    "ALIGNED_VOXEL_MM",
    "RAW_SHAPE",
    "RAW_VOXEL_MM",
    "SUBJECTS",
    "SPACES",
    "RunInfo",
    "Discovery",
    "bold_path",
    "normalize_subject",
    "read_run_header",
    "discover_runs",
    "volume_movie_times",
]

TR = 2.0
N_RUNS = 8
#: movie ("research cut") second at which each fMRI segment starts; segments overlap by 16 s
SEGMENT_STARTS: tuple[float, ...] = (0.0, 886.0, 1752.0, 2612.0, 3572.0, 4480.0, 5342.0, 6410.0)
VOLUMES_PER_RUN: tuple[int, ...] = (451, 441, 438, 488, 462, 439, 542, 338)
#: the released data's one short run: sub-04's run 8 stops at 263 of 338 volumes
SHORT_RUNS: dict[tuple[str, int], int] = {("04", 8): 263}
MOVIE_END = 7086.0
OVERLAP_SECONDS = 16.0
ALIGNED_SHAPE: tuple[int, int, int] = (132, 175, 48)
ALIGNED_VOXEL_MM = 1.2
RAW_SHAPE: tuple[int, int, int] = (160, 160, 36)
RAW_VOXEL_MM = 1.4
#: the 19 participants with aligned data (sub-10 has no valid distortion correction)
SUBJECTS: tuple[str, ...] = tuple(f"{i:02d}" for i in range(1, 21) if i != 10)

_FUNC = "sub-{sub}/ses-forrestgump/func/sub-{sub}_ses-forrestgump_task-forrestgump"
#: image space name -> path template relative to the BIDS root
SPACES: dict[str, str] = {
    "raw": _FUNC + "_acq-raw_run-{run:02d}_bold.nii.gz",
    "dico": _FUNC + "_acq-dico_run-{run:02d}_bold.nii.gz",
    "nonlinear": "derivatives/non-linear_anatomical_alignment/"
    + _FUNC
    + "_rec-dico7Tad2grpbold7TadNL_run-{run:02d}_bold.nii.gz",
    "linear": "derivatives/linear_anatomical_alignment/"
    + _FUNC
    + "_rec-dico7Tad2grpbold7Tad_run-{run:02d}_bold.nii.gz",
}

_SUB_RE = re.compile(r"sub-([A-Za-z0-9]+)")
_RUN_RE = re.compile(r"run-0*(\d+)")


def normalize_subject(subject: str | int) -> str:
    """Return the BIDS label of a subject: ``1``, ``"1"``, ``"01"``, ``"sub-01"`` -> ``"01"``."""
    text = str(subject).strip()
    if text.startswith("sub-"):
        text = text[4:]
    if text.isdigit():
        return f"{int(text):02d}"
    if not text or not text.isalnum():
        raise LayoutError(
            f"'{subject}' is not a subject label",
            fix="give subjects as BIDS labels such as '01' or 'sub-01'",
        )
    return text


def bold_path(root: str | os.PathLike, subject: str | int, run: int, space: str = "nonlinear") -> Path:
    """Path of one run's 4D BOLD file in a ds000113-shaped BIDS tree."""
    if space not in SPACES:
        raise LayoutError(
            f"unknown image space '{space}'",
            fix=f"use one of {sorted(SPACES)} or pass a glob to discover_runs",
        )
    return Path(root) / SPACES[space].format(sub=normalize_subject(subject), run=int(run))


def volume_movie_times(run: int, n_volumes: int, segment_starts: Sequence[float] = SEGMENT_STARTS) -> np.ndarray:
    """Movie second at which each volume of ``run`` (1-based) starts being acquired."""
    return float(segment_starts[run - 1]) + TR * np.arange(n_volumes, dtype=float)


@dataclass(frozen=True)
class RunInfo:
    """Header facts of one discovered run."""

    subject: str
    run: int
    path: str
    n_volumes: int
    expected_volumes: int | None
    shape: tuple[int, int, int]
    affine: tuple[tuple[float, ...], ...]
    zooms: tuple[float, float, float]
    tr: float
    tr_source: str

    @property
    def is_short(self) -> bool:
        return self.expected_volumes is not None and self.n_volumes < self.expected_volumes

    def to_dict(self) -> dict:
        return {
            "subject": self.subject,
            "run": self.run,
            "path": self.path,
            "n_volumes": self.n_volumes,
            "expected_volumes": self.expected_volumes,
            "shape": list(self.shape),
            "zooms": list(self.zooms),
            "tr": self.tr,
            "tr_source": self.tr_source,
        }


@dataclass
class Discovery:
    """What :func:`discover_runs` found, and what it did not."""

    root: str
    space: str
    runs: list[RunInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def subjects(self) -> list[str]:
        return sorted({r.subject for r in self.runs})

    def by_subject(self) -> dict[str, list[RunInfo]]:
        out: dict[str, list[RunInfo]] = {}
        for r in self.runs:
            out.setdefault(r.subject, []).append(r)
        return out

    def summary(self) -> str:
        lines = [f"{self.root} [{self.space}]: {len(self.subjects)} subjects, {len(self.runs)} runs"]
        lines += [f"  ! {p}" for p in self.problems]
        return "\n".join(lines)


def _expected_data_bytes(img: nib.Nifti1Image) -> int:
    header = img.header
    n_voxels = int(np.prod(header.get_data_shape()))
    # the proxy's offset, not the header field: vox_offset may be 0 in files with extensions
    offset = int(getattr(img.dataobj, "offset", header.get_data_offset()))
    return offset + n_voxels * header.get_data_dtype().itemsize


def _check_file_complete(path: Path, img: nib.Nifti1Image) -> None:
    """Catch truncated files from the size alone (gzip keeps the original size mod 2**32)."""
    expected = _expected_data_bytes(img)
    size = path.stat().st_size
    if path.name.endswith(".gz"):
        if size < 18:
            raise ImageError("gzip file is truncated", path, fix="copy the file again from the dataset")
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            (isize,) = struct.unpack("<I", fh.read(4))
        if isize != expected % 2**32:
            raise ImageError(
                f"gzip stream is truncated or corrupt (it ends as if it held {isize} bytes, "
                f"the header needs {expected})",
                path,
                fix="copy the file again from the dataset (e.g. `datalad get` it again)",
            )
    elif size < expected:
        raise ImageError(
            f"file is truncated ({size} bytes on disk, the header needs {expected})",
            path,
            fix="copy the file again from the dataset",
        )


def _sidecar_tr(path: Path, root: Path | None) -> tuple[float | None, str | None]:
    """RepetitionTime from the BIDS sidecars (the file's own JSON wins over inherited ones)."""
    own = Path(str(path).replace(".nii.gz", ".json").replace(".nii", ".json"))
    candidates = [own]
    if root is not None:
        candidates += [root / "task-forrestgump_bold.json"]
    for candidate in candidates:
        if candidate.is_file():
            try:
                meta = json.loads(candidate.read_text())
            except json.JSONDecodeError as exc:
                raise ImageError(
                    f"JSON sidecar cannot be parsed ({exc.msg} at line {exc.lineno})",
                    candidate,
                    fix="repair the JSON file or remove it",
                ) from None
            if "RepetitionTime" in meta:
                return float(meta["RepetitionTime"]), str(candidate)
    return None, None


def _header_tr(img: nib.Nifti1Image) -> float:
    tr = float(img.header.get_zooms()[3])
    unit = img.header.get_xyzt_units()[1]
    if unit == "msec":
        tr /= 1000.0
    elif unit == "usec":
        tr /= 1e6
    return tr


def read_run_header(
    path: str | os.PathLike,
    *,
    expected_tr: float = TR,
    root: str | os.PathLike | None = None,
    check_complete: bool = True,
) -> tuple[nib.Nifti1Image, float, str]:
    """Load a run's header (no voxel data) and check it is a 4D series with the expected TR.

    Returns the lazily loaded image, its TR in seconds and where the TR came from.

    Raises
    ------
    ImageError
        Not a readable NIfTI, not 4D, truncated, or a TR that disagrees with ``expected_tr``
        (the message says whether the header or the JSON sidecar disagrees).
    """
    path = Path(path)
    if not path.is_file():
        raise LayoutError("file not found", path, fix="check the path and the BIDS layout")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for broken files
        raise ImageError(
            f"cannot read as NIfTI ({type(exc).__name__}: {exc})",
            path,
            fix="check that the file is a complete .nii/.nii.gz (copy it again if it was cut short)",
        ) from None
    if len(img.shape) != 4:
        raise ImageError(
            f"expected a 4D time series, found a {len(img.shape)}D image of shape {img.shape}",
            path,
            fix="give the 4D BOLD run (x, y, z, time), not a single volume or a mask",
        )
    if check_complete:
        _check_file_complete(path, img)
    header_tr = _header_tr(img)
    sidecar_tr, sidecar = _sidecar_tr(path, Path(root) if root else None)
    if sidecar_tr is not None and not np.isclose(sidecar_tr, expected_tr, atol=1e-3):
        raise ImageError(
            f"the JSON sidecar {sidecar} says RepetitionTime={sidecar_tr} s, expected {expected_tr} s",
            path,
            fix="studyforrest 7T runs have TR 2.0 s; correct the sidecar or pass the right expected TR",
        )
    if np.isclose(header_tr, expected_tr, atol=1e-3):
        return img, header_tr, "header"
    if sidecar_tr is not None:
        # headers written by some converters carry 0 or a unit slip; the sidecar is BIDS' truth
        warnings.warn(
            f"{path}: header TR {header_tr:g} s disagrees with sidecar {sidecar} ({sidecar_tr} s); "
            "using the sidecar",
            stacklevel=2,
        )
        return img, sidecar_tr, f"sidecar {sidecar}"
    hint = ""
    if np.isclose(header_tr, expected_tr * 1000, atol=1):
        hint = " (the header seems to store milliseconds under a 'sec' unit)"
    raise ImageError(
        f"the NIfTI header says TR={header_tr:g} s{hint}, expected {expected_tr} s; no JSON sidecar says otherwise",
        path,
        fix="fix pixdim[4]/xyzt_units in the header, or add a BIDS sidecar with RepetitionTime",
    )


def _find_subjects(root: Path, space: str) -> list[str]:
    bases = [root]
    if space in SPACES and SPACES[space].startswith("derivatives/"):
        bases.insert(0, root / SPACES[space].split("/sub-")[0])
    found: set[str] = set()
    folders: dict[str, Path] = {}
    for base in bases:
        if base.is_dir():
            for folder in sorted(base.glob("sub-*")):
                if not folder.is_dir():
                    continue
                found.add(folder.name[4:])
                label = normalize_subject(folder.name)
                other = folders.setdefault(label, folder)
                if other.name != folder.name:
                    # sub-1 and sub-01 name one subject: its runs would be read twice
                    raise LayoutError(
                        f"{other.name} and {folder.name} are the same subject (sub-{label})",
                        folder,
                        fix="keep one folder per subject, named with the dataset's label (sub-01)",
                    )
    participants = root / "participants.tsv"
    if not found and participants.is_file():
        for line in participants.read_text().splitlines()[1:]:
            if line.strip():
                found.add(normalize_subject(line.split("\t")[0]))
    return sorted(found)


def _runs_from_glob(root: Path, pattern: str) -> dict[tuple[str, int], list[Path]]:
    hits: dict[tuple[str, int], list[Path]] = {}
    for path in sorted(root.glob(pattern)):
        sub, run = _SUB_RE.search(path.name), _RUN_RE.search(path.name)
        if sub is None or run is None:
            raise LayoutError(
                "file matched the glob but has no sub-<label>/run-<index> in its name",
                path,
                fix="narrow the glob, or rename the file with BIDS entities",
            )
        hits.setdefault((sub.group(1), int(run.group(1))), []).append(path)
    return hits


def discover_runs(
    root: str | os.PathLike,
    space: str = "nonlinear",
    subjects: Iterable[str | int] | None = None,
    runs: Iterable[int] | None = None,
    *,
    expected_volumes: Sequence[int] = VOLUMES_PER_RUN,
    expected_tr: float = TR,
    check_complete: bool = True,
) -> Discovery:
    """Find each subject's runs for an image space and check their headers.

    Parameters
    ----------
    root
        BIDS root of ds000113 (or a tree laid out the same way).
    space
        ``raw``, ``dico``, ``nonlinear`` (the seed's group-template space), ``linear``,
        or a glob relative to ``root`` whose file names carry ``sub-`` and ``run-`` entities.
    subjects, runs
        Restrict to these (default: every subject folder found, runs 1-8).
    expected_volumes
        Volumes per run (1-based run r -> ``expected_volumes[r-1]``).

    Returns
    -------
    Discovery
        Runs that exist and passed the header checks; ``problems`` lists missing subjects,
        missing runs and short runs (a short run is kept with its real length).
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise LayoutError("dataset folder not found", root_path, fix="pass the BIDS root of ds000113")
    run_ids = sorted({int(r) for r in runs}) if runs is not None else list(range(1, len(expected_volumes) + 1))
    result = Discovery(root=str(root_path), space=space)
    globbed = None if space in SPACES else _runs_from_glob(root_path, space)
    if subjects is None:
        wanted = sorted({s for s, _ in globbed}) if globbed is not None else _find_subjects(root_path, space)
        if not wanted:
            raise LayoutError(
                f"no sub-* folders found for space '{space}'",
                root_path,
                fix="check the path, or choose another --space",
            )
    else:
        wanted = [normalize_subject(s) for s in subjects]
    for sub in wanted:
        found_any = False
        for run in run_ids:
            if globbed is not None:
                paths = globbed.get((sub, run), [])
                if len(paths) > 1:
                    raise LayoutError(
                        f"{len(paths)} files for sub-{sub} run {run}: {', '.join(map(str, paths))}",
                        paths[0],
                        fix="keep one file per subject and run, or narrow the glob",
                    )
                path = paths[0] if paths else None
            else:
                path = bold_path(root_path, sub, run, space)
                if not path.is_file():
                    path = None
            if path is None:
                result.problems.append(f"sub-{sub}: run {run} missing")
                continue
            found_any = True
            img, tr, tr_source = read_run_header(
                path, expected_tr=expected_tr, root=root_path, check_complete=check_complete
            )
            n = int(img.shape[3])
            expected = int(expected_volumes[run - 1]) if run - 1 < len(expected_volumes) else None
            if expected is not None and n < expected:
                result.problems.append(f"sub-{sub}: run {run} is short ({n} of {expected} volumes)")
            elif expected is not None and n > expected:
                raise ImageError(
                    f"run {run} has {n} volumes, more than the {expected} this run has",
                    path,
                    fix="check that the file belongs to this run, or pass the right expected volumes",
                )
            result.runs.append(
                RunInfo(
                    subject=sub,
                    run=run,
                    path=str(path),
                    n_volumes=n,
                    expected_volumes=expected,
                    shape=tuple(int(s) for s in img.shape[:3]),
                    affine=tuple(tuple(float(v) for v in row) for row in img.affine),
                    zooms=tuple(float(z) for z in img.header.get_zooms()[:3]),
                    tr=tr,
                    tr_source=tr_source,
                )
            )
        if not found_any:
            result.problems.append(f"sub-{sub}: no runs found for space '{space}'")
    return result
