"""Brain masks of the cache: planned from their inputs, computed once, stored in ``masks/``.

A mask is known by a key over everything it is computed from (the runs' identities and the
mask parameters), so every rank of a distributed build can plan without reading data. The
subject mask intersects its runs' EPI masks (nilearn ``compute_epi_mask`` on the mean of the
first volumes); the group mask combines the subject masks; under a group or user mask each
run also gets its own coverage mask, so that voxels a subject's slab misses are zero-filled
rather than z-scored background.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from monai_emotion import fileio
from monai_emotion.data.cache import clean, stream
from monai_emotion.data.cache.store import run_stem
from monai_emotion.data.studyforrest import Discovery, RunInfo
from monai_emotion.errors import CacheError, ImageError

__all__ = ["MaskPlan", "MaskStore", "check_same_grid", "stat_key"]

_READ_CHUNK = 16  # volumes per read while averaging the first volumes of a run


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


def stat_key(path: str) -> dict[str, Any]:
    st = fileio.source_stat(path)
    return {"realpath": st["realpath"], "size": st["size"], "mtime_ns": st["mtime_ns"]}


@dataclass
class MaskPlan:
    """Which mask a run uses, keyed by what it is computed from (cheap to know on every rank)."""

    name: str
    key: str
    contributors: list[RunInfo]
    user_path: str | None = None


class MaskStore:
    """The masks of one cache folder: planning, computing (memoised), saving and coverage."""

    def __init__(self, folder: Path, params: dict[str, Any], progress: bool):
        self.folder = folder
        self.params = params
        self.progress = progress
        self._memo: dict[str, tuple[np.ndarray, np.ndarray, str, str]] = {}
        self._unsaved: dict[str, tuple[Path, bytes, Path, dict[str, Any]]] = {}
        self._run_masks: dict[str, np.ndarray] = {}
        #: subject masks the group mask was combined from (saved with it)
        self._group_members: list[MaskPlan] = []

    def plan(self, info: RunInfo, discovery_all: Discovery, user_mask: str | None) -> MaskPlan:
        p = self.params
        if user_mask is not None:
            return MaskPlan(
                "user_mask", _sha({"user": fileio.file_sha256(user_mask)}), [info], user_mask
            )
        if p["mask_strategy"] == "subject":
            return self.subject_plan(info.subject, discovery_all.by_subject()[info.subject])
        runs = discovery_all.runs
        key = _sha(
            {"group": p["group_threshold"], **self._mask_inputs(), "runs": [stat_key(r.path) for r in runs]}
        )
        return MaskPlan("group_mask", key, runs)

    def subject_plan(self, subject: str, runs: list[RunInfo]) -> MaskPlan:
        """The subject's own brain mask: the EPI masks of its ``runs`` intersected."""
        key = _sha({"subject": subject, **self._mask_inputs(), "runs": [stat_key(r.path) for r in runs]})
        return MaskPlan(f"sub-{subject}_mask", key, runs)

    def coverage_plan(self, info: RunInfo, mask: MaskPlan) -> MaskPlan | None:
        """The run's own brain mask, when the cache mask is not the subject's own (group or user).

        Under a group or user mask a subject's slab may miss some of the mask's voxels: there
        the source holds background, which per-voxel z-scoring would turn into noise that looks
        like signal. Those voxels are zero-filled, and the covered fraction is checked per run.
        """
        if mask.name == f"sub-{info.subject}_mask":
            return None
        key = _sha({"run": stat_key(info.path), **self._mask_inputs()})
        return MaskPlan(f"{run_stem(info.subject, info.run)}_coverage", key, [info])

    def _mask_inputs(self) -> dict[str, Any]:
        return {k: self.params[k] for k in ("mask_volumes", "mask_options", "nonfinite")}

    def get(self, plan: MaskPlan) -> tuple[np.ndarray, np.ndarray, str, str]:
        """(mask, affine, saved path, sha256), computed once and stored in masks/."""
        if plan.name in self._memo:
            return self._memo[plan.name]
        nii = self.folder / f"{plan.name}.nii.gz"
        meta_path = self.folder / f"{plan.name}.json"
        meta = fileio.read_json(meta_path)
        if meta is not None and meta.get("key") == plan.key and nii.is_file():
            img = nib.load(str(nii))
            mask = np.asarray(img.dataobj).astype(bool)
            if fileio.array_sha256(mask) == meta.get("sha256"):
                result = (mask, np.asarray(img.affine), str(nii), meta["sha256"])
                self._memo[plan.name] = result
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
        self._unsaved[plan.name] = (
            nii, gzip.compress(img.to_bytes(), compresslevel=6, mtime=0), meta_path, info
        )
        result = (mask, affine, str(nii), info["sha256"])
        self._memo[plan.name] = result
        return result

    def save(self, plan: MaskPlan) -> None:
        """Write a mask computed by :meth:`mask` into ``masks/`` (once)."""
        if plan.name == "group_mask":
            for member in self._group_members:
                self.save(member)
        pending = self._unsaved.pop(plan.name, None)
        if pending is None:
            return
        nii, data, meta_path, info = pending
        self.folder.mkdir(parents=True, exist_ok=True)
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
                subject_masks.append(self.get(sub_plan)[0])
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

    def coverage(
        self, info: RunInfo, src_mask: np.ndarray, grid: clean.Grid, coverage: MaskPlan | None
    ) -> tuple[np.ndarray | None, dict[str, Any]]:
        """Stored-grid voxels the run covers (``None``: all), and the record of it.

        Raises :class:`ImageError` naming the run when it covers less than ``min_coverage`` of
        the mask: a run in another space or a cut-off slab, never silently zero-filled.
        """
        if coverage is None:
            return None, {"fraction": 1.0, "mask": None, "zeroed_voxels": 0}
        own, _affine, own_path, _sha256 = self.get(coverage)
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
