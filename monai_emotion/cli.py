"""Command line: ``python -m monai_emotion <command> [--flags]`` (also ``monai-emotion``).

User errors print one or two lines (what, where, fix) and exit with status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import fire

from monai_emotion.errors import MonaiEmotionError


def labels(
    annotations: str,
    observers: str = "av",
    threshold: float = 0.5,
    lag: float = 4.0,
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
    observers: str = "av",
    threshold: float = 0.5,
    lag: float = 4.0,
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


def _as_list(value: str | list | tuple | None) -> list | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    if isinstance(value, int):
        return [value]
    return list(value)


def _commands() -> dict[str, Callable]:
    commands: dict[str, Callable] = {"labels": labels, "discover": discover, "datalist": datalist}
    try:
        from monai_emotion.data.synthetic import make_synthetic_cli

        commands["make-synthetic"] = make_synthetic_cli
    except ImportError:
        pass
    try:
        from monai_emotion.data.cache import prepare_cli

        commands["prepare"] = prepare_cli
    except ImportError:
        pass
    try:
        from monai_emotion.study.runner import study_cli

        commands["study"] = study_cli
    except ImportError:
        pass
    return commands


def run_with_clean_errors(entry: Callable[[], object], argv: list[str] | None = None) -> None:
    """Run ``entry``; print package errors as one or two lines unless ``--debug`` is given."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
        sys.argv[1:] = args
    try:
        entry()
    except MonaiEmotionError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def main() -> None:
    """Entry point of ``python -m monai_emotion`` and the ``monai-emotion`` script."""
    run_with_clean_errors(lambda: fire.Fire(_commands(), name=Path(sys.argv[0]).stem))
