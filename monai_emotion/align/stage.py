"""Functional alignment as a preprocessing stage: an aligned cache derived from the regular one.

``data#alignment`` (:class:`AlignmentSpec`): ``{"method": "none"}`` (default) or
``{"method": "procrustes", "fit_runs": null, "reference": null, "parcellation": "kmeans",
"parcel_voxels": 100}``. With ``procrustes`` every selected subject's cached frames are mapped
into the **reference subject**'s space on the same grid by piecewise orthogonal Procrustes
(:mod:`.procrustes`), fitted on its frames of the fit runs against the reference's frames of
the same runs: every subject heard the same movie, so volume *i* of run *r* is the same movie
moment for all (a shorter run is cut to the common length). No label is read.

- ``fit_runs``: the runs the fit may see (default: the runs that are neither test nor validation
  runs of the split). Fit runs that are test runs of the split are refused. Volumes of the fit
  runs whose movie window comes within the split's gap of a run outside the fit runs are left
  out of the fit (the 16 s overlap between neighbouring runs), as are censored volumes.
- ``reference``: a subject label (default: the first, in sorted order, of the split's training
  subjects). A reference subject rather than an iterated template: each subject's transform
  then depends only on its own fit runs and the reference's, so a new subject is aligned
  without refitting anyone else, and the reference space stays a real subject's.
- parcels: k-means (or cubes) over the voxels the reference covers in its fit runs, computed
  once per aligned folder; voxels outside every parcel pass unchanged.

The aligned cache lives in ``<cache>/aligned/procrustes-<digest>/``, the digest covering the
settings, the fit runs, the reference, the gap and the source cache's parameters and the
reference's fit-run fingerprints. It holds ``alignment.json``, ``parcels.npz``,
``transforms/sub-XX.npz`` (+ ``.json``: digest, frames, seconds) and one aligned ``.npy`` +
sidecar per run (the reference's runs are used as they are). Transforms and runs are rebuilt
only when their inputs' fingerprints change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monai_emotion import fileio
from monai_emotion.align.procrustes import Parcellation, PiecewiseProcrustes, parcellate
from monai_emotion.data.cache.index import CachedRun, CacheIndex
from monai_emotion.data.cache.store import AtomicNpyWriter, run_stem
from monai_emotion.data.studyforrest import TR, volume_movie_times
from monai_emotion.errors import CacheError, ConfigError
from monai_emotion.runtime import barrier, is_rank0

__all__ = ["METHODS", "AlignmentSpec", "align_cache", "check_alignment", "fit_runs_for", "reference_for"]

#: the alignment methods
METHODS: tuple[str, ...] = ("none", "procrustes")
PARCELLATIONS: tuple[str, ...] = ("kmeans", "grid")


@dataclass(frozen=True)
class AlignmentSpec:
    """``data#alignment``: which alignment, fitted on which runs, towards which subject."""

    method: str = "none"
    fit_runs: tuple[int, ...] | None = None
    reference: str | None = None
    parcellation: str = "kmeans"
    parcel_voxels: int = 100

    def __post_init__(self) -> None:
        where = "config 'data#alignment'"
        if self.method not in METHODS:
            raise ConfigError(f"unknown alignment method {self.method!r}", where=where, fix=f"use one of {list(METHODS)}")
        if self.parcellation not in PARCELLATIONS:
            raise ConfigError(f"unknown parcellation {self.parcellation!r}", where=where,
                              fix=f"use one of {list(PARCELLATIONS)}")
        if int(self.parcel_voxels) < 1:
            raise ConfigError(f"parcel_voxels must be >= 1, got {self.parcel_voxels}", where=where, fix="e.g. 100")
        if self.fit_runs is not None:
            object.__setattr__(self, "fit_runs", tuple(sorted({int(r) for r in self.fit_runs})))
        if self.reference is not None:
            from monai_emotion.data.studyforrest import normalize_subject

            object.__setattr__(self, "reference", normalize_subject(self.reference))

    @classmethod
    def from_dict(cls, value: AlignmentSpec | Mapping[str, Any] | None) -> AlignmentSpec:
        """From the config's dict (``None`` or ``{}``: no alignment); unknown keys are errors."""
        if isinstance(value, AlignmentSpec):
            return value
        value = dict(value or {})
        names = [f for f in cls.__dataclass_fields__]
        unknown = [k for k in value if k not in names]
        if unknown:
            raise ConfigError(f"unknown key(s) {['data#alignment#' + k for k in unknown]}",
                              where="config 'data#alignment'", fix=f"use only {names}")
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["fit_runs"] = list(self.fit_runs) if self.fit_runs is not None else None
        return out


def _held_runs(split: Mapping[str, Any]) -> tuple[list[int], list[int] | None]:
    """The split's validation runs and test runs (``None``: every run of the test subjects)."""
    if split.get("kind", "runs") == "leaky_random":
        raise ConfigError("alignment needs a split by runs or by subjects: a random split of volumes has no run "
                          "that no model is tested on", where="config 'data#alignment'",
                          fix="set data#alignment#method to 'none' for the leaky split")
    test = split.get("test_runs")
    return [int(r) for r in split.get("validate_runs") or []], (None if test is None else [int(r) for r in test])


def fit_runs_for(spec: AlignmentSpec, split: Mapping[str, Any], available: Sequence[int]) -> tuple[int, ...]:
    """The runs the alignment is fitted on (``spec.fit_runs``, default: neither test nor validation).

    Raises
    ------
    ConfigError
        A fit run is a test run of the split, or no fit run is left.
    """
    validate, test = _held_runs(split)
    if spec.fit_runs is None:
        runs = tuple(r for r in sorted(set(available)) if r not in set(validate) | set(test or []))
    else:
        runs = spec.fit_runs
        overlap = sorted(set(runs) & set(test or []))
        if overlap:
            raise ConfigError(
                f"alignment fit runs {overlap} are test runs of the split (test_runs {sorted(test or [])}): "
                "the alignment would see the test data", where="config 'data#alignment#fit_runs'",
                fix=f"leave data#alignment#fit_runs null (the runs neither tested nor validated), or drop {overlap}")
    if not runs:
        raise ConfigError("no run is left to fit the alignment on", where="config 'data#alignment#fit_runs'",
                          fix="hold out fewer runs, or name data#alignment#fit_runs")
    return tuple(runs)


def check_alignment(alignment: AlignmentSpec | Mapping[str, Any] | None, split: Mapping[str, Any],
                    available: Sequence[int]) -> None:
    """Fail before any caching when ``data#alignment`` cannot work with ``split`` (see :func:`fit_runs_for`)."""
    spec = AlignmentSpec.from_dict(alignment)
    if spec.method != "none":
        fit_runs_for(spec, split, available)


def reference_for(spec: AlignmentSpec, split: Mapping[str, Any], subjects: Sequence[str]) -> str:
    """``spec.reference``, else the first (sorted) of the split's training subjects."""
    if spec.reference is not None:
        return spec.reference
    unseen = {str(s) for s in split.get("test_subjects") or []} if split.get("kind") == "subjects" else set()
    train = sorted(s for s in subjects if s not in unseen)
    if not train:
        raise ConfigError("no training subject to serve as the alignment reference",
                          where="config 'data#alignment#reference'", fix="name data#alignment#reference")
    return train[0]


def _fit_frames(run: int, n: int, fit_runs: Sequence[int], all_runs: Mapping[int, int], gap: float) -> np.ndarray:
    """Which of ``n`` volumes of ``run`` lie farther than ``gap`` from every run outside the fit runs."""
    start = volume_movie_times(run, n)
    keep = np.ones(n, dtype=bool)
    for other, length in all_runs.items():
        if other in fit_runs:
            continue
        times = volume_movie_times(other, length)
        lo, hi = times[0] - gap, times[-1] + TR + gap
        keep &= (start + TR <= lo) | (start >= hi)
    return keep


def _pairs(subject_runs: Mapping[int, CachedRun], reference_runs: Mapping[int, CachedRun], fit_runs: Sequence[int],
           gap: float, lengths: Mapping[int, int]) -> list[tuple[CachedRun, CachedRun, np.ndarray]]:
    """Per fit run: the subject's and the reference's run and the volumes both may use."""
    out = []
    for run in fit_runs:
        if run not in subject_runs or run not in reference_runs:
            continue
        a, b = subject_runs[run], reference_runs[run]
        n = min(a.n_volumes, b.n_volumes)
        keep = _fit_frames(run, n, fit_runs, lengths, gap)
        keep[[v for v in a.censored + b.censored if v < n]] = False
        if keep.any():
            out.append((a, b, keep))
    return out


def _stack(pairs: list, side: int, parcels: Parcellation | None = None) -> np.ndarray:
    blocks = []
    for pair in pairs:
        frames = pair[side].open()[: len(pair[2])][pair[2]]
        blocks.append(parcels.gather(frames) if parcels is not None else frames)
    return np.concatenate(blocks)


class _Stage:
    """One aligned folder: its parcels, each subject's transform, each aligned run."""

    def __init__(self, spec: AlignmentSpec, folder: Path, reference: Mapping[int, CachedRun], fit_runs: tuple[int, ...],
                 gap: float, lengths: Mapping[int, int], digest: str, parcels: Path | None = None) -> None:
        self.spec, self.folder, self.reference, self.fit_runs = spec, folder, reference, fit_runs
        self.gap, self.lengths, self.digest = gap, lengths, digest
        self.parcels = self._parcels(parcels)

    def _parcels(self, given: Path | None) -> Parcellation:
        path = self.folder / "parcels.npz"
        for source in (given, path):  # a saved model's parcels first: a new subject gets the training's
            if source is not None and Path(source).is_file():
                with np.load(source) as saved:
                    parcels = Parcellation.from_arrays(dict(saved))
                if source != path and not path.is_file():
                    fileio.atomic_write_bytes(path, Path(source).read_bytes(), CacheError)
                return parcels
        pairs = _pairs(self.reference, self.reference, self.fit_runs, self.gap, self.lengths)
        if not pairs:
            raise CacheError("the alignment reference has no usable volume in the fit runs", self.folder,
                             fix="check data#alignment#fit_runs and the reference's cached runs")
        frames = _stack(pairs, 0).astype(np.float32)
        covered = frames.std(axis=0) > 0
        parcels = parcellate(covered, self.spec.parcel_voxels, self.spec.parcellation)
        fileio.atomic_write(path, lambda fh: np.savez(fh, **parcels.to_arrays()), CacheError)
        return parcels

    def transform(self, subject: str, runs: Mapping[int, CachedRun]) -> tuple[PiecewiseProcrustes, dict[str, Any]]:
        """The subject's transform, fitted unless a saved one has the same inputs."""
        path = self.folder / "transforms" / f"sub-{subject}.npz"
        pairs = _pairs(runs, self.reference, self.fit_runs, self.gap, self.lengths)
        if not pairs:
            raise CacheError(f"sub-{subject} has no usable volume in the alignment fit runs {list(self.fit_runs)}",
                             runs[next(iter(runs))].path if runs else self.folder,
                             fix="cache the subject's fit runs, or choose other data#alignment#fit_runs")
        digest = fileio.json_digest({"folder": self.digest, "subject": subject,
                                     "fit": [_fingerprint(p[0]) for p in pairs]})
        record = fileio.read_json(path.with_suffix(".json"))
        if record is not None and record.get("digest") == digest and path.is_file():
            with np.load(path) as saved:
                return PiecewiseProcrustes.from_arrays(dict(saved)), {**record, "reused": True}
        started = time.perf_counter()
        source = _stack(pairs, 0, self.parcels)
        target = _stack(pairs, 1, self.parcels)
        fitted = PiecewiseProcrustes.fit(source, target, self.parcels)
        record = {"digest": digest, "subject": subject, "fit_runs": [int(p[0].run) for p in pairs],
                  "fit_volumes": int(len(source)), "fit_seconds": round(time.perf_counter() - started, 3),
                  "n_parcels": self.parcels.n_parcels, "n_voxels": int(len(self.parcels.voxels)),
                  "file": path.name}
        path.parent.mkdir(parents=True, exist_ok=True)
        fileio.atomic_write(path, lambda fh: np.savez(fh, **fitted.to_arrays()), CacheError)
        fileio.atomic_write_json(path.with_suffix(".json"), record, CacheError)
        return fitted, record

    def aligned_run(self, run: CachedRun, fitted: PiecewiseProcrustes, digest: str) -> CachedRun:
        """``run`` mapped by ``fitted`` into the aligned folder (reused when its inputs match)."""
        stem = run_stem(run.subject, run.run)
        npy, sidecar = self.folder / f"{stem}.npy", self.folder / f"{stem}.json"
        source_meta = fileio.read_json(run.sidecar) or {}
        stamp = {"transform": digest, "source": source_meta.get("fingerprint")}
        meta = fileio.read_json(sidecar)
        if not (meta is not None and meta.get("alignment", {}).get("stamp") == stamp and npy.is_file()
                and npy.stat().st_size == int(meta.get("nbytes", -1))):
            if sidecar.exists():
                sidecar.unlink()  # the sidecar goes first: a half-written run is never read
            frames = run.open()
            with AtomicNpyWriter(npy, run.shape) as writer:
                for start in range(0, run.n_volumes, 64):
                    writer.write(fitted.transform(frames[start:start + 64]))
                writer.commit()
            meta = {**source_meta, "file": npy.name, "nbytes": writer.nbytes,
                    "alignment": {"stamp": stamp, "method": self.spec.method, "source_frames": run.path,
                                  "transform": f"transforms/sub-{run.subject}.npz"}}
            fileio.atomic_write_json(sidecar, meta, CacheError)
        return CachedRun.from_sidecar(sidecar, meta)


def _fingerprint(run: CachedRun) -> Any:
    meta = fileio.read_json(run.sidecar)
    if meta is None:
        raise CacheError("a cached run has no readable sidecar", run.sidecar, fix="rerun prepare_cache")
    return meta.get("fingerprint")


def _by_subject(index: Mapping[tuple[str, int], CachedRun]) -> dict[str, dict[int, CachedRun]]:
    out: dict[str, dict[int, CachedRun]] = {}
    for (subject, run), entry in index.items():
        out.setdefault(subject, {})[run] = entry
    return out


def align_cache(
    index: CacheIndex,
    alignment: AlignmentSpec | Mapping[str, Any] | None,
    split: Mapping[str, Any],
    gap: float,
    reference_index: Callable[[str], CacheIndex] | None = None,
    parcels: Path | None = None,
    lengths: Mapping[int, int] | None = None,
) -> tuple[CacheIndex, dict[str, Any] | None]:
    """The aligned cache of ``index``'s runs and the alignment's record (``None`` for ``"none"``).

    Parameters
    ----------
    index
        The regular cache of the selected runs (one grid).
    alignment
        ``data#alignment`` (:class:`AlignmentSpec` or its dict).
    split
        The bundle split: its test and validation runs decide the default fit runs.
    gap
        Seconds around runs outside the fit runs whose volumes the fit leaves out.
    reference_index
        Called with the reference subject when it is not among ``index``'s subjects (a new
        subject at inference): returns the reference's cached runs on the same grid.
    parcels
        A saved ``parcels.npz`` to use instead of parcelling the reference's frames (a saved
        model's, so a new subject is fitted on the training's parcels).
    lengths
        Volumes per run of every run of the movie (default: the reference's cached runs); the
        fit leaves out volumes within ``gap`` of the runs outside the fit runs among these.
    """
    spec = AlignmentSpec.from_dict(alignment)
    if spec.method == "none":
        return index, None
    subjects = _by_subject(index)
    reference = reference_for(spec, split, sorted(subjects))
    fit_runs = fit_runs_for(spec, split, sorted({run for _, run in index}))
    if reference not in subjects:
        if reference_index is None:
            raise ConfigError(f"the alignment reference sub-{reference} is not among the selected subjects",
                              where="config 'data#alignment#reference'",
                              fix="select the reference subject too, or name one of data#subjects")
        subjects_ref = _by_subject(reference_index(reference))[reference]
    else:
        subjects_ref = subjects[reference]
    lengths = dict(lengths) if lengths else {run: entry.n_volumes for run, entry in subjects_ref.items()}
    first = next(iter(subjects_ref.values()))
    params = (fileio.read_json(first.sidecar) or {}).get("fingerprint", {}).get("params")
    settings = {**spec.to_dict(), "fit_runs": list(fit_runs), "reference": reference, "gap": float(gap)}
    digest = fileio.json_digest({**settings, "params": params,
                                 "reference_fit": [_fingerprint(subjects_ref[r]) for r in fit_runs if r in subjects_ref]})
    folder = Path(index.root) / "aligned" / f"{spec.method}-{digest}"
    if is_rank0():
        folder.mkdir(parents=True, exist_ok=True)
        fileio.atomic_write_json(folder / "alignment.json", {**settings, "digest": digest}, CacheError)
        entries, fits = _build(spec, folder, subjects, subjects_ref, reference, fit_runs, gap, lengths, digest, parcels)
    barrier()
    if not is_rank0():  # the other ranks read what rank 0 wrote
        entries, fits = _build(spec, folder, subjects, subjects_ref, reference, fit_runs, gap, lengths, digest, parcels)
    record = {**settings, "digest": digest, "folder": str(folder),
              # what a new subject's fit needs (monai_emotion.align.model saves it with the model)
              "run_lengths": {str(r): int(n) for r, n in sorted(lengths.items())},
              "reference_runs": {str(r): subjects_ref[r].sidecar for r in fit_runs if r in subjects_ref},
              "transforms": {s: str(folder / "transforms" / f"sub-{s}.npz") for s, fit in fits.items()
                             if not fit.get("reference")},
              "fits": fits, "n_parcels": None}
    with np.load(folder / "parcels.npz") as saved:
        record["n_parcels"] = int(len(saved["offsets"]) - 1)
    return CacheIndex(folder, entries), record


def _build(spec: AlignmentSpec, folder: Path, subjects: Mapping[str, Mapping[int, CachedRun]],
           reference: Mapping[int, CachedRun], ref_label: str, fit_runs: tuple[int, ...], gap: float,
           lengths: Mapping[int, int], digest: str, parcels: Path | None) -> tuple[list[CachedRun], dict[str, Any]]:
    stage = _Stage(spec, folder, reference, fit_runs, gap, lengths, digest, parcels)
    entries, fits = [], {}
    for subject, runs in sorted(subjects.items()):
        if subject == ref_label:  # the reference's space is the target: its runs are used as they are
            entries += list(runs.values())
            fits[subject] = {"reference": True}
            continue
        fitted, fits[subject] = stage.transform(subject, runs)
        entries += [stage.aligned_run(entry, fitted, fits[subject]["digest"]) for entry in runs.values()]
    return entries, fits
