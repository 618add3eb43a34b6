"""Synthetic studyforrest-shaped data with a planted emotion signal of known ground truth.

:func:`make_synthetic` writes a BIDS tree that :func:`~monai_emotion.data.studyforrest.discover_runs`
reads like ds000113, raw observer annotation files, and the ground truth (hidden timeline,
per-class spatial patterns, generation parameters). :func:`oracle_decode` matches the known
patterns against the data: an upper bound for what a decoder can reach on the dataset.
The hidden timeline and observers live in ``timeline``, the voxels in ``bold``, the
realistic world's departures from the uniform one in ``realistic`` and ``stimulus``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from monai_emotion import __version__
from monai_emotion.data.annotations import find_observer_files
from monai_emotion.data.labels import CLASSES
from monai_emotion.data.studyforrest import N_RUNS, SPACES, TR, bold_path, volume_movie_times
from monai_emotion.data.synthetic import bold as sb
from monai_emotion.data.synthetic import layout as sl
from monai_emotion.data.synthetic import realistic as sr
from monai_emotion.data.synthetic import stimulus as ss
from monai_emotion.data.synthetic import timeline as st
from monai_emotion.data.synthetic.oracle import OracleScorer, oracle_decode
from monai_emotion.errors import ConfigError

__all__ = ["make_synthetic", "oracle_decode", "DEFAULT_CLASS_STRENGTH", "DEFAULT_CLASS_SHARED"]

#: peak percent signal change of each class pattern (fear strongest, love weakest, as the seed reported)
DEFAULT_CLASS_STRENGTH: dict[str, float] = {"HAPPINESS": 0.8, "SADNESS": 0.8, "FEAR": 1.0, "LOVE": 0.6, "ANGER": 0.8}
#: share of each pattern common to all subjects (fear most shared, love most idiosyncratic)
DEFAULT_CLASS_SHARED: dict[str, float] = {"HAPPINESS": 0.5, "SADNESS": 0.5, "FEAR": 0.85, "LOVE": 0.15, "ANGER": 0.5}
#: gamma shape of each subject's response amplitude per episode (mean 1, CV 0.5)
AMPLITUDE_SHAPE = 4.0
#: the lag at which ground_truth/true_classes.tsv reads the hidden timeline (the label rule's default)
TRUTH_LAG = 4.0
_QFORM_CODE = {"raw": 1, "dico": 1, "nonlinear": 2, "linear": 2}  # scanner / aligned


def _check(space: str, scale: int, observers: str, seed: int, noise: dict) -> None:
    if space not in SPACES:
        raise ConfigError(f"unknown space {space!r}", fix=f"use one of {sorted(SPACES)}")
    if not isinstance(scale, int | np.integer) or scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale!r}", fix="use e.g. 1, 2 or 4")
    if observers not in ("av", "ao"):
        raise ConfigError(f"observers must be 'av' or 'ao', got {observers!r}", fix="use 'av' or 'ao'")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}", fix="use e.g. seed=0")
    if not 0 <= noise["noise_ar1"] < 1 or min(noise["noise_sd"], noise["smooth_noise_sd"], noise["drift_sd"]) < 0:
        raise ConfigError("noise sds must be >= 0 and noise_ar1 in [0, 1)", fix="correct the noise parameters")


def _run_ids(runs: Sequence[int] | None) -> list[int]:
    run_ids = sorted({int(r) for r in runs}) if runs is not None else list(range(1, N_RUNS + 1))
    if not run_ids or any(not 1 <= r <= N_RUNS for r in run_ids):
        raise ConfigError(f"runs must be a non-empty subset of 1-{N_RUNS}: {runs}", fix="e.g. runs=[1, 2]")
    return run_ids


def _convolve(drives: np.ndarray, hrf: np.ndarray) -> np.ndarray:
    return np.stack([np.convolve(drives[:, k], hrf)[: len(drives)] for k in range(drives.shape[1])], axis=1)


def _true_classes(timeline: st.Timeline, volumes: dict[str, dict[int, int]], run_ids: list[int]) -> pd.DataFrame:
    longest = {r: max(v[r] for v in volumes.values()) for r in run_ids}
    rows = []
    for run in run_ids:
        movie = volume_movie_times(run, longest[run])
        label_time = movie + TR / 2 - TRUTH_LAG
        true = timeline.classes_at(label_time)
        rows.append(pd.DataFrame({"run": run, "volume": np.arange(longest[run]), "movie_time": movie,
                                  "label_time": label_time,
                                  "true_class": np.array(list(CLASSES) + ["NONE"], dtype=object)[true]}))
    return pd.concat(rows)


def make_synthetic(
    out: str | os.PathLike,
    *,
    subjects: int | Sequence[str | int] = 4,
    space: str = "nonlinear",
    scale: int = 1,
    volumes_per_run: int | Sequence[int] | None = None,
    runs: Sequence[int] | None = None,
    null: bool = False,
    annotations_dir: str | os.PathLike | None = None,
    observers: str = "av",
    class_strength: Mapping[str, float] | None = None,
    class_shared: Mapping[str, float] | None = None,
    noise_sd: float = 3.0,
    noise_ar1: float = 0.3,
    smooth_noise_sd: float = 0.6,
    drift_sd: float = 0.5,
    seed: int = 0,
    short_runs: Mapping[tuple[str, int], int] | None = None,
    progress: bool = True,
    oracle: bool = True,
    overwrite: bool = False,
    preset: str = "uniform",
    coverage_cut_mm: float | None = None,
    coverage_shift_mm: float | None = None,
    misalignment_mm: float | None = None,
    hrf_peak_s: tuple[float, float] | None = None,
    stimulus_strength: float | None = None,
    spikes_per_run: int | None = None,
    spike_size: float | None = None,
    run_intensity: float | None = None,
    motion_files: bool | None = None,
    class_concentration: float | None = None,
    dtype: str | Mapping[str, str] | None = None,
    absent_subjects: Sequence[str | int] | None = None,
    dimension_strength: float = 0.0,
) -> dict:
    """Write a synthetic studyforrest-shaped dataset with a planted emotion signal.

    Parameters
    ----------
    out
        Folder to create (must be empty unless ``overwrite``).
    subjects
        A count (the first real labels: 01, 02, ...; 19 = all, without sub-10) or a list of labels.
    space
        Which ds000113 file names to write (a key of ``studyforrest.SPACES``); the grid is the
        aligned one in every case.
    scale
        Integer downscale of the 132x175x48 / 1.2 mm grid (4: 33x44x12 at 4.8 mm).
    volumes_per_run
        None: the real counts; an int caps every run; or 8 counts.
    runs
        Subset of runs 1-8 to write (the timeline covers the whole movie regardless).
    null
        Plant no emotion signal (annotations and patterns are still written).
    annotations_dir
        Take the hidden timeline from real observer files (``DIR/raw``, copied into the
        output) instead of simulating observers; every class in every run is then not guaranteed.
    observers
        ``"av"`` (9 observers) or ``"ao"`` (3).
    class_strength, class_shared
        Per-class peak percent signal change (default :data:`DEFAULT_CLASS_STRENGTH`, or
        ``realistic.REALISTIC_CLASS_STRENGTH`` in the realistic preset), and share of the
        pattern common to all subjects (:data:`DEFAULT_CLASS_SHARED`).
    noise_sd, noise_ar1
        Voxel-wise AR(1) noise: sd in percent of the voxel baseline (~1000) at the native
        1.2 mm voxel (``noise_sd / scale**1.5`` at coarser scales, as block averaging gives),
        and its lag-1 coefficient.
    smooth_noise_sd, drift_sd
        Spatially smooth AR(1) noise and slow per-run drift, in percent of the baseline.
    seed
        Seed of every random stream.
    short_runs
        ``{(subject, run): n_volumes}`` runs cut short. Default: none (uniform); realistic: the
        real ``{("04", 8): 263}`` scaled by the run cap (``volumes_per_run``) when sub-04 is made.
    progress
        Show a progress bar per run.
    oracle
        Score each subject with the oracle (as :func:`oracle_decode` does, on the blocks as
        they are written) and record it in ``ground_truth/oracle.json``.
    overwrite
        Replace an earlier synthetic dataset in ``out``.
    preset
        ``"uniform"`` (every subject alike, as before) or ``"realistic"``. It sets the defaults
        of the knobs below (None = the preset's value; uniform value / realistic value).
    coverage_cut_mm
        Up to this much of the slab is cut at each z end, drawn per subject (0 / 9.6 mm).
    coverage_shift_mm
        In-plane move of the subject's brain outline, random direction, whole voxels (at least
        one); the subject covers the group mask where it overlaps its moved copy (0 / 4.8 mm).
    misalignment_mm
        Distance the shared component of every class pattern moves per subject, random 3D
        direction (0 / 4.8 mm: one voxel at scale 4).
    hrf_peak_s
        ``(low, high)``: each subject's HRF peaks at a latency drawn in this range (None:
        nilearn's Glover HRF for all / (4.0, 6.0) s).
    stimulus_strength
        SD in percent signal change, at the peak of two bilateral temporal blobs, of a
        loudness/speech drive shared by all subjects, convolved with each one's HRF (0 / 2.0).
    spikes_per_run
        Volumes per run with a motion spike (0 / 3).
    spike_size
        Typical spike size: percent intensity jump at the coverage edge, 30 % of it
        elsewhere, random sign, times 0.6-1.4 (15 in both).
    run_intensity
        Global intensity factor per run: (1 + session term in +-x) * (1 + run term in +-x/2),
        sessions being runs 1-4 and 5-8 (0 / 0.10).
    motion_files
        Write an fMRIPrep-style motion table beside each run,
        ``..._run-0N_desc-confounds_timeseries.tsv`` (False / True).
    class_concentration
        Dirichlet concentration of each run's class shares in the planned timeline: lower is
        more skewed by run (20 / 3).
    dtype
        ``"int16"`` (with ``scl_slope``), ``"float32"``, ``"mixed"`` (the second generated
        subject float32, the others int16) or ``{subject: dtype}`` (``"int16"`` / ``"mixed"``).
    absent_subjects
        Subjects listed in ``participants.tsv`` with an empty folder but no runs (none /
        ``["10"]`` when all 19 real subjects are made, as in ds000113).
    dimension_strength
        Peak percent signal change of a planted valence and an arousal pattern, each scaled by
        the true per-second valence/arousal (``timeline.AFFECT_MEANS`` of the episode's class,
        times its amplitude) and the HRF; 0 (default) plants none and leaves every voxel as
        before. Ground truth: ``dimension_patterns.nii.gz``, ``true_dimensions.tsv``.

    Returns
    -------
    dict
        ``root``, ``space``, ``preset``, ``subjects``, ``runs`` (``{subject: {run: path}}``),
        ``volumes`` (``{subject: {run: n}}``), ``annotations``, ``ground_truth`` (paths) and
        ``oracle`` (``{subject: balanced accuracy}``, empty when ``oracle=False``).

    Notes
    -----
    int16 runs store ``scl_slope`` (about 0.07): half the bytes of float32 to write, compress
    and read, like the scanner's own data, with a quantisation step about 1/250 of the noise
    sd. Generation streams chunks of 16 volumes, so memory does not grow with run length.
    ``ground_truth/generation.json`` records every knob (``world``) and every per-subject and
    per-run draw (``subject_world``: coverage box, slab, shifts, HRF peak, dtype, run
    intensity factors, spike volumes and sizes).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    noise_args = dict(noise_sd=noise_sd, noise_ar1=noise_ar1, smooth_noise_sd=smooth_noise_sd, drift_sd=drift_sd)
    _check(space, scale, observers, seed, noise_args)
    world = sr.resolve_world(preset, DEFAULT_CLASS_STRENGTH, coverage_cut_mm=coverage_cut_mm,
                             coverage_shift_mm=coverage_shift_mm, misalignment_mm=misalignment_mm,
                             hrf_peak_s=hrf_peak_s, stimulus_strength=stimulus_strength,
                             spikes_per_run=spikes_per_run, spike_size=spike_size, run_intensity=run_intensity,
                             motion_files=motion_files, class_concentration=class_concentration, dtype=dtype)
    subs = sl.subject_labels(subjects)
    lengths = sl.run_lengths(volumes_per_run)
    run_ids = _run_ids(runs)
    if short_runs is None and preset == "realistic":
        short_runs = sr.default_short_runs(subs, lengths)
    shorts = sl.check_short_runs(short_runs, subs, lengths)
    if absent_subjects is None:
        absent_subjects = sr.real_absent_subjects(subs) if preset == "realistic" else []
    absent = [s for s in sl.subject_labels(list(absent_subjects)) if s not in subs] if absent_subjects else []
    strength = sl.per_class(class_strength, world.class_strength, "class_strength", None)
    shared = sl.per_class(class_shared, DEFAULT_CLASS_SHARED, "class_shared", 1.0)
    # a scale-s voxel averages s**3 native voxels: thermal noise shrinks by s**1.5, which keeps
    # the information in a pattern (and so decoding accuracy) about the same at every scale
    noise = sb.NoiseParams(**{**noise_args, "noise_sd": noise_sd / scale**1.5})
    shortest = [min([lengths[r - 1]] + [n for (_, rr), n in shorts.items() if rr == r]) for r in range(1, N_RUNS + 1)]
    for r in run_ids:
        if shortest[r - 1] < st.MIN_VOLUMES:
            raise ConfigError(f"run {r} would have {shortest[r - 1]} volumes; every class cannot be "
                              f"planted in fewer than {st.MIN_VOLUMES}", fix=f"use volumes_per_run >= {st.MIN_VOLUMES}")
    grid = sb.make_grid(int(scale))
    sr.check_coverage(world, grid)
    sl.prepare(out, overwrite)
    gt = out / "ground_truth"
    gt.mkdir()
    raw_dir = out / "annotations" / "raw"
    raw_dir.mkdir(parents=True)
    if annotations_dir is not None:
        timeline = st.timeline_from_annotations(annotations_dir, observers)
        for path in find_observer_files(annotations_dir, "all"):
            shutil.copyfile(path, raw_dir / path.name)
    else:
        # a run that is not written may be shorter than the minimum: its region need not hold every class
        timeline = st.plan_timeline([max(n, st.MIN_VOLUMES) for n in shortest], sl.rng(seed, "timeline"),
                                    concentration=world.class_concentration)
        st.write_observers(st.simulate_observers(timeline, observers, sl.rng(seed, "observers")), raw_dir)
        # the other set too, as ds000113 ships both: the study's observer-set sensitivity reads it
        other = "ao" if observers == "av" else "av"
        st.write_observers(st.simulate_observers(timeline, other, sl.rng(seed, f"observers-{other}")), raw_dir)
    params = dict(seed=int(seed), subjects=subs, space=space, scale=int(scale), volumes_per_run=lengths,
                  runs=run_ids, null=bool(null), observers=observers,
                  annotations_dir=os.fspath(annotations_dir) if annotations_dir is not None else None,
                  class_strength=dict(zip(CLASSES, strength.tolist(), strict=True)),
                  class_shared=dict(zip(CLASSES, shared.tolist(), strict=True)),
                  noise={**vars(noise), "noise_sd": float(noise_sd), "noise_sd_at_scale": noise.noise_sd},
                  short_runs=[[s, r, n] for (s, r), n in sorted(shorts.items())], preset=preset,
                  absent_subjects=absent, **({"dimension_strength": float(dimension_strength)}
                                             if dimension_strength else {}))
    sl.write_bids_metadata(out, subs, space, int(seed), absent)
    # written now so that an interrupted generation can be overwritten; completed at the end
    sl.write_json(gt / "generation.json", {**params, "complete": False})

    mask = sb.brain_mask(grid)
    group_blobs = sb.pattern_blobs(sl.rng(seed, "group"), mask, len(CLASSES))
    group, group_peaks = sb.pattern_values(group_blobs, grid, mask)
    episodes = timeline.to_frame()
    scores: dict[str, dict] = {}
    summary_runs: dict[str, dict[int, str]] = {}
    volumes: dict[str, dict[int, int]] = {}
    slopes: dict[str, float | None] = {}
    subject_world: dict[str, dict] = {}
    paths = {"generation": gt / "generation.json", "mask": gt / "brain_mask.nii.gz",
             "group_patterns": gt / "patterns_group.nii.gz", "episodes": gt / "true_episodes.tsv",
             "true_classes": gt / "true_classes.tsv", "subject_patterns": {}}
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), grid.affine), paths["mask"])
    sl.save_volumes(paths["group_patterns"], mask, group, grid)
    sound = audio_map = None
    if dimension_strength < 0:
        raise ConfigError(f"dimension_strength must be >= 0, got {dimension_strength}", fix="use 0 (off) or e.g. 1.0")
    dim_maps = sb.pattern_set(sl.rng(seed, "dimensions"), grid, mask, 2) if dimension_strength > 0 else None
    if dim_maps is not None:
        paths["dimension_patterns"] = sl.save_volumes(gt / "dimension_patterns.nii.gz", mask, dim_maps, grid)
    if world.stimulus_strength > 0:
        sound = ss.soundtrack(sl.rng(seed, "stimulus"))
        audio_map = ss.auditory_map(grid, mask)
        sound.to_csv(gt / "stimulus.tsv", sep="\t", index=False)
        paths["stimulus"] = gt / "stimulus.tsv"
        paths["auditory_map"] = sl.save_volumes(gt / "auditory_map.nii.gz", mask, audio_map[None], grid)
    for index, sub in enumerate(subs):
        rng = sl.rng(seed, "subject", sub)
        draw = sr.draw_subject(int(seed), sub, index, world, grid, mask)
        own_group = group
        if world.misalignment_mm > 0:
            own_group = sb.pattern_values(group_blobs, grid, mask, draw.pattern_shift_mm / grid.voxel_mm,
                                          group_peaks)[0]
        model = sb.subject_model(rng, grid, mask, own_group, shared, noise)
        amplitudes = rng.gamma(AMPLITUDE_SHAPE, 1 / AMPLITUDE_SHAPE, size=len(timeline.episodes))
        episodes[f"amplitude_sub-{sub}"] = np.round(amplitudes, 4)
        hrf = ss.hrf(draw.hrf_peak_s)
        bold = _convolve(timeline.stimulus(amplitudes.astype(np.float32)), hrf)
        bold *= strength * (0.0 if null else 1.0)
        paths["subject_patterns"][sub] = sl.save_volumes(gt / f"sub-{sub}_patterns.nii.gz", mask, model.patterns,
                                                         grid)
        if draw.keep is not None:
            nib.save(nib.Nifti1Image(draw.coverage.astype(np.uint8), grid.affine), gt / f"sub-{sub}_brain_mask.nii.gz")
        audio = dims = None
        if dim_maps is not None:
            dims = (_convolve(timeline.affect_course(amplitudes), hrf) * dimension_strength * (0.0 if null else 1.0),
                    dim_maps if draw.keep is None else dim_maps[:, draw.keep])
        if sound is not None:
            response = world.stimulus_strength * ss.stimulus_response(sound["drive"].to_numpy(), hrf)
            audio = (response, audio_map[None] if draw.keep is None else audio_map[None, draw.keep])
        spiky = world.spikes_per_run > 0
        edge = sr.edge_weight(draw.coverage, grid.voxel_mm) if spiky else None
        headroom = max(draw.run_intensity.values()) * (1 + 1.4 * world.spike_size / 100 if spiky else 1.0)
        slope = float(np.float32(2.0 * model.baseline.max() * headroom / 32000))
        slopes[sub] = slope if draw.dtype == "int16" else None
        model = sr.restrict(model, draw.keep)
        summary_runs[sub], volumes[sub] = {}, {}
        subject_world[sub] = {**draw.record(grid), "runs": {}}
        # scored from the blocks as they are written (z-scoring ignores the slope): reading
        # 8 GB of gzip back would add minutes per subject at full size
        scorer = OracleScorer(out, params, sub, draw.coverage, model.patterns.T) if oracle else None
        for run in run_ids:
            n = shorts.get((sub, run), lengths[run - 1])
            mid = (volume_movie_times(run, n) + TR / 2).astype(int)
            path = bold_path(out, sub, run, space)
            header = sb.run_header(grid, n, slopes[sub], _QFORM_CODE[space], draw.dtype)
            extra = None if audio is None else (audio[0][mid, None], audio[1])
            extra = sb.join_extra(extra, None if dims is None else (dims[0][mid], dims[1]))
            blocks = sb.run_chunks(model, bold[mid], noise, sl.rng(seed, "run", sub, run), extra=extra)
            effects = sr.draw_run(int(seed), sub, run, n, world, draw.run_intensity[run])
            if spiky or effects.factor != 1.0:
                blocks = sr.scanner_effects(blocks, effects, edge)
            tap = scorer.collector(n) if scorer is not None else None
            with tqdm(total=n, desc=f"sub-{sub} run-{run}", unit="vol", disable=not progress) as bar:
                sb.write_run(path, header, draw.coverage, blocks, bar, tap)
            if world.motion_files:
                effects.motion.to_csv(sr.motion_path(path), sep="\t", index=False, na_rep="n/a")
            if scorer is not None:
                scorer.add_run(run, tap.data)
                del tap
            summary_runs[sub][run], volumes[sub][run] = str(path), n
            subject_world[sub]["runs"][str(run)] = effects.record()
        if scorer is not None:
            scores[sub] = scorer.result()
    episodes.to_csv(paths["episodes"], sep="\t", index=False)
    _true_classes(timeline, volumes, run_ids).to_csv(paths["true_classes"], sep="\t", index=False)
    if dim_maps is not None:
        paths["true_dimensions"] = gt / "true_dimensions.tsv"
        longest = {r: max(v[r] for v in volumes.values()) for r in run_ids}
        st.true_dimensions(timeline, longest, TRUTH_LAG).to_csv(paths["true_dimensions"], sep="\t", index=False)
    dtypes = {s: w["dtype"] for s, w in subject_world.items()}
    sl.write_json(paths["generation"], {
        **params, "complete": True, "version": __version__, "classes": list(CLASSES), "grid_shape": list(grid.shape),
        "voxel_mm": grid.voxel_mm, "affine": grid.affine.tolist(), "n_brain_voxels": int(mask.sum()),
        "dtype": next(iter(set(dtypes.values()))) if len(set(dtypes.values())) == 1 else "mixed",
        "subject_dtype": dtypes, "scl_slope": slopes, "run_volumes": volumes, "truth_lag": TRUTH_LAG,
        "amplitude_gamma_shape": AMPLITUDE_SHAPE,
        "hrf": "nilearn glover_hrf, 1 s, normalised to unit sum; stretched to subject_world.hrf_peak_s when set",
        "timeline": "annotations" if annotations_dir is not None else "planned",
        "signal_model": "run_factor*spike*baseline*(1+(drift+smooth AR1+voxel AR1+sum_c strength_c*hrf*(episodes_c"
                        "*amplitude)*pattern_c+stimulus_strength*z(hrf*drive)*auditory_map)/100); pattern_c="
                        "sqrt(shared_c)*shift(group_c)+sqrt(1-shared_c)*own_c; 0 outside the subject's coverage",
        "auditory_centres_mm": [list(c) for c in ss.AUDITORY_CENTRES_MM] if sound is not None else None,
        "world": world.record(), "subject_world": subject_world})
    if oracle:
        sl.write_json(gt / "oracle.json", scores)
        paths["oracle"] = gt / "oracle.json"
    return {
        "root": str(out), "space": space, "preset": preset, "subjects": subs, "runs": summary_runs,
        "volumes": volumes, "annotations": str(out / "annotations"),
        "ground_truth": {k: ({s: str(p) for s, p in v.items()} if isinstance(v, dict) else str(v))
                         for k, v in paths.items()},
        "oracle": {s: v["balanced_accuracy"] for s, v in scores.items()},
    }
