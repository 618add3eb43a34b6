"""Preprocessing cache: each 4D run read once, masked, cropped, cleaned, stored as float16 frames.

Layout of a cache folder ``out``::

    out/
      sub-01_run-01.npy       float16 (T, X, Y, Z), frame-major: frame t is one contiguous read
      sub-01_run-01.json      sidecar: source identity, parameters, grid affine, mask, versions
      ...
      masks/sub-01_mask.nii.gz (+ .json)   subject mask on the source grid (mask_strategy="subject")
      masks/group_mask.nii.gz  (+ .json)   group mask (mask_strategy="group")
      masks/user_mask.nii.gz   (+ .json)   binarised copy of a user mask (mask=PATH)
      cache_summary.json      what the last prepare_cache call did (informative only)

A run counts as cached only when its sidecar exists and its fingerprint (format version,
source path/size/mtime, every parameter, the mask's inputs, the confound file) matches. Both
files are written under a hidden temporary name, fsynced and renamed into place, the ``.npy``
first and the sidecar last; a rebuild removes the old sidecar before anything else. A crash
or SIGKILL at any moment therefore leaves nothing a later call would read.

Why the mask costs almost no extra reading: a data-derived mask needs each run's mean image
before the crop box is known, and a subject's runs must share one box (or frames of different
runs could not be batched together). Reading every run twice would double the dominant cost
(gzip decompression). Instead the mask comes from the mean of the first ``mask_volumes``
volumes of each run (default 20: ~4 % of a run, read from the start of the gzip stream, so no
seek), which separates brain from background as well as the full mean does for EPI
(``mask_volumes=None`` uses the full mean at the price of a second pass). Masks are stored in
``masks/`` and reused, so later calls read nothing for them.

Format versions: a run whose sidecar has an older format is rebuilt in place; a newer format
(written by a newer monai-emotion) raises :class:`CacheError` rather than being downgraded.
:meth:`CacheIndex.load` raises :class:`CacheError` for any format other than the current one.

Distributed builds: ``prepare_cache(..., shard=(rank, world_size))`` builds only the runs
``sorted_runs[rank::world_size]`` and then waits (polling the sidecars, ``wait_timeout``)
until every other run of the selection is complete, so every rank returns the full index.
Ranks may also call it with ``wait=False`` and synchronise with ``torch.distributed.barrier``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monai_emotion import fileio
from monai_emotion.data.cache import store
from monai_emotion.data.cache.build import RunBuilder
from monai_emotion.data.cache.spec import PreprocessingSpec
from monai_emotion.data.cache.store import run_stem
from monai_emotion.data.studyforrest import RunInfo, discover_runs, normalize_subject
from monai_emotion.errors import CacheError, ConfigError, DataError

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CachedRun",
    "CacheSummary",
    "CacheIndex",
    "attach_cache",
    "censored_frames",
    "prepare_cache",
]

CACHE_FORMAT_VERSION = store.CACHE_FORMAT_VERSION
_POLL_SECONDS = 5.0


@dataclass(frozen=True)
class CachedRun:
    """One cached run: where its frames are and on which grid."""

    subject: str
    run: int
    path: str
    sidecar: str
    source: str
    shape: tuple[int, int, int, int]
    affine: tuple[tuple[float, ...], ...]
    #: outlier volumes censored when the run was cleaned (zero frames; no item uses them)
    censored: tuple[int, ...] = ()

    @property
    def n_volumes(self) -> int:
        return self.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return tuple(self.shape[1:])

    def open(self) -> np.ndarray:
        """The frames as a read-only memory map ``(T, X, Y, Z)`` float16."""
        return np.load(self.path, mmap_mode="r")

    @classmethod
    def from_sidecar(cls, sidecar_path: Path, meta: dict[str, Any]) -> CachedRun:
        return cls(
            subject=str(meta["subject"]),
            run=int(meta["run"]),
            path=str(sidecar_path.parent / meta["file"]),
            sidecar=str(sidecar_path),
            source=str(meta["source"]["path"]),
            shape=tuple(int(s) for s in meta["shape"]),
            affine=tuple(tuple(float(v) for v in row) for row in meta["affine"]),
            censored=tuple(int(v) for v in (meta.get("censoring") or {}).get("volumes", [])),
        )


@dataclass
class CacheSummary:
    """What one :func:`prepare_cache` call did."""

    out: str
    runs: int = 0
    volumes: int = 0
    bytes_on_disk: int = 0
    seconds: float = 0.0
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    waited: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: censored outlier volumes per run (``sub-01_run-02``: count), runs with none left out
    censored: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"cache {self.out}: {self.runs} runs, {self.volumes} volumes, "
            f"{self.bytes_on_disk / 1e9:.2f} GB on disk, {self.seconds:.1f} s "
            f"({len(self.built)} built, {len(self.reused)} reused"
            + (f", {len(self.waited)} built by other ranks" if self.waited else "")
            + ")"
        ]
        if self.censored:
            lines.append(f"  {sum(self.censored.values())} outlier volume(s) censored in {len(self.censored)} run(s)")
        lines += [f"  ! {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class CacheIndex(Mapping):
    """Maps ``(subject, run)`` to its :class:`CachedRun`; also looks runs up by source path."""

    def __init__(
        self,
        root: str | os.PathLike,
        runs: Iterable[CachedRun],
        summary: CacheSummary | None = None,
    ):
        self.root = str(root)
        self._runs = {(r.subject, r.run): r for r in sorted(runs, key=lambda r: (r.subject, r.run))}
        self.summary = summary
        self._by_source: dict[str, CachedRun] = {}
        for r in self._runs.values():
            self._by_source[os.path.abspath(r.source)] = r
            self._by_source[os.path.realpath(r.source)] = r
            self._by_source[os.path.abspath(r.path)] = r

    def __getitem__(self, key: tuple[str | int, int]) -> CachedRun:
        subject, run = key
        return self._runs[(normalize_subject(subject), int(run))]

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self._runs)

    def __len__(self) -> int:
        return len(self._runs)

    def __repr__(self) -> str:
        return f"CacheIndex({self.root!r}, {len(self)} runs)"

    @property
    def nbytes(self) -> int:
        return sum(os.path.getsize(r.path) for r in self._runs.values())

    def find(self, path: str | os.PathLike) -> CachedRun | None:
        """The cached run made from source ``path`` (or stored at ``path``), else ``None``."""
        text = os.fspath(path)
        return self._by_source.get(os.path.abspath(text)) or self._by_source.get(
            os.path.realpath(text)
        )

    @classmethod
    def load(
        cls,
        out: str | os.PathLike,
        subjects: Iterable[str | int] | None = None,
        runs: Iterable[int] | None = None,
    ) -> CacheIndex:
        """Index a cache folder from its sidecars.

        Raises
        ------
        CacheError
            The folder has no complete run, a sidecar is from another cache format, a run's
            ``.npy`` is missing or has the wrong size, or runs were built with different
            parameters (one folder must hold one parameter set).
        """
        root = Path(out)
        if not root.is_dir():
            raise CacheError(
                "cache folder not found",
                root,
                fix="run monai_emotion.data.cache.prepare_cache first",
            )
        want_subjects = {normalize_subject(s) for s in subjects} if subjects is not None else None
        want_runs = {int(r) for r in runs} if runs is not None else None
        found: list[CachedRun] = []
        first_params: tuple[Path, dict] | None = None
        for sidecar in sorted(root.glob("sub-*_run-*.json")):
            meta = fileio.read_json(sidecar)
            if meta is None or "subject" not in meta:
                raise CacheError(
                    "unreadable cache sidecar", sidecar, fix="rerun prepare_cache on this folder"
                )
            store.check_format_version(meta, sidecar, allow_older=False)
            if want_subjects is not None and meta["subject"] not in want_subjects:
                continue
            if want_runs is not None and int(meta["run"]) not in want_runs:
                continue
            entry = CachedRun.from_sidecar(sidecar, meta)
            _check_npy(entry, meta)
            params = meta["fingerprint"]["params"]
            if first_params is None:
                first_params = (sidecar, params)
            elif params != first_params[1]:
                raise CacheError(
                    f"runs were cached with different parameters ({first_params[0].name} vs this one)",
                    sidecar,
                    fix="keep one cache folder per parameter set, or rerun prepare_cache for every run",
                )
            found.append(entry)
        if not found:
            raise CacheError(
                "no complete cached run in this folder",
                root,
                fix="run monai_emotion.data.cache.prepare_cache on it",
            )
        return cls(root, found)


def censored_frames(npy_path: str | os.PathLike) -> tuple[int, ...]:
    """The censored outlier volumes of the cached run stored at ``npy_path`` (from its sidecar)."""
    meta = fileio.read_json(Path(npy_path).with_suffix(".json"))
    if meta is None:
        raise CacheError("a cached run has no readable sidecar", npy_path, fix="rerun prepare_cache")
    return tuple(int(v) for v in (meta.get("censoring") or {}).get("volumes", []))


def _check_npy(entry: CachedRun, meta: dict[str, Any]) -> None:
    path = Path(entry.path)
    if not path.is_file() or path.stat().st_size != int(meta["nbytes"]):
        raise CacheError(
            "the cached frames are missing or have the wrong size for their sidecar",
            path,
            fix="rerun prepare_cache on this folder (it rebuilds the run)",
        )


def attach_cache(
    items: Iterable[Mapping[str, Any]],
    index: CacheIndex,
    *,
    key: str = "image",
    frame_key: str = "frame",
    source_key: str = "source_image",
    drop_censored: bool = True,
) -> list[dict[str, Any]]:
    """Point datalist items at their cached run.

    Each item's ``key`` (a source 4D NIfTI path) becomes the cached ``.npy`` path and the
    original path moves to ``source_key``. Items already pointing into the cache pass through.
    Items on a censored outlier volume (:attr:`CachedRun.censored`) are left out unless
    ``drop_censored`` is false: a model neither trains nor is scored on them.

    Raises
    ------
    CacheError
        An item's run is not in the cache.
    DataError
        An item's frame lies beyond its cached run (a run shorter than its labels).
    """
    out = []
    for i, item in enumerate(items):
        new = dict(item)
        entry = index.find(item[key])
        if entry is None:
            raise CacheError(
                f"item {i}: run {item[key]} is not in the cache ({len(index)} runs cached)",
                index.root,
                fix="run prepare_cache for this subject/run and image space, or pass the matching cache folder",
            )
        frame = int(item[frame_key])
        if not 0 <= frame < entry.n_volumes:
            raise DataError(
                f"item {i}: frame {frame} is beyond the cached run's {entry.n_volumes} volumes "
                f"(cache {entry.path}): a run shorter than its labels",
                entry.source,
                where=f"sub-{entry.subject} run {entry.run}",
                fix="build the datalist from the run's real length (discover_runs reports short runs), "
                "or rebuild the cache from the complete file",
            )
        if drop_censored and frame in entry.censored:
            continue
        if os.path.abspath(os.fspath(item[key])) != os.path.abspath(entry.path):
            new[source_key] = os.fspath(item[key])
        new[key] = entry.path
        out.append(new)
    return out


def prepare_cache(
    bids_root: str | os.PathLike,
    out: str | os.PathLike,
    spec: PreprocessingSpec | Mapping[str, Any] | None = None,
    *,
    space: str = "nonlinear",
    subjects: Iterable[str | int] | None = None,
    runs: Iterable[int] | None = None,
    shard: tuple[int, int] | None = None,
    expected_volumes: Sequence[int] | None = None,
    wait: bool = True,
    wait_timeout: float = 24 * 3600.0,
    progress: bool = True,
    **params: Any,
) -> CacheIndex:
    """Build (or reuse) the preprocessed float16 cache of the selected runs.

    Parameters
    ----------
    bids_root
        BIDS root of ds000113 (or a tree laid out the same way). Never written to.
    out
        Cache folder (created). One folder holds one parameter set.
    spec
        The preprocessing (:class:`~monai_emotion.data.cache.spec.PreprocessingSpec` or its
        dict); its fields may also be given as keywords (``downsample=1``), which override it.
        Masks are computed from all runs of a subject (all subjects for ``"group"``) whatever
        ``runs``/``subjects`` select, so caching more runs later keeps the same grid.
    space, subjects, runs
        What to cache, as for :func:`~monai_emotion.data.studyforrest.discover_runs`.
    expected_volumes
        Volumes per run for discovery's checks (default: the studyforrest counts).
    shard
        ``(rank, world_size)``: build only this rank's runs, then (``wait``) poll until the
        other ranks' runs are complete, up to ``wait_timeout`` seconds.
    progress
        tqdm bar per run and a printed summary.

    Returns
    -------
    CacheIndex
        The selected runs; ``index.summary`` is a :class:`CacheSummary`.
    """
    started = time.perf_counter()
    spec = PreprocessingSpec.from_dict(spec, **params)
    bids_root, out = Path(bids_root), Path(out)
    if out.resolve() == bids_root.resolve():
        raise ConfigError(
            "the cache folder must not be the BIDS root", out, fix="pass another output folder"
        )
    rank, world = (0, 1) if shard is None else (int(shard[0]), int(shard[1]))
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"shard={shard!r} must be (rank, world_size) with 0 <= rank < world_size")

    subject_list = [normalize_subject(s) for s in subjects] if subjects is not None else None
    lengths = {"expected_volumes": expected_volumes} if expected_volumes is not None else {}
    discovery = discover_runs(bids_root, space, subject_list, **lengths)
    spec = spec.resolved(len(discovery.subjects))  # "auto": the subject's own mask for one subject
    mask, mask_strategy = spec.mask, spec.mask_strategy
    discovery_all = discovery
    if mask is None and mask_strategy == "group" and subject_list is not None:
        # the group grid must not depend on the selection
        discovery_all = discover_runs(bids_root, space, **lengths)
    run_set = {int(r) for r in runs} if runs is not None else None
    selected = [r for r in discovery.runs if run_set is None or r.run in run_set]
    if not selected:
        raise DataError(
            f"no run to cache for subjects={subject_list} runs={sorted(run_set) if run_set else None}",
            bids_root,
            fix="check the selection and the image space",
        )

    params = spec.cache_params(space)
    out.mkdir(parents=True, exist_ok=True)
    builder = RunBuilder(out, bids_root, params, progress)
    summary = CacheSummary(out=str(out))
    summary.notes += discovery.problems
    user_mask = os.fspath(mask) if mask is not None else None

    plans = {(r.subject, r.run): builder.masks.plan(r, discovery_all, user_mask) for r in selected}
    coverage, prints = {}, {}
    for r in selected:
        key = (r.subject, r.run)
        coverage[key] = builder.masks.coverage_plan(r, plans[key])
        prints[key] = builder.fingerprint(r, plans[key], coverage[key])
    mine = selected[rank::world]
    for info in mine:
        key = (info.subject, info.run)
        reason = builder.status(info, prints[key])
        label = run_stem(info.subject, info.run)
        if reason is None:
            summary.reused.append(label)
            continue
        builder.build(info, plans[key], prints[key], summary.notes, coverage[key])
        summary.built.append(f"{label} ({reason})")

    others = [r for r in selected if r not in mine]
    if others and wait:
        _wait_for(builder, others, prints, wait_timeout, summary)
    entries = []
    for info in selected if (wait or world == 1) else mine:
        sidecar = out / f"{run_stem(info.subject, info.run)}.json"
        meta = fileio.read_json(sidecar)
        if meta is None:
            raise CacheError("sidecar vanished while indexing", sidecar, fix="rerun prepare_cache")
        entry = CachedRun.from_sidecar(sidecar, meta)
        _check_npy(entry, meta)
        entries.append(entry)
    summary.runs = len(entries)
    summary.censored = {run_stem(e.subject, e.run): len(e.censored) for e in entries if e.censored}
    summary.volumes = sum(e.n_volumes for e in entries)
    summary.bytes_on_disk = sum(os.path.getsize(e.path) for e in entries)
    summary.seconds = round(time.perf_counter() - started, 3)
    if rank == 0:
        fileio.atomic_write_text(
            out / "cache_summary.json", fileio.dumps({**summary.to_dict(), "params": params}), CacheError
        )
    if progress:
        print(summary, flush=True)
    return CacheIndex(out, entries, summary)


def _wait_for(
    builder: RunBuilder,
    runs: list[RunInfo],
    prints: dict[tuple[str, int], dict[str, Any]],
    timeout: float,
    summary: CacheSummary,
) -> None:
    deadline = time.monotonic() + timeout
    pending = list(runs)
    while pending:
        pending = [r for r in pending if builder.status(r, prints[(r.subject, r.run)]) is not None]
        if not pending:
            break
        if time.monotonic() > deadline:
            names = ", ".join(run_stem(r.subject, r.run) for r in pending[:8])
            raise CacheError(
                f"other ranks did not finish {len(pending)} run(s) within {timeout:.0f} s: {names}",
                builder.out,
                fix="check the other ranks' logs; rerun prepare_cache (finished runs are reused)",
            )
        time.sleep(_POLL_SECONDS)
    summary.waited += [run_stem(r.subject, r.run) for r in runs]
