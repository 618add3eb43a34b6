"""Building one cached run: mask plans, the streaming read, cleaning and the atomic write.

The policy (which runs, reuse, sharding) lives in :mod:`monai_emotion.data.cache`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import monai_emotion
from monai_emotion import fileio
from monai_emotion.data.cache import clean, outliers, store, stream
from monai_emotion.data.cache.masks import MaskPlan, MaskStore, check_same_grid, stat_key
from monai_emotion.data.cache.spec import downsample_factors
from monai_emotion.data.cache.store import run_stem
from monai_emotion.data.studyforrest import RunInfo
from monai_emotion.errors import CacheError, ImageError

CACHE_FORMAT_VERSION = store.CACHE_FORMAT_VERSION
_READ_CHUNK = 16  # volumes per read: ~70 MB at full geometry, small next to one run
_WRITE_CHUNK = 32


class RunBuilder:
    """Builds runs into one cache folder: reuse checks, then source -> cleaned float16 frames."""

    def __init__(self, out: Path, bids_root: Path, params: dict[str, Any], progress: bool):
        self.out = out
        self.bids_root = bids_root
        self.params = params
        self.progress = progress
        self.masks = MaskStore(out / "masks", params, progress)

    def needs_motion(self) -> bool:
        """Whether runs need their motion file: motion regressors, or framewise displacement."""
        return self.params["confounds"] == "motion" or self.params.get("fd_threshold") is not None

    def fingerprint(self, info: RunInfo, plan: MaskPlan, coverage: MaskPlan | None = None) -> dict[str, Any]:
        confound_file = None
        if self.needs_motion():
            confound_file = clean.find_motion_file(
                info.path, str(self.bids_root), info.subject, info.run
            )
        return {
            "format_version": CACHE_FORMAT_VERSION,
            "source": stat_key(info.path),
            "params": self.params,
            "mask_key": plan.key,
            "coverage_key": coverage.key if coverage is not None else None,
            "confounds_file": stat_key(confound_file) if confound_file else None,
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

        src_mask, mask_affine, mask_path, mask_sha = self.masks.get(plan)
        check_same_grid(info.path, info.affine, mask_path, mask_affine)
        factor = downsample_factors(p["downsample"], p["target_voxel_mm"], info.zooms)
        grid = clean.make_grid(src_mask, np.asarray(info.affine), margin=p["margin"], factor=factor)
        covered, coverage_info = self.masks.coverage(info, src_mask, grid, coverage)
        reader = stream.SourceReader(info.path, p["nonfinite"])
        if reader.shape != src_mask.shape:
            raise ImageError(
                f"run grid {reader.shape} differs from the mask grid {src_mask.shape} ({mask_path})",
                info.path,
                fix="all runs cached together must share one voxel grid",
            )
        n_t = reader.n_volumes
        motion, confound_note = None, None
        if self.needs_motion():
            cfile = fingerprint["confounds_file"] and fingerprint["confounds_file"]["realpath"]
            if cfile:
                motion = clean.load_confounds(cfile, n_t, info.path)
            elif p["confounds"] == "motion":
                confound_note = (
                    f"sub-{info.subject} run {info.run}: no motion file found, motion not regressed"
                )
                notes.append(confound_note)
        confounds = motion if p["confounds"] == "motion" else None

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
        keep, censoring = None, None
        if p.get("outliers") == "censor":
            columns = None if covered is None else np.flatnonzero(covered.ravel()[flat_mask])
            found = outliers.find_outliers(data, motion if motion is not None and motion.shape[1] == 6 else None,
                                           dvars_threshold=p["dvars_threshold"], fd_threshold=p["fd_threshold"],
                                           columns=columns)
            censoring = found.record()
            if len(found.volumes) > outliers.MAX_CENSORED_FRACTION * n_t:
                raise ImageError(
                    f"{len(found.volumes)} of {n_t} volumes are outliers (relative DVARS > {p['dvars_threshold']} "
                    f"or framewise displacement > {p['fd_threshold']} mm): the run cannot be cleaned",
                    info.path,
                    fix="check the motion file's units (mm and radians) and the run; raise "
                    "data#preprocessing#dvars_threshold / fd_threshold, or set outliers to 'none'",
                )
            if found.volumes:
                keep = np.ones(n_t, dtype=bool)
                keep[list(found.volumes)] = False
                data[~keep] = 0.0  # out of the regression and the z-scores; stored as zero frames
                notes.append(f"sub-{info.subject} run {info.run}: {len(found.volumes)} outlier volume(s) "
                             f"censored {list(found.volumes)}")
        basis = clean.design_basis(
            n_t,
            info.tr,
            detrend=p["detrend"],
            standardize=p["standardize"],
            high_pass=p["high_pass"],
            confounds=confounds,
            sample_mask=keep,
        )
        n_zero, peak = clean.clean_inplace(data, basis, standardize=p["standardize"],
                                           n_samples=None if keep is None else int(keep.sum()))
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
        self.masks.save(plan)
        if coverage is not None:
            self.masks.save(coverage)
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
            "censoring": censoring,
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
