"""Voxel side of the synthetic dataset: grid, brain mask, spatial patterns and streamed BOLD.

Class patterns, texture and drift maps are sums of Gaussian blobs, and the smooth noise is
interpolated from a node lattice, all with sizes in millimetres: the statistics of effects
and noise (hence how hard decoding is) stay comparable at every ``scale``. Runs are
generated in chunks of volumes and streamed into a gzip file, so memory stays at a few
chunks plus the per-subject fields, whatever the run length.
"""

from __future__ import annotations

import gzip
import os
import queue
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from monai_emotion.data.studyforrest import ALIGNED_SHAPE, ALIGNED_VOXEL_MM, TR

__all__ = ["Grid", "NoiseParams", "SubjectModel", "Blobs", "DTYPES", "make_grid", "brain_mask",
           "blob_field", "pattern_blobs", "pattern_values", "pattern_set", "subject_model",
           "run_chunks", "run_header", "write_run", "join_extra"]

#: MNI coordinate (mm) of the grid centre: the real slab is centred on auditory cortex
GRID_CENTRE_MM = (0.0, -18.0, 8.0)
BASELINE = 1000.0
#: data types a run may be written in
DTYPES = ("int16", "float32")


@dataclass(frozen=True)
class Grid:
    shape: tuple[int, int, int]
    affine: np.ndarray
    voxel_mm: float


@dataclass(frozen=True)
class NoiseParams:
    """Noise, in percent of the voxel's baseline."""

    noise_sd: float = 3.0  # per-voxel AR(1) noise (thermal), at the voxel size in use
    noise_ar1: float = 0.3
    smooth_noise_sd: float = 0.6  # spatially smooth AR(1) noise (physiology-like)
    smooth_ar1: float = 0.7
    smooth_mm: float = 6.0  # node spacing and kernel width of the smooth noise
    drift_sd: float = 0.5  # slow cosine drifts per run


@dataclass
class SubjectModel:
    """Per-subject fields over the mask voxels (``V`` of them, in ``np.nonzero(mask)`` order)."""

    baseline: np.ndarray  # (V,)
    patterns: np.ndarray  # (K, V), peak |value| about 1
    drift_fields: np.ndarray  # (3, V)
    smooth_axes: tuple[np.ndarray, np.ndarray, np.ndarray]  # per axis: (grid side, nodes)
    mask_flat: np.ndarray  # mask voxels' indices in a (z, y, x) C-ordered volume


def make_grid(scale: int) -> Grid:
    """The aligned 132x175x48 / 1.2 mm grid downscaled by an integer factor (ceil of each side)."""
    shape = tuple(int(np.ceil(n / scale)) for n in ALIGNED_SHAPE)
    voxel = ALIGNED_VOXEL_MM * scale
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = np.asarray(GRID_CENTRE_MM) - voxel * (np.asarray(shape) - 1) / 2
    return Grid(shape=shape, affine=affine, voxel_mm=voxel)


def brain_mask(grid: Grid) -> np.ndarray:
    """nilearn's MNI152 brain mask resampled onto the grid; the grid's z-extent is the slab."""
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    mni = load_mni152_brain_mask(resolution=2)
    soft = nib.Nifti1Image(np.asarray(mni.dataobj, dtype=np.float32), mni.affine)
    with warnings.catch_warnings():
        # linear interpolation of the binary mask is deliberate: thresholding it at 0.5 gives a
        # smoother outline than nearest-neighbour at 1.2 mm
        warnings.simplefilter("ignore", UserWarning)
        on_grid = resample_img(soft, target_affine=grid.affine, target_shape=grid.shape,
                               interpolation="linear", force_resample=True, copy_header=True)
    return np.asarray(on_grid.dataobj) > 0.5


def blob_field(shape: tuple[int, int, int], voxel_mm: float, centres: np.ndarray,
               sigmas_mm: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Sum of isotropic Gaussian blobs, each evaluated only in its +-3 sigma box (separable)."""
    field = np.zeros(shape, dtype=np.float32)
    for centre, sigma_mm, w in zip(centres, sigmas_mm, weights, strict=True):
        sigma = sigma_mm / voxel_mm
        lo = np.maximum(np.floor(centre - 3 * sigma), 0).astype(int)
        hi = np.minimum(np.ceil(centre + 3 * sigma) + 1, shape).astype(int)
        g = [np.exp(-0.5 * ((np.arange(lo[d], hi[d]) - centre[d]) / sigma) ** 2).astype(np.float32)
             for d in range(3)]
        field[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += w * g[0][:, None, None] * g[1][None, :, None] * g[2]
    return field


@dataclass(frozen=True)
class Blobs:
    """Gaussian blobs: centres in voxel coordinates ``(n, 3)``, widths in mm, signed weights."""

    centres: np.ndarray
    sigmas_mm: np.ndarray
    weights: np.ndarray

    def field(self, grid: Grid, offset_vox: np.ndarray | None = None) -> np.ndarray:
        """The blobs summed on the grid, every centre moved by ``offset_vox`` voxels if given."""
        centres = self.centres if offset_vox is None else self.centres + np.asarray(offset_vox, dtype=float)
        return blob_field(grid.shape, grid.voxel_mm, centres, self.sigmas_mm, self.weights)


def _draw_blobs(rng: np.random.Generator, coords: np.ndarray, n: int, sigma_mm: tuple[float, float],
                p_positive: float) -> Blobs:
    centres = coords[rng.integers(len(coords), size=n)] + rng.uniform(-0.5, 0.5, (n, 3))
    sigmas = rng.uniform(*sigma_mm, size=n)
    weights = rng.uniform(0.5, 1.0, size=n) * np.where(rng.random(n) < p_positive, 1.0, -1.0)
    return Blobs(centres, sigmas, weights)


def _random_blobs(rng: np.random.Generator, grid: Grid, coords: np.ndarray, n: int,
                  sigma_mm: tuple[float, float], p_positive: float) -> np.ndarray:
    return _draw_blobs(rng, coords, n, sigma_mm, p_positive).field(grid)


def pattern_blobs(rng: np.random.Generator, mask: np.ndarray, n_classes: int, n_blobs: int = 6) -> list[Blobs]:
    """The blobs of ``n_classes`` patterns, centred on mask voxels (what :func:`pattern_set` draws)."""
    coords = np.argwhere(mask).astype(float)
    return [_draw_blobs(rng, coords, n_blobs, (5.0, 10.0), 0.7) for _ in range(n_classes)]


def pattern_values(blobs: list[Blobs], grid: Grid, mask: np.ndarray, offset_vox: np.ndarray | None = None,
                   peaks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(K, V)`` patterns over the mask from their blobs, and each one's peak |value| before scaling.

    Each pattern is divided by ``peaks`` (default: its own peak, so that it peaks at 1). With
    ``offset_vox`` the blobs are moved first: passing the unmoved patterns' ``peaks`` keeps the
    moved ones an exact translate of them.
    """
    out = np.empty((len(blobs), int(mask.sum())), dtype=np.float32)
    own = np.empty(len(blobs))
    for k, b in enumerate(blobs):
        values = b.field(grid, offset_vox)[mask]
        own[k] = max(float(np.abs(values).max()), 1e-6)
        out[k] = values / float(own[k] if peaks is None else peaks[k])  # a Python float: float32 division
    return out, own


def pattern_set(rng: np.random.Generator, grid: Grid, mask: np.ndarray, n_classes: int,
                n_blobs: int = 6) -> np.ndarray:
    """``(n_classes, V)`` blob patterns inside the mask, each with peak |value| 1."""
    return pattern_values(pattern_blobs(rng, mask, n_classes, n_blobs), grid, mask)[0]


def subject_model(rng: np.random.Generator, grid: Grid, mask: np.ndarray, group: np.ndarray,
                  shared: np.ndarray, noise: NoiseParams) -> SubjectModel:
    """Draw one subject's baseline, class patterns (mixed with the group ones) and noise fields.

    Pattern of class ``c`` = ``sqrt(shared[c]) * group[c] + sqrt(1 - shared[c]) * own[c]``.
    """
    coords = np.argwhere(mask).astype(float)
    own = pattern_set(rng, grid, mask, len(group))
    patterns = (np.sqrt(shared)[:, None] * group + np.sqrt(1 - shared)[:, None] * own).astype(np.float32)
    # EPI-like intensity: brighter inside, darker at the brain's edge, a little texture
    interior = ndimage.gaussian_filter(mask.astype(np.float32), sigma=4.0 / grid.voxel_mm)[mask]
    texture = _random_blobs(rng, grid, coords, 200, (3.0, 8.0), 0.5)[mask]
    texture /= max(float(np.abs(texture).max()), 1e-6)
    baseline = BASELINE * (0.7 + 0.4 * interior) * (1 + 0.05 * texture)
    drift = np.stack([_random_blobs(rng, grid, coords, 6, (20.0, 40.0), 0.5)[mask] for _ in range(3)])
    drift = 1.0 + drift / np.abs(drift).max(axis=1, keepdims=True)  # global, varying 0-2x in space
    return SubjectModel(baseline.astype(np.float32), patterns, drift.astype(np.float32),
                        _smooth_axes(grid, noise.smooth_mm),
                        np.ravel_multi_index(np.nonzero(mask), mask.shape, order="F"))


def _smooth_axes(grid: Grid, spacing_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Separable Gaussian interpolation from a node lattice (``spacing_mm`` apart) to the grid.

    Noise drawn on the nodes and interpolated is smooth at a physical scale and has as many
    degrees of freedom as nodes (thousands): unlike a few fixed components, a decoder cannot
    simply learn to null it. Rows have unit norm, so the field's variance is 1 everywhere.
    """
    axes = []
    for n in grid.shape:
        pos = np.arange(n) * grid.voxel_mm
        nodes = np.arange(-spacing_mm, pos[-1] + 2 * spacing_mm, spacing_mm)
        a = np.exp(-0.5 * ((pos[:, None] - nodes[None, :]) / spacing_mm) ** 2)
        axes.append((a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32))
    return axes[0], axes[1], axes[2]


def run_chunks(model: SubjectModel, signal: np.ndarray, noise: NoiseParams, rng: np.random.Generator,
               chunk: int = 16, extra: tuple[np.ndarray, np.ndarray] | None = None) -> Iterator[np.ndarray]:
    """Yield ``(m, V)`` float32 blocks of one run, ``signal`` being the ``(n, K)`` planted time courses.

    BOLD = baseline * (1 + (drift + smooth AR(1) noise + voxel AR(1) noise + signal @ patterns) / 100).
    ``extra``, ``(time courses (n, E), maps (E, V))`` in percent, adds further responses (e.g.
    the stimulus-locked one) to the same sum.
    """
    n, n_vox = signal.shape[0], model.baseline.size
    t = (np.arange(n) + 0.5) / n
    drift_basis = np.stack([np.cos(np.pi * (j + 1) * t) for j in range(3)], axis=1)
    drift_basis *= noise.drift_sd * rng.normal(size=3)
    # drift and signal share one (m, 3 + K) @ (3 + K, V) product: one pass over the voxels
    courses, maps = [drift_basis, signal], [model.drift_fields, model.patterns]
    if extra is not None:
        courses.append(extra[0])
        maps.append(extra[1])
    weights = np.concatenate(courses, axis=1).astype(np.float32)
    fields = np.concatenate(maps)
    ax, ay, az = model.smooth_axes
    smooth_state = rng.standard_normal((ax.shape[1], ay.shape[1], az.shape[1]), dtype=np.float32)
    voxel_state = rng.standard_normal(n_vox, dtype=np.float32)
    draw = np.empty(n_vox, dtype=np.float32)
    a_s, a_v = np.float32(noise.smooth_ar1), np.float32(noise.noise_ar1)
    innov_s = np.float32(np.sqrt(1 - noise.smooth_ar1**2))
    innov_v = np.float32(np.sqrt(1 - noise.noise_ar1**2))
    ratio = np.float32(noise.noise_sd / noise.smooth_noise_sd) if noise.smooth_noise_sd else None
    for t0 in range(0, n, chunk):
        m = min(chunk, n - t0)
        nodes = np.empty((m, *smooth_state.shape), dtype=np.float32)
        for j in range(m):
            smooth_state *= a_s
            smooth_state += innov_s * rng.standard_normal(smooth_state.shape, dtype=np.float32)
            nodes[j] = smooth_state
        # (m, a, b, c) -> (m, a, b, z) -> (m, a, z, y) -> (m, z, y, x): NIfTI's own voxel order
        field = (nodes @ az.T).transpose(0, 1, 3, 2) @ ay.T
        field = field.transpose(0, 2, 3, 1) @ ax.T
        pct = field.reshape(m, -1)[:, model.mask_flat]
        for j in range(m):
            voxel_state *= a_v
            rng.standard_normal(dtype=np.float32, out=draw)
            draw *= innov_v
            voxel_state += draw
            if ratio is None:
                pct[j] = voxel_state * np.float32(noise.noise_sd)
            else:  # scaled by the smooth sd below, so add the voxel noise in its units
                pct[j] += ratio * voxel_state
        if ratio is not None:
            pct *= np.float32(noise.smooth_noise_sd)
        pct += weights[t0:t0 + m] @ fields
        pct *= np.float32(0.01)
        pct += np.float32(1.0)
        pct *= model.baseline
        yield pct


def join_extra(*parts: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """``(time courses (n, E), maps (E, V))`` responses of :func:`run_chunks` joined into one (None: none)."""
    given = [p for p in parts if p is not None]
    if not given:
        return None
    if len(given) == 1:
        return given[0]
    return (np.concatenate([np.asarray(c, dtype=np.float32) for c, _ in given], axis=1),
            np.concatenate([np.asarray(m, dtype=np.float32) for _, m in given]))


def run_header(grid: Grid, n_volumes: int, slope: float | None, qform_code: int,
               dtype: str = "int16") -> nib.Nifti1Header:
    """Header of one 4D run: TR in pixdim[4], mm/sec units, qform and sform set.

    ``dtype`` ``"int16"`` (values scaled by ``slope``) or ``"float32"`` (no scaling).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    header = nib.Nifti1Header()
    header.set_data_dtype(np.dtype(dtype))
    header.set_data_shape((*grid.shape, n_volumes))
    header.set_zooms((grid.voxel_mm,) * 3 + (TR,))
    header.set_xyzt_units("mm", "sec")
    header.set_qform(grid.affine, code=qform_code)
    header.set_sform(grid.affine, code=qform_code)
    if dtype == "int16":
        header.set_slope_inter(slope, 0.0)
    header.set_dim_info(slice=2)
    header["descrip"] = b"monai-emotion synthetic"
    header["vox_offset"] = 352
    return header


class _GzipStream:
    """A gzip writer fed from a background thread, so zlib overlaps with generating the next chunk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self._raw = open(self.part, "wb")
        # mtime=0 and no stored name: the same seed gives byte-identical files
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=1, mtime=0)
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (block := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._gz.write(block)
                except BaseException as exc:  # re-raised in the producer thread
                    self._error = exc

    def write(self, block: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(block)

    def close(self, keep: bool) -> None:
        self._queue.put(None)
        self._thread.join()
        self._gz.close()
        self._raw.close()
        if keep and self._error is None:
            os.replace(self.part, self.path)
        else:
            self.part.unlink(missing_ok=True)
        if self._error is not None:
            raise self._error


def write_run(path: Path, header: nib.Nifti1Header, mask: np.ndarray, blocks: Iterator[np.ndarray],
              progress=None, tap: Callable[[np.ndarray], None] | None = None) -> None:
    """Stream float blocks ``(m, V)`` of mask voxels into ``path`` in the header's data type.

    int16 blocks are divided by the header's slope and rounded; float32 ones are stored as
    they are. The file appears under its name only once complete (written as ``.part``
    first). ``tap`` sees each block as stored (for int16, integers before the slope), e.g. to
    score it without reading the file back.
    """
    as_float = header.get_data_dtype() == np.float32
    slope = 1.0 if as_float else float(header.get_slope_inter()[0])
    # NIfTI stores x fastest: mask voxels' positions in a Fortran-ordered volume
    flat = np.ravel_multi_index(np.nonzero(mask), mask.shape, order="F")
    n_grid = mask.size
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = _GzipStream(path)
    ok = False
    try:
        buffer = header.binaryblock + b"\x00" * 4  # no extensions
        stream.write(buffer)
        for block in blocks:
            if not as_float:
                block *= np.float32(1 / slope)
                np.rint(block, out=block)
                np.clip(block, -32767, 32767, out=block)
            out = np.zeros((block.shape[0], n_grid), dtype="<f4" if as_float else "<i2")
            out[:, flat] = block
            if tap is not None:
                tap(block)
            stream.write(out.tobytes())
            if progress is not None:
                progress.update(block.shape[0])
        ok = True
    finally:
        stream.close(keep=ok)
