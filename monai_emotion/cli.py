"""Command line: ``python -m monai_emotion <command> [--flags]`` (also ``monai-emotion``).

User errors print one or two lines (what, where, fix) and exit with status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import fire

from monai_emotion.data.cache.spec import PreprocessingSpec
from monai_emotion.data.labels import DEFAULT_RULE
from monai_emotion.errors import DEBUG_ENV, ConfigError, format_user_error
from monai_emotion.runtime import install_clean_errors


def labels(
    annotations: str,
    observers: str = DEFAULT_RULE.observers,
    threshold: float = DEFAULT_RULE.threshold,
    lag: float = DEFAULT_RULE.lag,
    out: str | None = None,
    emotion_map: str | None = None,
) -> None:
    """Derive per-volume emotion labels from raw observer files.

    Writes ``labels_run-N.tsv`` (one per run) and ``labels.json`` into ``out`` and prints a
    class x run table of counts.

    Parameters
    ----------
    annotations: folder of the raw observer files (or its parent with ``raw/``)
    observers: ``av`` (9 audio-visual observers), ``ao`` (3 audio-only), ``all``, or files
    threshold: fraction of observers a class needs (0.5: 5 of 9 AV, 2 of 3 AO)
    lag: hemodynamic lag in seconds (0: none)
    out: output folder (omit to only print the table)
    emotion_map: JSON token -> class table replacing the packaged one
    """
    from monai_emotion.data.labels import class_by_run_table, derive_labels, write_label_tables

    start = time.perf_counter()
    table = derive_labels(annotations, observers, threshold, lag, emotion_map)
    elapsed = time.perf_counter() - start
    n_obs = table.attrs["n_observers"]
    print(f"{len(table)} volumes labelled from {n_obs} '{observers}' observers "
          f"(threshold {threshold}, lag {lag} s) in {elapsed:.2f} s")
    print(class_by_run_table(table).to_string())
    if out is not None:
        written = write_label_tables(table, out)
        print(f"wrote {len(written)} label tables to {out}")


def discover(bids: str, space: str = "nonlinear", subjects: str | list | None = None) -> None:
    """List the runs found in a BIDS tree, with header checks and problems."""
    from monai_emotion.data.studyforrest import discover_runs

    found = discover_runs(bids, space, _as_list(subjects))
    print(found.summary())
    for run in found.runs:
        print(f"  sub-{run.subject} run {run.run}: {run.n_volumes} vols {run.shape} "
              f"TR {run.tr:g} s ({run.tr_source})")


def datalist(
    bids: str,
    annotations: str,
    out: str,
    space: str = "nonlinear",
    observers: str = DEFAULT_RULE.observers,
    threshold: float = DEFAULT_RULE.threshold,
    lag: float = DEFAULT_RULE.lag,
    subjects: str | list | None = None,
    keep_all: bool = False,
) -> None:
    """Write a MONAI-style JSON data list of labelled volumes (NONE/TIE dropped unless --keep_all)."""
    from monai_emotion.data.datalist import make_datalist, save_datalist
    from monai_emotion.data.labels import derive_labels
    from monai_emotion.data.studyforrest import discover_runs

    found = discover_runs(bids, space, _as_list(subjects))
    for problem in found.problems:
        print(f"! {problem}")
    table = derive_labels(annotations, observers, threshold, lag)
    data = make_datalist(found, table, drop=() if keep_all else ("NONE", "TIE"))
    save_datalist(data, out)
    print(f"{len(data['items'])} items {data['counts']} -> {out}")


def make_synthetic(
    out: str,
    subjects: int | str | list = 4,
    scale: int = 1,
    volumes_per_run: int | None = None,
    runs: str | list | None = None,
    null: bool = False,
    annotations: str | None = None,
    observers: str = "av",
    seed: int = 0,
    space: str = "nonlinear",
    overwrite: bool = False,
    preset: str = "uniform",
) -> None:
    """Write a synthetic studyforrest-shaped BIDS dataset with a planted emotion signal.

    Parameters
    ----------
    out: new folder for the dataset (BIDS tree + annotations/raw + ground_truth/)
    subjects: a count, or labels ("01,02")
    scale: integer downscale of the real 132 x 175 x 48 grid at 1.2 mm (1 = full size)
    volumes_per_run: cap every run at this many volumes (default: the real 451 ... 338)
    runs: subset of runs 1-8
    null: plant no emotion signal (for chance-level checks)
    annotations: take the emotion timeline from real observer files in this folder
    observers: simulated observer set, "av" (9) or "ao" (3)
    preset: "uniform" (every subject alike) or "realistic" (per-subject coverage, misaligned
        patterns, HRF latencies, a shared auditory response, motion spikes and motion files,
        run intensity changes, a short sub-04 run 8, mixed int16/float32 runs)
    """
    from monai_emotion.data.synthetic import make_synthetic as generate

    count_or_labels = subjects if isinstance(subjects, int) else _as_list(subjects)
    start = time.perf_counter()
    summary = generate(out, subjects=count_or_labels, scale=scale, volumes_per_run=volumes_per_run,
                       runs=_as_list(runs), null=null, annotations_dir=annotations,
                       observers=observers, seed=seed, space=space, overwrite=overwrite, preset=preset)
    print(f"synthetic {preset} dataset in {out} ({time.perf_counter() - start:.1f} s)")
    for subject, score in (summary.get("oracle") or {}).items():
        print(f"  sub-{subject}: oracle balanced accuracy {score:.3f} (chance 0.2)")


def prepare(
    bids: str,
    out: str | None = None,
    space: str = "nonlinear",
    subjects: str | list | None = None,
    runs: str | list | None = None,
    downsample: int = PreprocessingSpec.downsample,
    mask: str | None = None,
    mask_strategy: str = PreprocessingSpec.mask_strategy,
    high_pass: float | None = None,
    confounds: str | None = None,
) -> None:
    """Preprocess runs into the float16 frame cache (mask, crop, downsample, detrend, z-score).

    With the defaults the cache lands where the bundle looks for it, so training on the same
    dataset with the same preprocessing reuses it.

    Parameters
    ----------
    bids: BIDS root of ds000113 (never written to)
    out: cache folder (default: the bundle's own cache folder for this dataset and preprocessing)
    space: raw, dico, nonlinear, linear, or a glob
    subjects, runs: restrict to these
    downsample: integer block-average factor
    mask: a mask NIfTI on the runs' grid (default: computed from the data)
    mask_strategy: "group" (one grid for all subjects) or "subject" (one grid per subject)
    high_pass: cut-off in Hz for cosine drift regressors
    confounds: "motion" to regress motion parameters when the files exist
    """
    from monai_emotion.data.cache import prepare_cache
    from monai_emotion.experiment import default_cache_dir

    spec = PreprocessingSpec(downsample=downsample, mask=mask, mask_strategy=mask_strategy,
                             high_pass=high_pass, confounds=confounds)
    out = out or str(default_cache_dir(bids, space, spec))
    prepare_cache(bids, out, spec, space=space, subjects=_as_list(subjects), runs=_as_list(runs), progress=True)


def _as_list(value: str | list | tuple | None) -> list | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    if isinstance(value, int):
        return [value]
    return list(value)


def study(config: str, out: str | None = None, only: str | None = None, force: bool = False) -> None:
    """Run a study (see ``studies/demo.json`` and ``docs/study.md``).

    Parameters
    ----------
    config: the study file
    out: output folder (default results/<study name>)
    only: comma-separated subset to (re)compute: within, cross, unseen, leaky, cnn, linear, permutations, a model id glob (within/sub-01/*), or decoder:pattern (cnn:cross)
    force: recompute selected models even if their results exist
    """
    from monai_emotion.study.runner import study_cli

    study_cli(config, out=out, only=only, force=force)


def report(results_dir: str, compare: str | list | tuple | None = None) -> None:
    """Rebuild report.md and report.html of a finished study from its summary.json (trains nothing).

    Parameters
    ----------
    results_dir: the study's output folder (its --out)
    compare: "LABEL=FOLDER,LABEL=FOLDER": finished studies of the same world with and without
        alignment (or with another temporal context); adds the seen/unseen comparison section
        (docs/alignment.md), ratios to the first
    """
    from monai_emotion.study.report import rebuild_report

    start = time.perf_counter()
    sections = None
    if compare:
        from monai_emotion.study.alignment_report import alignment_section, load_variants

        pairs = [p.rsplit("=", 1) for p in _as_list(compare) or []]
        bad = [p for p in pairs if len(p) != 2 or not (Path(p[-1]) / "results.csv").is_file()]
        if bad:
            raise ConfigError(f"--compare entries {['='.join(p) for p in bad]} are not LABEL=FOLDER of a finished study",
                              compare, fix='pass e.g. --compare "none=results/a,procrustes=results/b"')
        sections = [alignment_section(load_variants(dict(pairs)), results_dir)]
    path = rebuild_report(results_dir, sections)
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s)")


def export(bundle_root: str = "bundles/emotion_3dcnn", out: str | None = None, ckpt_dir: str | None = None,
           onnx: bool = True) -> None:
    """Export a trained bundle for the MONAI model zoo and run the zoo's checks on it.

    Parameters
    ----------
    bundle_root: the trained bundle (its models/ holds model.pt, contract.json, mask.nii.gz)
    out: the exported bundle folder (default <bundle_root>/export; replaced)
    ckpt_dir: the model folder, if not <bundle_root>/models
    onnx: also export ONNX and compare ONNX Runtime with torch (needs the `export` extra)
    """
    from monai_emotion.export import export_bundle, print_report

    print_report(export_bundle(bundle_root, out, ckpt_dir=ckpt_dir, onnx=onnx))


def _commands() -> dict[str, Callable]:
    return {
        "labels": labels,
        "discover": discover,
        "datalist": datalist,
        "make-synthetic": make_synthetic,
        "prepare": prepare,
        "study": study,
        "report": report,
        "export": export,
    }


def run_with_clean_errors(entry: Callable[[], object], argv: list[str] | None = None) -> None:
    """Run ``entry``; print package errors as one or two lines unless ``--debug`` is given.

    Errors wrapped by other layers (MONAI's ``RuntimeError``, a DataLoader worker's
    re-raise) are found in the exception chain and printed the same way.
    """
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
        sys.argv[1:] = args
        # the excepthook installed by main() would otherwise shorten the re-raised error
        os.environ[DEBUG_ENV] = "1"
    try:
        entry()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # output piped into `head` and the like: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except Exception as exc:
        message = None if debug else format_user_error(exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Entry point of ``python -m monai_emotion`` and the ``monai-emotion`` script."""
    install_clean_errors()
    run_with_clean_errors(lambda: fire.Fire(_commands(), name=Path(sys.argv[0]).stem))
