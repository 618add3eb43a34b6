"""Synthetic studyforrest-shaped data with a planted emotion signal of known ground truth.

:func:`make_synthetic` writes a BIDS tree that :func:`~monai_emotion.data.studyforrest.discover_runs`
reads like ds000113, raw observer annotation files, and the ground truth (hidden timeline,
per-class spatial patterns, generation parameters). :func:`oracle_decode` matches the known
patterns against the data: an upper bound for what a decoder can reach on the dataset.
The hidden timeline and observers live in ``synthetic_timeline``, the voxels in
``synthetic_bold``.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from monai_emotion import __version__
from monai_emotion.data.annotations import find_observer_files
from monai_emotion.data.labels import CLASSES
from monai_emotion.data.studyforrest import (
    N_RUNS,
    SEGMENT_STARTS,
    SPACES,
    SUBJECTS,
    TR,
    VOLUMES_PER_RUN,
    bold_path,
    normalize_subject,
)
from monai_emotion.data.synthetic import bold as sb
from monai_emotion.data.synthetic import timeline as st
from monai_emotion.data.synthetic.oracle import OracleScorer, oracle_decode
from monai_emotion.errors import ConfigError, LayoutError

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


def _rng(seed: int, *keys: int | str) -> np.random.Generator:
    # one stream per (purpose, subject, run): a subject's data do not depend on who else is made
    ints = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng([int(seed), *ints])


def _per_class(given: Mapping[str, float] | None, default: Mapping[str, float], name: str,
               upper: float | None) -> np.ndarray:
    values = dict(default)
    for key, value in (given or {}).items():
        if key not in values:
            raise ConfigError(f"{name} names an unknown class {key!r}", fix=f"use classes from {list(CLASSES)}")
        values[key] = float(value)
    out = np.array([values[c] for c in CLASSES], dtype=float)
    if (out < 0).any() or (upper is not None and (out > upper).any()):
        raise ConfigError(f"{name} values must lie in [0, {upper if upper is not None else 'inf'}]: {values}",
                          fix=f"correct {name}")
    return out


def _subject_labels(subjects: int | Sequence[str | int]) -> list[str]:
    if isinstance(subjects, int):
        if not 1 <= subjects <= len(SUBJECTS):
            raise ConfigError(f"subjects={subjects}: between 1 and {len(SUBJECTS)} subjects",
                              fix="give a count up to 19, or a list of labels")
        return list(SUBJECTS[:subjects])
    labels = [normalize_subject(s) for s in subjects]
    if not labels or len(set(labels)) != len(labels):
        raise ConfigError(f"subjects must be distinct and non-empty: {labels}", fix="list each subject once")
    return labels


def _run_lengths(volumes_per_run: int | Sequence[int] | None) -> list[int]:
    if volumes_per_run is None:
        return list(VOLUMES_PER_RUN)
    if isinstance(volumes_per_run, int | np.integer):
        return [min(int(volumes_per_run), v) for v in VOLUMES_PER_RUN]
    lengths = [int(v) for v in volumes_per_run]
    if len(lengths) != N_RUNS or any(v > real for v, real in zip(lengths, VOLUMES_PER_RUN, strict=True)):
        raise ConfigError(f"volumes_per_run={lengths}: need {N_RUNS} counts, none above the real "
                          f"{list(VOLUMES_PER_RUN)}", fix="give 8 counts, or one int to cap every run")
    return lengths


def _short_runs(short_runs, subjects: list[str], lengths: list[int]) -> dict[tuple[str, int], int]:
    out = {}
    for (sub, run), n in (short_runs or {}).items():
        sub, run, n = normalize_subject(sub), int(run), int(n)
        if sub not in subjects or not 1 <= run <= N_RUNS or not st.MIN_VOLUMES <= n <= lengths[run - 1]:
            raise ConfigError(
                f"short_runs entry ({sub!r}, {run}): {n} volumes is not usable",
                fix=f"name a generated subject, a run 1-{N_RUNS}, and {st.MIN_VOLUMES} to the run's "
                f"{lengths[run - 1] if 1 <= run <= N_RUNS else '?'} volumes",
            )
        out[(sub, run)] = n
    return out


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise LayoutError("folder is not empty", out,
                              fix="choose a new folder, or pass overwrite=True to replace an earlier synthetic dataset")
        if not (out / "ground_truth" / "generation.json").is_file():
            raise LayoutError("folder holds no synthetic dataset (no ground_truth/generation.json); "
                              "refusing to overwrite it", out, fix="choose an empty or new folder")
        for path in [*out.glob("sub-*"), out / "derivatives", out / "annotations", out / "ground_truth"]:
            if path.is_dir():
                shutil.rmtree(path)
    out.mkdir(parents=True, exist_ok=True)


def _write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def _write_bids_metadata(out: Path, subjects: list[str], space: str, params: dict) -> None:
    generated_by = [{"Name": "monai-emotion synthetic", "Version": __version__,
                     "Description": "studyforrest-shaped synthetic data with a planted emotion signal"}]
    _write_json(out / "dataset_description.json", {
        "Name": f"monai-emotion synthetic studyforrest (seed {params['seed']})",
        "BIDSVersion": "1.8.0", "DatasetType": "raw", "GeneratedBy": generated_by})
    (out / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{s}\n" for s in subjects))
    _write_json(out / "task-forrestgump_bold.json", {"RepetitionTime": TR, "TaskName": "forrestgump"})
    if SPACES[space].startswith("derivatives/"):
        _write_json(out / SPACES[space].split("/sub-")[0] / "dataset_description.json", {
            "Name": f"synthetic {space} alignment", "BIDSVersion": "1.8.0",
            "DatasetType": "derivative", "GeneratedBy": generated_by})


def _hrf() -> np.ndarray:
    from nilearn.glm.first_level import glover_hrf

    h = glover_hrf(1.0, oversampling=1, time_length=32.0)
    return h / h.sum()  # a sustained episode of amplitude a plateaus at a


def _save_patterns(path: Path, mask: np.ndarray, values: np.ndarray, grid: sb.Grid) -> Path:
    vol = np.zeros((*mask.shape, values.shape[0]), dtype=np.float32)
    vol[mask] = values.T
    img = nib.Nifti1Image(vol, grid.affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return path


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
) -> dict:
    """Write a synthetic studyforrest-shaped dataset with a planted emotion signal.

    Parameters
    ----------
    out
        Folder to create (must be empty unless ``overwrite``).
    subjects
        A count (the first real labels: 01, 02, ...) or a list of labels.
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
        Per-class peak percent signal change, and share of the pattern common to all subjects
        (defaults :data:`DEFAULT_CLASS_STRENGTH`, :data:`DEFAULT_CLASS_SHARED`).
    noise_sd, noise_ar1
        Voxel-wise AR(1) noise: sd in percent of the voxel baseline (~1000) at the native
        1.2 mm voxel (``noise_sd / scale**1.5`` at coarser scales, as block averaging gives),
        and its lag-1 coefficient.
    smooth_noise_sd, drift_sd
        Spatially smooth AR(1) noise and slow per-run drift, in percent of the baseline.
    seed
        Seed of every random stream.
    short_runs
        ``{(subject, run): n_volumes}`` runs cut short, like the real ``{("04", 8): 263}``.
    progress
        Show a progress bar per run.
    oracle
        Score each subject with the oracle (as :func:`oracle_decode` does, on the blocks as
        they are written) and record it in ``ground_truth/oracle.json``.
    overwrite
        Replace an earlier synthetic dataset in ``out``.

    Returns
    -------
    dict
        ``root``, ``space``, ``subjects``, ``runs`` (``{subject: {run: path}}``),
        ``volumes`` (``{subject: {run: n}}``), ``annotations``, ``ground_truth`` (paths) and
        ``oracle`` (``{subject: balanced accuracy}``, empty when ``oracle=False``).

    Notes
    -----
    Runs are int16 with ``scl_slope`` (about 0.07): half the bytes of float32 to write,
    compress and read, like the scanner's own data, with a quantisation step about 1/250 of
    the noise sd. Generation streams chunks of 16 volumes, so memory does not grow with
    run length.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    if space not in SPACES:
        raise ConfigError(f"unknown space {space!r}", fix=f"use one of {sorted(SPACES)}")
    if not isinstance(scale, int | np.integer) or scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale!r}", fix="use e.g. 1, 2 or 4")
    if observers not in ("av", "ao"):
        raise ConfigError(f"observers must be 'av' or 'ao', got {observers!r}", fix="use 'av' or 'ao'")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}", fix="use e.g. seed=0")
    subs = _subject_labels(subjects)
    lengths = _run_lengths(volumes_per_run)
    run_ids = sorted({int(r) for r in runs}) if runs is not None else list(range(1, N_RUNS + 1))
    if not run_ids or any(not 1 <= r <= N_RUNS for r in run_ids):
        raise ConfigError(f"runs must be a non-empty subset of 1-{N_RUNS}: {runs}", fix="e.g. runs=[1, 2]")
    shorts = _short_runs(short_runs, subs, lengths)
    strength = _per_class(class_strength, DEFAULT_CLASS_STRENGTH, "class_strength", None)
    shared = _per_class(class_shared, DEFAULT_CLASS_SHARED, "class_shared", 1.0)
    # a scale-s voxel averages s**3 native voxels: thermal noise shrinks by s**1.5, which keeps
    # the information in a pattern (and so decoding accuracy) about the same at every scale
    noise = sb.NoiseParams(noise_sd=noise_sd / scale**1.5, noise_ar1=noise_ar1, smooth_noise_sd=smooth_noise_sd,
                           drift_sd=drift_sd)
    if not 0 <= noise_ar1 < 1 or min(noise_sd, smooth_noise_sd, drift_sd) < 0:
        raise ConfigError("noise sds must be >= 0 and noise_ar1 in [0, 1)", fix="correct the noise parameters")
    shortest = [min([lengths[r - 1]] + [n for (_, rr), n in shorts.items() if rr == r]) for r in range(1, N_RUNS + 1)]
    for r in run_ids:
        if shortest[r - 1] < st.MIN_VOLUMES:
            raise ConfigError(f"run {r} would have {shortest[r - 1]} volumes; every class cannot be "
                              f"planted in fewer than {st.MIN_VOLUMES}", fix=f"use volumes_per_run >= {st.MIN_VOLUMES}")
    _prepare(out, overwrite)
    gt = out / "ground_truth"
    gt.mkdir()
    raw_dir = out / "annotations" / "raw"
    raw_dir.mkdir(parents=True)
    if annotations_dir is not None:
        timeline = st.timeline_from_annotations(annotations_dir, observers)
        for path in find_observer_files(annotations_dir, observers):
            shutil.copyfile(path, raw_dir / path.name)
    else:
        # a run that is not written may be shorter than the minimum: its region need not hold every class
        timeline = st.plan_timeline([max(n, st.MIN_VOLUMES) for n in shortest], _rng(seed, "timeline"))
        st.write_observers(st.simulate_observers(timeline, observers, _rng(seed, "observers")), raw_dir)
    params = dict(seed=int(seed), subjects=subs, space=space, scale=int(scale), volumes_per_run=lengths,
                  runs=run_ids, null=bool(null), observers=observers,
                  annotations_dir=os.fspath(annotations_dir) if annotations_dir is not None else None,
                  class_strength=dict(zip(CLASSES, strength.tolist(), strict=True)),
                  class_shared=dict(zip(CLASSES, shared.tolist(), strict=True)),
                  noise={**vars(noise), "noise_sd": float(noise_sd), "noise_sd_at_scale": noise.noise_sd},
                  short_runs=[[s, r, n] for (s, r), n in sorted(shorts.items())])
    _write_bids_metadata(out, subs, space, params)
    # written now so that an interrupted generation can be overwritten; completed at the end
    _write_json(gt / "generation.json", {**params, "complete": False})

    grid = sb.make_grid(int(scale))
    mask = sb.brain_mask(grid)
    group = sb.pattern_set(_rng(seed, "group"), grid, mask, len(CLASSES))
    hrf = _hrf()
    episodes = timeline.to_frame()
    scores: dict[str, dict] = {}
    summary_runs: dict[str, dict[int, str]] = {}
    volumes: dict[str, dict[int, int]] = {}
    slopes: dict[str, float] = {}
    paths = {"generation": gt / "generation.json", "mask": gt / "brain_mask.nii.gz",
             "group_patterns": gt / "patterns_group.nii.gz", "episodes": gt / "true_episodes.tsv",
             "true_classes": gt / "true_classes.tsv", "subject_patterns": {}}
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), grid.affine), paths["mask"])
    _save_patterns(paths["group_patterns"], mask, group, grid)
    for sub in subs:
        rng = _rng(seed, "subject", sub)
        model = sb.subject_model(rng, grid, mask, group, shared, noise)
        amplitudes = rng.gamma(AMPLITUDE_SHAPE, 1 / AMPLITUDE_SHAPE, size=len(timeline.episodes))
        episodes[f"amplitude_sub-{sub}"] = np.round(amplitudes, 4)
        stim = timeline.stimulus(amplitudes.astype(np.float32))
        bold = np.stack([np.convolve(stim[:, k], hrf)[: len(stim)] for k in range(len(CLASSES))], axis=1)
        bold *= strength * (0.0 if null else 1.0)
        paths["subject_patterns"][sub] = _save_patterns(gt / f"sub-{sub}_patterns.nii.gz", mask, model.patterns, grid)
        slopes[sub] = float(np.float32(2.0 * model.baseline.max() / 32000))
        summary_runs[sub], volumes[sub] = {}, {}
        # scored from the blocks as they are written (z-scoring ignores the slope): reading
        # 8 GB of gzip back would add minutes per subject at full size
        scorer = OracleScorer(out, params, sub, mask, model.patterns.T) if oracle else None
        for run in run_ids:
            n = shorts.get((sub, run), lengths[run - 1])
            mid = (SEGMENT_STARTS[run - 1] + TR * np.arange(n) + TR / 2).astype(int)
            path = bold_path(out, sub, run, space)
            header = sb.run_header(grid, n, slopes[sub], _QFORM_CODE[space])
            blocks = sb.run_chunks(model, bold[mid], noise, _rng(seed, "run", sub, run))
            tap = scorer.collector(n) if scorer is not None else None
            with tqdm(total=n, desc=f"sub-{sub} run-{run}", unit="vol", disable=not progress) as bar:
                sb.write_run(path, header, mask, blocks, bar, tap)
            if scorer is not None:
                scorer.add_run(run, tap.data)
                del tap
            summary_runs[sub][run], volumes[sub][run] = str(path), n
        if scorer is not None:
            scores[sub] = scorer.result()
    episodes.to_csv(paths["episodes"], sep="\t", index=False)
    longest = {r: max(v[r] for v in volumes.values()) for r in run_ids}
    rows = []
    for run in run_ids:
        movie = SEGMENT_STARTS[run - 1] + TR * np.arange(longest[run])
        label_time = movie + TR / 2 - TRUTH_LAG
        true = timeline.classes_at(label_time)
        rows.append(pd.DataFrame({"run": run, "volume": np.arange(longest[run]), "movie_time": movie,
                                  "label_time": label_time,
                                  "true_class": np.array(list(CLASSES) + ["NONE"], dtype=object)[true]}))
    pd.concat(rows).to_csv(paths["true_classes"], sep="\t", index=False)
    _write_json(paths["generation"], {
        **params, "complete": True, "version": __version__, "classes": list(CLASSES), "grid_shape": list(grid.shape),
        "voxel_mm": grid.voxel_mm, "affine": grid.affine.tolist(), "n_brain_voxels": int(mask.sum()),
        "dtype": "int16", "scl_slope": slopes, "run_volumes": volumes, "truth_lag": TRUTH_LAG,
        "amplitude_gamma_shape": AMPLITUDE_SHAPE, "hrf": "nilearn glover_hrf, 1 s, normalised to unit sum",
        "timeline": "annotations" if annotations_dir is not None else "planned",
        "signal_model": "baseline*(1+(drift+smooth AR1+voxel AR1+sum_c strength_c*hrf*(episodes_c*amplitude)"
                        "*pattern_c)/100); pattern_c=sqrt(shared_c)*group_c+sqrt(1-shared_c)*own_c"})
    if oracle:
        _write_json(gt / "oracle.json", scores)
        paths["oracle"] = gt / "oracle.json"
    return {
        "root": str(out), "space": space, "subjects": subs, "runs": summary_runs, "volumes": volumes,
        "annotations": str(out / "annotations"),
        "ground_truth": {k: ({s: str(p) for s, p in v.items()} if isinstance(v, dict) else str(v))
                         for k, v in paths.items()},
        "oracle": {s: v["balanced_accuracy"] for s, v in scores.items()},
    }
