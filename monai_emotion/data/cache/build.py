"""Building one cached run: mask plans, the streaming read, cleaning and the atomic write.

The policy (which runs, reuse, sharding) lives in :mod:`monai_emotion.data.cache`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

import monai_emotion
from monai_emotion import fileio
from monai_emotion.data.cache import clean, store, stream
from monai_emotion.data.cache.spec import downsample_factors
from monai_emotion.data.studyforrest import Discovery, RunInfo
from monai_emotion.errors import CacheError, ImageError

CACHE_FORMAT_VERSION = store.CACHE_FORMAT_VERSION
_READ_CHUNK = 16  # volumes per read: ~70 MB at full geometry, small next to one run
_WRITE_CHUNK = 32


def run_stem(subject: str, run: int) -> str:
    return f"sub-{subject}_run-{int(run):02d}"


def _grid(affine: Any) -> tuple[str, tuple[float, ...]]:
    matrix = np.asarray(affine, dtype=float)
    zooms = tuple(float(z) for z in np.sqrt((matrix[:3, :3] ** 2).sum(axis=0)))
    return "".join(nib.aff2axcodes(matrix)), zooms


def check_same_grid(path: str, affine: Any, ref_path: str, ref_affine: Any) -> None:
    """Refuse a run whose orientation or voxel size differs from the reference's (a run or mask).

    Voxel-wise masks and crops are only meaningful between images of one orientation and
    voxel size; positions may differ slightly (raw-space runs of two sessions do).

    Raises
    ------
    ImageError
        Naming ``path`` and the reference.
    """
    codes, zooms = _grid(affine)
    ref_codes, ref_zooms = _grid(ref_affine)
    fix = ("resample the run onto the others' grid (nilearn.image.resample_to_img), or copy the "
           "right file again; runs cached together must share one grid")
    if codes != ref_codes:
        raise ImageError(f"orientation {codes} differs from {ref_codes} of {ref_path}", path, fix=fix)
    if not np.allclose(zooms, ref_zooms, rtol=1e-3, atol=1e-4):
        shown = ", ".join(f"{z:.3g}" for z in zooms)
        ref_shown = ", ".join(f"{z:.3g}" for z in ref_zooms)
        raise ImageError(f"voxel size ({shown}) mm differs from ({ref_shown}) mm of {ref_path}",
                         path, fix=fix)


def _sha(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _stat_key(path: str) -> dict[str, Any]:
    st = fileio.source_stat(path)
    return {"realpath": st["realpath"], "size": st["size"], "mtime_ns": st["mtime_ns"]}


@dataclass
class MaskPlan:
    """Which mask a run uses, keyed by what it is computed from (cheap to know on every rank)."""

    name: str
    key: str
    contributors: list[RunInfo]
    user_path: str | None = None


class RunBuilder:
    """Builds runs into one cache folder: masks (computed once, kept in ``masks/``), reuse checks, runs."""

    def __init__(self, out: Path, bids_root: Path, params: dict[str, Any], progress: bool):
        self.out = out
        self.bids_root = bids_root
        self.params = params
        self.progress = progress
        self.masks_dir = out / "masks"
        self._mask_memo: dict[str, tuple[np.ndarray, np.ndarray, str, str]] = {}
        self._unsaved_masks: dict[str, tuple[Path, bytes, Path, dict[str, Any]]] = {}
        self._run_masks: dict[str, np.ndarray] = {}
        #: subject masks the group mask was combined from (saved with it)
        self._group_members: list[MaskPlan] = []

    # ---- masks
    def mask_plan(self, info: RunInfo, discovery_all: Discovery, user_mask: str | None) -> MaskPlan:
        p = self.params
        if user_mask is not None:
            return MaskPlan(
                "user_mask", _sha({"user": fileio.file_sha256(user_mask)}), [info], user_mask
            )
        if p["mask_strategy"] == "subject":
            return self.subject_plan(info.subject, discovery_all.by_subject()[info.subject])
        runs = discovery_all.runs
        key = _sha(
            {"group": p["group_threshold"], **self._mask_inputs(), "runs": [_stat_key(r.path) for r in runs]}
        )
        return MaskPlan("group_mask", key, runs)

    def subject_plan(self, subject: str, runs: list[RunInfo]) -> MaskPlan:
        """The subject's own brain mask: the EPI masks of its ``runs`` intersected."""
        key = _sha({"subject": subject, **self._mask_inputs(), "runs": [_stat_key(r.path) for r in runs]})
        return MaskPlan(f"sub-{subject}_mask", key, runs)

    def coverage_plan(self, info: RunInfo, mask: MaskPlan) -> MaskPlan | None:
        """The run's own brain mask, when the cache mask is not the subject's own (group or user).

        Under a group or user mask a subject's slab may miss some of the mask's voxels: there
        the source holds background, which per-voxel z-scoring would turn into noise that looks
        like signal. Those voxels are zero-filled, and the covered fraction is checked per run.
        """
        if mask.name == f"sub-{info.subject}_mask":
            return None
        key = _sha({"run": _stat_key(info.path), **self._mask_inputs()})
        return MaskPlan(f"{run_stem(info.subject, info.run)}_coverage", key, [info])

    def _mask_inputs(self) -> dict[str, Any]:
        return {k: self.params[k] for k in ("mask_volumes", "mask_options", "nonfinite")}

    def mask(self, plan: MaskPlan) -> tuple[np.ndarray, np.ndarray, str, str]:
        """(mask, affine, saved path, sha256), computed once and stored in masks/."""
        if plan.name in self._mask_memo:
            return self._mask_memo[plan.name]
        nii = self.masks_dir / f"{plan.name}.nii.gz"
        meta_path = self.masks_dir / f"{plan.name}.json"
        meta = fileio.read_json(meta_path)
        if meta is not None and meta.get("key") == plan.key and nii.is_file():
            img = nib.load(str(nii))
            mask = np.asarray(img.dataobj).astype(bool)
            if fileio.array_sha256(mask) == meta.get("sha256"):
                result = (mask, np.asarray(img.affine), str(nii), meta["sha256"])
                self._mask_memo[plan.name] = result
                return result
        ref = plan.contributors[0]
        affine = np.asarray(ref.affine, dtype=float)
        info: dict[str, Any] = {"key": plan.key, "name": plan.name}
        if plan.user_path is not None:
            mask = clean.load_user_mask(plan.user_path, ref.shape, affine, ref.path)
            info.update(
                strategy="user",
                source=os.path.abspath(plan.user_path),
                source_sha256=fileio.file_sha256(plan.user_path),
            )
        else:
            mask = self._computed_mask(plan, affine)
            info.update(
                strategy=self.params["mask_strategy"], runs=[r.path for r in plan.contributors]
            )
        import nilearn

        info.update(
            sha256=fileio.array_sha256(mask),
            n_voxels=int(mask.sum()),
            nilearn_version=nilearn.__version__,
        )
        img = nib.Nifti1Image(mask.astype(np.uint8), affine)
        img.header.set_xyzt_units("mm")
        # written with the first run that uses it (save_mask): a build that fails on its
        # first run leaves the output folder empty. mtime=0: equal inputs, equal bytes
        self._unsaved_masks[plan.name] = (
            nii, gzip.compress(img.to_bytes(), compresslevel=6, mtime=0), meta_path, info
        )
        result = (mask, affine, str(nii), info["sha256"])
        self._mask_memo[plan.name] = result
        return result

    def save_mask(self, plan: MaskPlan) -> None:
        """Write a mask computed by :meth:`mask` into ``masks/`` (once)."""
        if plan.name == "group_mask":
            for member in self._group_members:
                self.save_mask(member)
        pending = self._unsaved_masks.pop(plan.name, None)
        if pending is None:
            return
        nii, data, meta_path, info = pending
        self.masks_dir.mkdir(parents=True, exist_ok=True)
        fileio.atomic_write_bytes(nii, data, CacheError)
        fileio.atomic_write_text(meta_path, fileio.dumps(info), CacheError)

    def _computed_mask(self, plan: MaskPlan, affine: np.ndarray) -> np.ndarray:
        p = self.params
        shapes = {r.shape for r in plan.contributors}
        if len(shapes) > 1:
            raise ImageError(
                f"runs of different grids {sorted(shapes)} cannot share one mask",
                plan.contributors[0].path,
                fix="use an aligned space (nonlinear/linear), or one cache per grid with mask=PATH",
            )
        ref = plan.contributors[0]
        for other in plan.contributors[1:]:
            check_same_grid(other.path, other.affine, ref.path, ref.affine)
        if plan.name == "group_mask":
            by_subject: dict[str, list[RunInfo]] = {}
            for info in plan.contributors:
                by_subject.setdefault(info.subject, []).append(info)
            subject_masks = []
            for subject, runs in by_subject.items():
                sub_plan = self.subject_plan(subject, runs)
                subject_masks.append(self.mask(sub_plan)[0])
                self._group_members.append(sub_plan)
            return clean.combine_masks(subject_masks, p["group_threshold"], affine)
        run_masks = []
        bar = tqdm(
            plan.contributors,
            desc=f"{plan.name} (mean of first volumes)",
            disable=not self.progress,
            leave=False,
        )
        for info in bar:
            run_masks.append(self._run_mask(info, affine))
        return clean.combine_masks(run_masks, 1.0, affine)

    def _run_mask(self, info: RunInfo, affine: np.ndarray) -> np.ndarray:
        """EPI mask of one run's mean first volumes (memoised: subject and coverage masks share it)."""
        if info.path not in self._run_masks:
            p = self.params
            reader = stream.SourceReader(info.path, p["nonfinite"])
            total = np.zeros(reader.shape, dtype=np.float64)
            n = 0
            for _t0, vols in reader.chunks(_READ_CHUNK, stop=p["mask_volumes"]):
                total += vols.sum(axis=0, dtype=np.float64)
                n += vols.shape[0]
            self._run_masks[info.path] = clean.epi_mask(total / n, affine, info.path, p["mask_options"])
        return self._run_masks[info.path]

    def _coverage(
        self, info: RunInfo, src_mask: np.ndarray, grid: clean.Grid, coverage: MaskPlan | None
    ) -> tuple[np.ndarray | None, dict[str, Any]]:
        """Stored-grid voxels the run covers (``None``: all), and the record of it.

        Raises :class:`ImageError` naming the run when it covers less than ``min_coverage`` of
        the mask: a run in another space or a cut-off slab, never silently zero-filled.
        """
        if coverage is None:
            return None, {"fraction": 1.0, "mask": None, "zeroed_voxels": 0}
        own, _affine, own_path, _sha256 = self.mask(coverage)
        if own.shape != src_mask.shape:
            raise ImageError(f"run grid {own.shape} differs from the mask grid {src_mask.shape}", info.path,
                             fix="all runs cached together must share one voxel grid")
        inside = own & src_mask
        fraction = float(inside.sum()) / float(src_mask.sum())
        minimum = float(self.params["min_coverage"])
        if fraction < minimum:
            raise ImageError(
                f"sub-{info.subject} run {info.run} covers {fraction:.0%} of the mask's voxels "
                f"(at least {minimum:.0%} needed; its own brain mask: {own_path})",
                info.path,
                fix="check that the run is in the same space as the mask (resample it into that space), "
                "or lower preprocessing min_coverage if a partial slab is intended",
            )
        # a stored voxel counts as covered when at least half of its block's mask voxels are
        in_block = grid.extract(inside[None].astype(np.float32))[0]
        covered = in_block >= 0.5 * grid.extract(src_mask[None].astype(np.float32))[0]
        zeroed = int((grid.mask & ~covered).sum())
        return covered, {"fraction": round(fraction, 6), "min_fraction": minimum, "mask": own_path,
                         "zeroed_voxels": zeroed}

    # ---- runs
    def fingerprint(self, info: RunInfo, plan: MaskPlan, coverage: MaskPlan | None = None) -> dict[str, Any]:
        confound_file = None
        if self.params["confounds"] == "motion":
            confound_file = clean.find_motion_file(
                info.path, str(self.bids_root), info.subject, info.run
            )
        return {
            "format_version": CACHE_FORMAT_VERSION,
            "source": _stat_key(info.path),
            "params": self.params,
            "mask_key": plan.key,
            "coverage_key": coverage.key if coverage is not None else None,
            "confounds_file": _stat_key(confound_file) if confound_file else None,
        }

    def status(self, info: RunInfo, fingerprint: dict[str, Any]) -> str | None:
        """``None`` when the cached run is reusable, else why it must be (re)built."""
        sidecar = self.out / f"{run_stem(info.subject, info.run)}.json"
        meta = fileio.read_json(sidecar)
        if meta is None:
            return "not cached"
        store.check_format_version(meta, sidecar, allow_older=True)
        if meta.get("format_version") != CACHE_FORMAT_VERSION:
            return f"cache format {meta.get('format_version')} -> {CACHE_FORMAT_VERSION}"
        old = meta.get("fingerprint", {})
        for part in ("source", "params", "mask_key", "coverage_key", "confounds_file"):
            if old.get(part) != fingerprint[part]:
                return {
                    "source": "source file changed",
                    "params": "parameters changed",
                    "mask_key": "mask inputs changed",
                    "coverage_key": "coverage mask inputs changed",
                    "confounds_file": "confound file changed",
                }[part]
        npy = self.out / meta.get("file", "")
        if not npy.is_file() or npy.stat().st_size != int(meta.get("nbytes", -1)):
            return "frames file missing or wrong size"
        return None

    def build(
        self, info: RunInfo, plan: MaskPlan, fingerprint: dict[str, Any], notes: list[str],
        coverage: MaskPlan | None = None,
    ) -> None:
        p = self.params
        started = time.perf_counter()
        stem = run_stem(info.subject, info.run)
        npy, sidecar = self.out / f"{stem}.npy", self.out / f"{stem}.json"
        # the old sidecar goes first: from here on nothing under the final names is trusted
        if sidecar.exists():
            sidecar.unlink()
            fileio.fsync_dir(self.out)
        fileio.remove_stale_temporaries(npy)
        fileio.remove_stale_temporaries(sidecar)

        src_mask, mask_affine, mask_path, mask_sha = self.mask(plan)
        check_same_grid(info.path, info.affine, mask_path, mask_affine)
        factor = downsample_factors(p["downsample"], p["target_voxel_mm"], info.zooms)
        grid = clean.make_grid(src_mask, np.asarray(info.affine), margin=p["margin"], factor=factor)
        covered, coverage_info = self._coverage(info, src_mask, grid, coverage)
        reader = stream.SourceReader(info.path, p["nonfinite"])
        if reader.shape != src_mask.shape:
            raise ImageError(
                f"run grid {reader.shape} differs from the mask grid {src_mask.shape} ({mask_path})",
                info.path,
                fix="all runs cached together must share one voxel grid",
            )
        n_t = reader.n_volumes
        confounds, confound_note = None, None
        if p["confounds"] == "motion":
            cfile = fingerprint["confounds_file"] and fingerprint["confounds_file"]["realpath"]
            if cfile:
                confounds = clean.load_confounds(cfile, n_t, info.path)
            else:
                confound_note = (
                    f"sub-{info.subject} run {info.run}: no motion file found, motion not regressed"
                )
                notes.append(confound_note)

        flat_mask = np.flatnonzero(grid.mask.ravel())
        direct = grid.factor == (1, 1, 1) and min(grid.lo) >= 0
        if direct:
            # gather straight from the raw F-ordered volume: one copy per chunk, no crop temporaries
            xs, ys, zs = np.unravel_index(flat_mask, grid.shape)
            nx, ny, _nz = reader.shape
            src_idx = (xs + grid.lo[0]) + nx * ((ys + grid.lo[1]) + ny * (zs + grid.lo[2]))
        data = np.empty((n_t, flat_mask.size), dtype=np.float32)
        native = reader.dtype == np.dtype(np.float32)
        gather = None if native else np.empty((_READ_CHUNK, flat_mask.size), dtype=reader.dtype)
        bar = tqdm(
            total=n_t,
            desc=f"sub-{info.subject} run-{info.run:02d}",
            unit="vol",
            disable=not self.progress,
        )
        for t0, vols in reader.chunks(_READ_CHUNK, raw=direct):
            n = vols.shape[0]
            rows = data[t0 : t0 + n]
            if direct:
                # gather the mask's voxels from the raw F-ordered volumes, then scale only those
                flat = vols.transpose(0, 3, 2, 1).reshape(n, -1)
                if gather is None:
                    np.take(flat, src_idx, axis=1, out=rows, mode="clip")
                else:
                    np.take(flat, src_idx, axis=1, out=gather[:n], mode="clip")
                    np.copyto(rows, gather[:n], casting="unsafe")
                reader.scale(rows)
                if reader.dtype.kind == "f":
                    reader.check_finite(rows, t0, columns=src_idx)
            else:
                rows[:] = grid.extract(vols).reshape(n, -1)[:, flat_mask]
            bar.update(n)
        bar.set_postfix_str("cleaning")
        basis = clean.design_basis(
            n_t,
            info.tr,
            detrend=p["detrend"],
            standardize=p["standardize"],
            high_pass=p["high_pass"],
            confounds=confounds,
        )
        n_zero, peak = clean.clean_inplace(data, basis, standardize=p["standardize"])
        if covered is not None:
            data[:, ~covered.ravel()[flat_mask]] = 0.0
        if peak > float(np.finfo(np.float16).max):
            raise ImageError(
                f"values up to {peak:g} do not fit the cache's float16 (max 65504)",
                info.path,
                fix="keep standardize=True (z-scores), or rescale the data",
            )
        bar.set_postfix_str("writing")
        import torch  # its float32 -> float16 cast is several times faster than numpy's

        with store.AtomicNpyWriter(npy, (n_t, *grid.shape), np.float16) as writer:
            frames = np.zeros((_WRITE_CHUNK, *grid.shape), dtype=np.float16)
            flat_frames = frames.reshape(_WRITE_CHUNK, -1)
            half = np.empty((_WRITE_CHUNK, flat_mask.size), dtype=np.float16)
            for t0 in range(0, n_t, _WRITE_CHUNK):
                n = min(_WRITE_CHUNK, n_t - t0)
                torch.from_numpy(half[:n]).copy_(torch.from_numpy(data[t0 : t0 + n]))
                for i in range(n):  # 1-D fancy assignment per frame: twice as fast as 2-D
                    flat_frames[i][flat_mask] = half[i]
                _write_frames(writer, frames[:n])
            writer.commit()
        bar.close()
        self.save_mask(plan)
        if coverage is not None:
            self.save_mask(coverage)
        del data
        zooms = [float(np.linalg.norm(grid.affine[:3, i])) for i in range(3)]
        meta = {
            "format_version": CACHE_FORMAT_VERSION,
            "package_version": monai_emotion.__version__,
            "subject": info.subject,
            "run": info.run,
            "file": npy.name,
            "dtype": "float16",
            "layout": "frame-major (T, X, Y, Z), C order",
            "shape": [n_t, *grid.shape],
            "nbytes": writer.nbytes,
            "affine": grid.affine.tolist(),
            "voxel_mm": zooms,
            "tr": info.tr,
            "source": {
                **fileio.source_stat(info.path),
                "shape": list(reader.shape),
                "affine": np.asarray(info.affine).tolist(),
            },
            "crop": {"lo": list(grid.lo), "hi": list(grid.hi), "downsample": list(grid.factor)},
            "mask": {
                "path": mask_path,
                "sha256": mask_sha,
                "key": plan.key,
                "n_voxels_stored_grid": int(flat_mask.size),
            },
            "confounds": {
                "kind": p["confounds"],
                "file": fingerprint["confounds_file"],
                "note": confound_note,
                "columns": 0 if confounds is None else int(confounds.shape[1]),
            },
            "coverage": coverage_info,
            "cleaning": {
                "regressors": int(basis.shape[1]),
                "zero_variance_voxels": n_zero,
                "nonfinite_replaced": reader.n_nonfinite,
            },
            "fingerprint": fingerprint,
            "build_seconds": round(time.perf_counter() - started, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        fileio.atomic_write_text(sidecar, fileio.dumps(meta), CacheError)


def _write_frames(writer: store.AtomicNpyWriter, frames: np.ndarray) -> None:
    # one function so tests can inject a crash in the middle of writing a run
    writer.write(frames)
