"""Preprocessing cache: correctness, grid, reuse/rebuild, crash safety, clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nifti_helpers import AFFINE, SHAPE, T, save_nifti, save_run

from monai_emotion.data import cache as cache_mod
from monai_emotion.data.cache import CacheIndex, attach_cache, prepare_cache
from monai_emotion.data.cache import build as cache_build
from monai_emotion.data.studyforrest import bold_path
from monai_emotion.errors import CacheError, DataError, ImageError

BOX = (slice(3, 17), slice(4, 20), slice(2, 8))
# tiny images: compute_epi_mask's default opening (2) would erode a 6-voxel slab away
MASK_OPTS = {"opening": 1}


def write_run(
    root: Path,
    subject: str,
    run: int,
    seed: int,
    n: int = T,
    nan_at: int | None = None,
    dtype: type = np.float32,
) -> Path:
    rng = np.random.default_rng(seed)
    data = np.zeros((*SHAPE, n), dtype=np.float32)
    inside = data[BOX]
    inside[:] = 1000 + 20 * rng.standard_normal(inside.shape) + np.linspace(0, 40, n)
    # a constant voxel (source voxel (8, 9, 5)): zero variance after detrending
    inside[5, 5, 3] = 1000.0
    if nan_at is not None:
        data[5, 6, 3, nan_at] = np.nan
    return save_run(root, subject, run, data, dtype=dtype)  # int16: a scl_slope, as scanners write


@pytest.fixture
def bids(tmp_path: Path) -> Path:
    root = tmp_path / "bids"
    for i, run in enumerate((1, 2)):
        write_run(root, "01", run, seed=i)
    return root


def build(bids: Path, out: Path, **kw) -> CacheIndex:
    kw.setdefault("mask_options", MASK_OPTS)
    kw.setdefault("mask_volumes", 10)
    # the checks below were written for full-resolution, per-subject grids
    kw.setdefault("downsample", 1)
    kw.setdefault("mask_strategy", "subject")
    kw.setdefault("progress", False)
    return prepare_cache(bids, out, **kw)


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def reference_clean(series: np.ndarray) -> np.ndarray:
    """Independent reference: linear detrend then z-score (ddof=0) along the last axis."""
    t = np.arange(series.shape[-1], dtype=float)
    design = np.column_stack([np.ones_like(t), t])
    flat = series.reshape(-1, series.shape[-1]).astype(float)
    beta, *_ = np.linalg.lstsq(design, flat.T, rcond=None)
    resid = flat - (design @ beta).T
    sd = resid.std(axis=1, keepdims=True)
    out = np.divide(
        resid,
        sd,
        out=np.zeros_like(resid),
        where=sd > 1e-6 * np.abs(flat).mean(axis=1, keepdims=True),
    )
    return out.reshape(series.shape)


def test_cached_frames_equal_cleaned_data_and_grid_is_consistent(
    bids: Path, tmp_path: Path
) -> None:
    before = tree_hashes(bids)
    index = build(bids, tmp_path / "cache")
    entry = index[("01", 1)]
    meta = json.loads(Path(entry.sidecar).read_text())
    frames = np.load(entry.path, mmap_mode="r")
    assert frames.dtype == np.float16 and frames.shape == (T, *entry.frame_shape)
    assert frames.flags.c_contiguous and np.isfinite(frames).all()

    src = nib.load(entry.source).get_fdata(dtype=np.float32)
    mask = nib.load(meta["mask"]["path"]).get_fdata() > 0
    assert mask[BOX].mean() > 0.9 and not mask[0, 0, 0] and mask[8, 9, 5]
    expected = reference_clean(src) * mask[..., None]
    lo = meta["crop"]["lo"]
    # every source voxel's world coordinate maps to the cached voxel holding its cleaned series
    src_aff, cache_aff = nib.load(entry.source).affine, np.asarray(entry.affine)
    for ijk in [(5, 6, 3), (3, 4, 2), (16, 19, 7), (10, 10, 5)]:
        world = src_aff @ [*ijk, 1]
        cached = np.rint(np.linalg.solve(cache_aff, world)[:3]).astype(int)
        assert tuple(cached) == tuple(np.subtract(ijk, lo))
        np.testing.assert_allclose(
            frames[:, cached[0], cached[1], cached[2]], expected[ijk], atol=4e-3, rtol=2e-3
        )
    box = tuple(slice(a, a + s) for a, s in zip(lo, entry.frame_shape, strict=True))
    np.testing.assert_allclose(frames, np.moveaxis(expected[box], -1, 0), atol=4e-3, rtol=2e-3)
    # the constant voxel is 0, not NaN; in-mask voxels are z-scores
    assert np.all(frames[:, 8 - lo[0], 9 - lo[1], 5 - lo[2]] == 0)
    assert meta["cleaning"]["zero_variance_voxels"] >= 1
    assert abs(float(frames[:, 10 - lo[0], 10 - lo[1], 5 - lo[2]].astype(float).std()) - 1) < 1e-2
    assert meta["package_version"] and meta["format_version"] == cache_mod.CACHE_FORMAT_VERSION
    assert meta["mask"]["sha256"] and Path(meta["mask"]["path"]).is_file()
    assert tree_hashes(bids) == before


def test_downsample_block_average_and_affine(bids: Path, tmp_path: Path) -> None:
    index = build(bids, tmp_path / "ds2", downsample=2)
    entry = index[("01", 1)]
    meta = json.loads(Path(entry.sidecar).read_text())
    frames = np.load(entry.path)
    lo = np.array(meta["crop"]["lo"])
    src = nib.load(entry.source)
    data = src.get_fdata(dtype=np.float32)
    cached = np.array([4, 4, 2])
    fine = lo + 2 * cached
    block = data[fine[0] : fine[0] + 2, fine[1] : fine[1] + 2, fine[2] : fine[2] + 2].mean(
        axis=(0, 1, 2)
    )
    np.testing.assert_allclose(frames[:, 4, 4, 2], reference_clean(block), atol=4e-3, rtol=2e-3)
    centre = np.asarray(entry.affine) @ [*cached, 1]
    corners = [src.affine @ [*(fine + d), 1] for d in np.ndindex(2, 2, 2)]
    np.testing.assert_allclose(centre, np.mean(corners, axis=0), atol=1e-6)
    assert meta["voxel_mm"] == pytest.approx([2.4, 2.4, 2.4], abs=1e-5)
    index_mm = build(bids, tmp_path / "mm", target_voxel_mm=2.4)
    assert index_mm[("01", 1)].frame_shape == entry.frame_shape


def test_reuse_then_rebuild_on_parameter_or_source_change(bids: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    first = build(bids, out)
    assert len(first.summary.built) == 2
    stamp = os.stat(first[("01", 1)].sidecar).st_mtime_ns
    again = build(bids, out)
    assert again.summary.built == [] and len(again.summary.reused) == 2
    assert os.stat(again[("01", 1)].sidecar).st_mtime_ns == stamp
    changed = build(bids, out, detrend=False)
    assert len(changed.summary.built) == 2 and "parameters changed" in changed.summary.built[0]
    # a source that changes also changes the subject mask's inputs: both runs are rebuilt
    src = bold_path(bids, "01", 2)
    os.utime(src, ns=(os.stat(src).st_atime_ns, os.stat(src).st_mtime_ns + 10**9))
    after = build(bids, out, detrend=False)
    assert sorted(b.split()[0] for b in after.summary.built) == ["sub-01_run-01", "sub-01_run-02"]
    assert any("source file changed" in b for b in after.summary.built)


def test_user_mask_only_changed_run_rebuilt_and_wrong_shape_rejected(
    bids: Path, tmp_path: Path
) -> None:
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[BOX] = 1
    mask_path = tmp_path / "mask.nii.gz"
    save_nifti(mask_path, mask, AFFINE)
    out = tmp_path / "cache"
    index = build(bids, out, mask=mask_path)
    assert index[("01", 1)].frame_shape == (14 + 4, 16 + 4, 10)  # box + margin 2, clipped in z
    src = bold_path(bids, "01", 2)
    os.utime(src, ns=(os.stat(src).st_atime_ns, os.stat(src).st_mtime_ns + 10**9))
    again = build(bids, out, mask=mask_path)
    assert [b.split()[0] for b in again.summary.built] == ["sub-01_run-02"]

    bad = tmp_path / "bad_mask.nii.gz"
    save_nifti(bad, np.ones((10, 10, 10), np.uint8), AFFINE)
    with pytest.raises(ImageError, match=r"bad_mask\.nii\.gz.*shape"):
        build(bids, tmp_path / "other", mask=bad)


def test_exception_mid_write_leaves_no_final_file(bids: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "cache"
    calls = {"n": 0}
    real = cache_build._write_frames

    def crash_after_first(writer, frames):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full (injected)")
        real(writer, frames)

    monkeypatch.setattr(cache_build, "_WRITE_CHUNK", 8)
    monkeypatch.setattr(cache_build, "_write_frames", crash_after_first)
    with pytest.raises(RuntimeError, match="injected"):
        build(bids, out, runs=[1])
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == []
    with pytest.raises(CacheError):
        CacheIndex.load(out)
    monkeypatch.setattr(cache_build, "_write_frames", real)
    index = build(bids, out, runs=[1])
    assert index.summary.built and np.isfinite(index[("01", 1)].open()).all()


def test_sigkill_mid_write_never_publishes_and_next_call_rebuilds(
    bids: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import os, signal
        from monai_emotion.data import cache as c
        from monai_emotion.data.cache import build as b
        b._WRITE_CHUNK = 8
        real = b._write_frames
        n = [0]
        def die(writer, frames):
            n[0] += 1
            if n[0] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            real(writer, frames)
        b._write_frames = die
        c.prepare_cache({str(bids)!r}, {str(out)!r}, runs=[1], mask_volumes=10, downsample=1,
                        mask_options={{"opening": 1}}, progress=False)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    names = sorted(p.name for p in out.iterdir() if p.is_file())
    assert not any(n in ("sub-01_run-01.npy", "sub-01_run-01.json") for n in names)
    assert any(n.startswith(".sub-01_run-01.npy.tmp-") for n in names)
    index = build(bids, out, runs=[1])
    assert index.summary.built
    assert not [p for p in out.iterdir() if p.name.startswith(".sub-01_run-01.npy.tmp-")]


def test_nan_input_is_a_clear_error_or_documented_cleaning(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    write_run(root, "01", 1, seed=0, nan_at=17)
    for mask_volumes in (None, 10):  # caught by the mask pass, or by the main pass
        with pytest.raises(ImageError) as err:
            build(root, tmp_path / "cache", mask_volumes=mask_volumes)
        text = str(err.value)
        assert "run-01_bold.nii.gz" in text and "volume 17" in text and "fix:" in text
        assert "voxel (5, 6, 3)" in text
    assert not (tmp_path / "cache" / "sub-01_run-01.npy").exists()
    index = build(root, tmp_path / "cache", nonfinite="zero")
    meta = json.loads(Path(index[("01", 1)].sidecar).read_text())
    assert meta["cleaning"]["nonfinite_replaced"] == 1
    assert np.isfinite(index[("01", 1)].open()).all()


def test_incompatible_format_version(bids: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    index = build(bids, out)
    sidecar = Path(index[("01", 1)].sidecar)
    meta = json.loads(sidecar.read_text())
    meta["format_version"] = 0
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CacheError, match=r"sub-01_run-01\.json.*format 0"):
        CacheIndex.load(out)
    rebuilt = build(bids, out)  # older formats are rebuilt in place
    assert [b.split()[0] for b in rebuilt.summary.built] == ["sub-01_run-01"]
    assert len(CacheIndex.load(out)) == 2
    meta["format_version"] = 99
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CacheError, match="format 99"):
        build(bids, out)


def test_attach_cache_maps_items_and_rejects_short_runs(bids: Path, tmp_path: Path) -> None:
    index = build(bids, tmp_path / "cache")
    src = str(bold_path(bids, "01", 2))
    items = [{"image": src, "frame": 4, "label": 1, "subject": "01", "run": 2, "movie_time": 894.0}]
    [item] = attach_cache(items, index)
    assert (
        item["image"] == index[("01", 2)].path
        and item["source_image"] == src
        and item["label"] == 1
    )
    assert attach_cache([item], CacheIndex.load(tmp_path / "cache"))[0]["image"] == item["image"]
    with pytest.raises(DataError, match="shorter than its labels") as err:
        attach_cache([{**items[0], "frame": T}], index)
    assert "run-02_bold.nii.gz" in str(err.value)
    with pytest.raises(CacheError, match="not in the cache"):
        attach_cache([{**items[0], "image": str(tmp_path / "elsewhere.nii.gz")}], index)


def test_group_mask_shards_and_motion_confounds(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    for s, subject in enumerate(("01", "02")):
        for run in (1, 2):
            write_run(root, subject, run, seed=10 * s + run)
    out = tmp_path / "cache"
    # rank 1 first without waiting, then rank 0 finds rank 1's runs complete
    part = build(root, out, mask_strategy="group", shard=(1, 2), wait=False)
    assert len(part) == 2
    full = build(root, out, mask_strategy="group", shard=(0, 2))
    assert len(full) == 4 and len(full.summary.waited) == 2
    assert {e.frame_shape for e in full.values()} == {full[("01", 1)].frame_shape}
    assert (out / "masks" / "group_mask.nii.gz").is_file()

    notes = build(root, tmp_path / "m", subjects=["01"], runs=[1], confounds="motion").summary.notes
    assert any("no motion file" in n for n in notes)
    moco = (
        bold_path(root, "01", 1).parent / "sub-01_ses-forrestgump_task-forrestgump_run-01_moco.txt"
    )
    # realistic scale: translations ~0.02 mm, rotations ~2e-4 rad (FD well below the 0.5 mm censoring cut)
    np.savetxt(moco, np.random.default_rng(0).standard_normal((T, 6)) * [0.02, 0.02, 0.02, 2e-4, 2e-4, 2e-4])
    with_motion = build(
        root, tmp_path / "m", subjects=["01"], runs=[1], confounds="motion", high_pass=0.01
    )
    meta = json.loads(Path(with_motion[("01", 1)].sidecar).read_text())
    assert with_motion.summary.built and meta["confounds"]["columns"] == 6
    assert (
        meta["cleaning"]["regressors"] == 2 + 1 + 6
    )  # constant, trend, 1 cosine (60 s run), motion


def test_scaled_int16_source_matches_nibabel(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    path = write_run(root, "01", 1, seed=3, dtype=np.int16)
    assert nib.load(path).dataobj.slope != 1.0
    index = build(root, tmp_path / "cache")
    entry = index[("01", 1)]
    lo = json.loads(Path(entry.sidecar).read_text())["crop"]["lo"]
    expected = reference_clean(nib.load(path).get_fdata(dtype=np.float32)[10, 10, 5])
    got = entry.open()[:, 10 - lo[0], 10 - lo[1], 5 - lo[2]]
    np.testing.assert_allclose(got, expected, atol=4e-3, rtol=2e-3)
