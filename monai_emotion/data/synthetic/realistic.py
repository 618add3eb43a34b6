"""The realistic world: what real aligned ds000113 runs have and a uniform simulation hides.

A :class:`World` holds the strength of each planted property (all off in the ``"uniform"``
preset); :func:`resolve_world` fills it from a preset and explicit knobs. Per subject
(:func:`draw_subject`): its own slab coverage on the common grid, a residual shift of the
shared pattern component, an HRF peak latency, a data type and per-run intensity factors.
Per run (:func:`draw_run`): motion spikes and the motion parameters that go with them. Every
draw comes from its own random stream, so changing one knob leaves the other properties
as they were; :meth:`SubjectDraw.record` and :meth:`RunEffects.record` give what
``ground_truth/generation.json`` keeps of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from monai_emotion.data.studyforrest import SHORT_RUNS, SUBJECTS, VOLUMES_PER_RUN
from monai_emotion.data.synthetic.bold import DTYPES, Grid, SubjectModel
from monai_emotion.data.synthetic.layout import rng
from monai_emotion.data.synthetic.timeline import MIN_VOLUMES
from monai_emotion.errors import ConfigError

__all__ = ["PRESETS", "REALISTIC_CLASS_STRENGTH", "REAL_SHORT_RUNS", "World", "SubjectDraw",
           "RunEffects", "resolve_world", "check_coverage", "draw_subject", "draw_run", "restrict", "scanner_effects",
           "edge_weight", "default_short_runs", "real_absent_subjects", "motion_path"]

#: the real run cut short (sub-04 run 8 lacks its last 75 volumes)
REAL_SHORT_RUNS = SHORT_RUNS  # the fact lives in studyforrest.py
#: peak percent signal change of each class in the realistic world: the uniform defaults
#: (fear strongest, love weakest) times 0.7, which puts the oracle near 0.5-0.6 balanced accuracy
REALISTIC_CLASS_STRENGTH: dict[str, float] = {"HAPPINESS": 0.56, "SADNESS": 0.56, "FEAR": 0.7,
                                              "LOVE": 0.42, "ANGER": 0.56}
#: sessions: runs 1-4 and 5-8 (a break and repositioning between them)
SESSIONS: tuple[tuple[int, ...], ...] = ((1, 2, 3, 4), (5, 6, 7, 8))
_MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
_HEAD_RADIUS_MM = 50.0  # converts rotations to displacement in framewise displacement (Power 2012)


@dataclass(frozen=True)
class World:
    """How far a synthetic world departs from the uniform one (see ``make_synthetic``'s knobs)."""

    preset: str = "uniform"
    coverage_cut_mm: float = 0.0
    coverage_shift_mm: float = 0.0
    misalignment_mm: float = 0.0
    hrf_peak_s: tuple[float, float] | None = None
    stimulus_strength: float = 0.0
    spikes_per_run: int = 0
    spike_size: float = 15.0
    run_intensity: float = 0.0
    motion_files: bool = False
    class_concentration: float = 20.0
    dtype: str | Mapping[str, str] = "int16"
    class_strength: Mapping[str, float] = field(default_factory=dict)

    def record(self) -> dict:
        """The knobs as JSON-ready values."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["hrf_peak_s"] = list(self.hrf_peak_s) if self.hrf_peak_s is not None else None
        out["dtype"] = dict(self.dtype) if isinstance(self.dtype, Mapping) else self.dtype
        out["class_strength"] = dict(self.class_strength)
        return out


#: each preset's knob values (``dtype="mixed"``: the second generated subject float32, others int16)
PRESETS: dict[str, dict] = {
    "uniform": {},
    "realistic": dict(coverage_cut_mm=9.6, coverage_shift_mm=4.8, misalignment_mm=4.8, hrf_peak_s=(4.0, 6.0),
                      stimulus_strength=2.0, spikes_per_run=3, run_intensity=0.10, motion_files=True,
                      class_concentration=3.0, dtype="mixed", class_strength=REALISTIC_CLASS_STRENGTH),
}


def resolve_world(preset: str, class_defaults: Mapping[str, float], **knobs) -> World:
    """The preset's values, replaced by every knob that is not None, checked.

    Parameters
    ----------
    preset
        A key of :data:`PRESETS`.
    class_defaults
        Per-class strengths of presets that set none (the uniform world's).
    **knobs
        :class:`World` fields; None keeps the preset's value.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}", fix=f"use one of {sorted(PRESETS)}")
    values = {"class_strength": dict(class_defaults), **PRESETS[preset]}
    values.update({k: v for k, v in knobs.items() if v is not None})
    world = World(preset=preset, **values)
    sizes = (world.coverage_cut_mm, world.coverage_shift_mm, world.misalignment_mm, world.stimulus_strength,
               world.spike_size)
    if min(sizes) < 0 or world.spikes_per_run < 0 or not 0 <= world.run_intensity < 0.5:
        raise ConfigError("coverage, misalignment, stimulus and spike settings must be >= 0 and run_intensity "
                          f"in [0, 0.5): {world.record()}", fix="correct the realistic-world knobs")
    if world.class_concentration <= 0:
        raise ConfigError(f"class_concentration must be > 0, got {world.class_concentration}",
                          fix="use e.g. 20 (classes spread evenly over runs) or 3 (skewed by run)")
    if world.hrf_peak_s is not None and not 1.0 <= min(world.hrf_peak_s) <= max(world.hrf_peak_s) <= 12.0:
        raise ConfigError(f"hrf_peak_s={world.hrf_peak_s}: a (low, high) range within 1-12 s",
                          fix="use e.g. (4.0, 6.0)")
    dtypes = world.dtype.values() if isinstance(world.dtype, Mapping) else [world.dtype]
    if world.dtype != "mixed" and any(d not in DTYPES for d in dtypes):
        raise ConfigError(f"dtype={world.dtype!r}: use one of {DTYPES}, 'mixed' or a subject -> dtype mapping",
                          fix="e.g. dtype='float32' or dtype={'02': 'float32'}")
    return world


@dataclass
class SubjectDraw:
    """One subject's realistic properties."""

    coverage: np.ndarray  # bool grid: the voxels this subject's slab holds
    keep: np.ndarray | None  # bool over the group mask voxels (None: all of them)
    slab: tuple[int, int]  # z voxel range [lo, hi) of the slab
    outline_shift_vox: tuple[int, int, int]
    pattern_shift_mm: np.ndarray  # (3,) move of the shared pattern component
    hrf_peak_s: float | None
    dtype: str
    run_intensity: dict[int, float]

    def record(self, grid: Grid) -> dict:
        """JSON-ready: coverage box (voxel lo/hi, hi exclusive), shifts, HRF peak, dtype, factors."""
        idx = np.nonzero(self.coverage)
        return {
            "coverage_box": {"lo": [int(i.min()) for i in idx], "hi": [int(i.max()) + 1 for i in idx]},
            "slab_z": list(self.slab), "n_voxels": int(self.coverage.sum()),
            "outline_shift_vox": list(self.outline_shift_vox),
            "outline_shift_mm": [round(v * grid.voxel_mm, 4) for v in self.outline_shift_vox],
            "pattern_shift_mm": [round(float(v), 4) for v in self.pattern_shift_mm],
            "pattern_shift_vox": [round(float(v) / grid.voxel_mm, 4) for v in self.pattern_shift_mm],
            "hrf_peak_s": None if self.hrf_peak_s is None else round(self.hrf_peak_s, 4),
            "dtype": self.dtype,
            "run_intensity": {str(r): round(f, 6) for r, f in self.run_intensity.items()},
        }


def _translate(mask: np.ndarray, shift: Sequence[int]) -> np.ndarray:
    """``mask`` moved by whole voxels, empty where it moved in from outside."""
    out = np.zeros_like(mask)
    src = tuple(slice(max(-s, 0), n - max(s, 0)) for s, n in zip(shift, mask.shape, strict=True))
    dst = tuple(slice(max(s, 0), n - max(-s, 0)) for s, n in zip(shift, mask.shape, strict=True))
    out[dst] = mask[src]
    return out


def _subject_dtype(world: World, subject: str, index: int) -> str:
    if world.dtype == "mixed":
        return "float32" if index == 1 else "int16"
    if isinstance(world.dtype, Mapping):
        return world.dtype.get(subject, "int16")
    return world.dtype


def check_coverage(world: World, grid: Grid) -> None:
    """Refuse a slab cut that could leave under half of the grid's slices."""
    nz = grid.shape[2]
    if nz - 2 * int(np.rint(world.coverage_cut_mm / grid.voxel_mm)) < max(3, nz // 2):
        raise ConfigError(f"coverage_cut_mm={world.coverage_cut_mm} could leave under half of the "
                          f"{nz} slices of {grid.voxel_mm:g} mm", fix="use a smaller coverage_cut_mm")


def draw_subject(seed: int, subject: str, index: int, world: World, grid: Grid, mask: np.ndarray) -> SubjectDraw:
    """Draw one subject's coverage, pattern shift, HRF peak, data type and run intensities.

    Coverage = the group mask, minus up to ``coverage_cut_mm`` of slices at each end of the
    slab (z), intersected with the mask moved in-plane by ``coverage_shift_mm`` in a random
    direction (whole voxels, at least one): voxels go missing at the edges, none are added. The shared
    pattern component moves by exactly ``misalignment_mm`` in a random 3D direction.
    ``index`` is the subject's position among the generated ones (for ``dtype="mixed"``).
    """
    r = rng(seed, "coverage", subject)
    nz = grid.shape[2]
    check_coverage(world, grid)
    cut = np.rint(r.uniform(0.0, world.coverage_cut_mm, 2) / grid.voxel_mm).astype(int)
    angle = r.uniform(0.0, 2 * np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    dxy = np.rint(world.coverage_shift_mm * direction / grid.voxel_mm)
    if world.coverage_shift_mm > 0 and not dxy.any():  # voxels coarser than the shift: move one
        dxy[np.argmax(np.abs(direction))] = np.sign(direction[np.argmax(np.abs(direction))])
    shift = (int(dxy[0]), int(dxy[1]), 0)
    slab = (int(cut[0]), int(nz - cut[1]))
    coverage = mask.copy()
    coverage[..., : slab[0]] = False
    coverage[..., slab[1]:] = False
    coverage &= _translate(mask, shift)
    keep = None if coverage.sum() == mask.sum() else coverage[mask]
    direction = rng(seed, "misalignment", subject).standard_normal(3)
    pattern_shift = world.misalignment_mm * direction / np.linalg.norm(direction)
    peak = None
    if world.hrf_peak_s is not None:
        peak = float(rng(seed, "hrf", subject).uniform(*world.hrf_peak_s))
    r = rng(seed, "intensity", subject)
    a = world.run_intensity
    session = r.uniform(-a, a, len(SESSIONS))
    factors = {run: float((1 + session[s]) * (1 + r.uniform(-a / 2, a / 2)))
               for s, runs in enumerate(SESSIONS) for run in runs}
    return SubjectDraw(coverage, keep, slab, shift, pattern_shift, peak, _subject_dtype(world, subject, index),
                       factors)


@dataclass
class RunEffects:
    """One run's scanner and motion effects."""

    factor: float  # global intensity factor of the run
    spike_volumes: np.ndarray  # volume indices (0-based)
    spike_sizes: np.ndarray  # signed percent jump at the edge (30 % of it everywhere)
    motion: pd.DataFrame  # fMRIPrep-style confound columns, one row per volume

    def record(self) -> dict:
        return {"spike_volumes": [int(v) for v in self.spike_volumes],
                "spike_sizes": [round(float(s), 4) for s in self.spike_sizes]}


def draw_run(seed: int, subject: str, run: int, n: int, world: World, factor: float) -> RunEffects:
    """Spikes (``spikes_per_run`` volumes away from the run's ends) and motion parameters.

    Motion is a slow random walk (0.02 mm and 0.3 mrad per volume) with a one-volume twitch
    at each spike (about 1 mm and 10 mrad for a spike of ``spike_size``).
    """
    r = rng(seed, "spikes", subject, run)
    k = min(world.spikes_per_run, max(0, n - 4))
    volumes = np.sort(r.choice(np.arange(2, n - 2), size=k, replace=False)) if k else np.zeros(0, int)
    sizes = world.spike_size * r.uniform(0.6, 1.4, k) * np.where(r.random(k) < 0.5, -1.0, 1.0)
    trans = np.cumsum(r.normal(0.0, 0.02, (n, 3)), axis=0)
    rot = np.cumsum(r.normal(0.0, 3e-4, (n, 3)), axis=0)
    for v, s in zip(volumes, sizes, strict=True):
        direction = r.standard_normal(6)
        direction /= np.linalg.norm(direction)
        twitch = abs(s) / max(world.spike_size, 1e-9) * direction
        trans[v] += 1.0 * twitch[:3]
        rot[v] += 0.01 * twitch[3:]
    params = np.concatenate([trans, rot], axis=1)
    step = np.abs(np.diff(params, axis=0))
    fd = np.r_[np.nan, step[:, :3].sum(axis=1) + _HEAD_RADIUS_MM * step[:, 3:].sum(axis=1)]
    motion = pd.DataFrame(np.round(params, 6), columns=list(_MOTION_COLUMNS))
    motion["framewise_displacement"] = np.round(fd, 6)
    return RunEffects(factor, volumes, sizes, motion)


def restrict(model: SubjectModel, keep: np.ndarray | None) -> SubjectModel:
    """The subject's fields on the voxels it covers (``keep`` over the group mask voxels)."""
    if keep is None:
        return model
    return replace(model, baseline=model.baseline[keep], patterns=model.patterns[:, keep],
                   drift_fields=model.drift_fields[:, keep], mask_flat=model.mask_flat[keep])


def edge_weight(coverage: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Per covered voxel, 0 deep inside the coverage to 1 at its edge (slab faces included)."""
    interior = ndimage.gaussian_filter(coverage.astype(np.float32), sigma=4.0 / voxel_mm, mode="constant")
    edge = 1.0 - interior[coverage]
    return (edge / max(float(edge.max()), 1e-6)).astype(np.float32)


def scanner_effects(blocks: Iterator[np.ndarray], effects: RunEffects,
                    edge: np.ndarray | None) -> Iterator[np.ndarray]:
    """Apply the run's intensity factor and its spikes to ``(m, V)`` blocks, in place.

    A spike of size ``s`` multiplies a volume by ``1 + s/100 * (0.3 + 0.7 * edge)``: a global
    jump, largest at the edge of the coverage, as head motion gives (``edge`` may be None
    only for a run without spikes).
    """
    spread = None if edge is None else (np.float32(0.3) + np.float32(0.7) * edge).astype(np.float32)
    spikes = dict(zip(effects.spike_volumes.tolist(), effects.spike_sizes.tolist(), strict=True))
    t0 = 0
    for block in blocks:
        if effects.factor != 1.0:
            block *= np.float32(effects.factor)
        for j in range(block.shape[0]):
            if t0 + j in spikes:
                block[j] *= 1.0 + np.float32(spikes[t0 + j] / 100.0) * spread
        t0 += block.shape[0]
        yield block


def motion_path(bold: Path) -> Path:
    """Where a run's motion table goes: beside it, ``..._run-0N_desc-confounds_timeseries.tsv``."""
    name = bold.name.removesuffix(".nii.gz").removesuffix("_bold")
    return bold.with_name(f"{name}_desc-confounds_timeseries.tsv")


def default_short_runs(subjects: Sequence[str], lengths: Sequence[int]) -> dict[tuple[str, int], int]:
    """The real short runs of generated subjects, scaled by the run cap (kept shorter than the run)."""
    out = {}
    for (sub, run), n in REAL_SHORT_RUNS.items():
        scaled = max(MIN_VOLUMES, int(round(n * lengths[run - 1] / VOLUMES_PER_RUN[run - 1])))
        if sub in subjects and scaled < lengths[run - 1]:
            out[(sub, run)] = scaled
    return out


def real_absent_subjects(subjects: Sequence[str]) -> list[str]:
    """Participants without aligned data (sub-10) when every real subject is generated."""
    if not set(SUBJECTS) <= set(subjects):
        return []
    listed = [f"{i:02d}" for i in range(1, int(max(SUBJECTS)) + 1)]
    return [s for s in listed if s not in SUBJECTS]

