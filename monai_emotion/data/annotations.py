"""Readers for the Labs et al. (2015) emotion annotations of Forrest Gump.

Two kinds of file:

- raw observer files (``raw/av1oNN.csv``, ``raw/ao1oNN.csv``): one episode per row,
  ``start,end,character,arousal,valence,direction,emotion,oncue,offcue``; the emotion and
  cue fields hold space-separated token lists and may be empty;
- derived consensus files (``*_events.tsv``): one row per episode with ``onset``,
  ``duration`` and observer-agreement fractions. Four of their ``e_*`` columns are zero
  everywhere (an importer bug), so category labels come from the raw files.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from monai_emotion.errors import AnnotationError

__all__ = [
    "OBSERVER_COLUMNS",
    "EMOTION_TOKENS",
    "Episode",
    "read_observer_file",
    "write_observer_file",
    "find_observer_files",
    "read_observers",
    "read_consensus_events",
    "CONSENSUS_DEFECT_COLUMNS",
]

OBSERVER_COLUMNS: tuple[str, ...] = (
    "start", "end", "character", "arousal", "valence", "direction", "emotion", "oncue", "offcue",
)
#: the 22 emotion categories observers could choose from (Labs et al. 2015)
EMOTION_TOKENS: frozenset[str] = frozenset(
    "ADMIRATION ANGERRAGE COMPASSION CONTEMPT DISAPPOINTMENT FEAR FEARSCONFIRMED GLOATING "
    "GRATIFICATION GRATITUDE HAPPINESS HAPPYFOR HATE HOPE LOVE PRIDE RELIEF REMORSE "
    "RESENTMENT SADNESS SATISFACTION SHAME".split()
)
_VOCABULARIES = {
    "arousal": {"LOW", "HIGH"},
    "valence": {"POS", "NEG"},
    "direction": {"SELF", "OTHER"},
}
#: consensus columns left at zero by the importer (their tokens are spelled otherwise in raw files)
CONSENSUS_DEFECT_COLUMNS: tuple[str, ...] = (
    "e_anger/rage", "e_fears_confirmed", "e_happy-for", "e_pity/compassion",
)
_OBSERVER_FILE = re.compile(r"^(av|ao)1o(\d+)\.csv$")


@dataclass(frozen=True)
class Episode:
    """One observer's annotation of one character's emotional episode."""

    start: float
    end: float
    character: str
    arousal: str
    valence: str
    direction: str
    emotions: tuple[str, ...]
    oncue: tuple[str, ...] = ()
    offcue: tuple[str, ...] = ()
    line: int | None = None

    def to_row(self) -> list[str]:
        return [
            f"{self.start:g}" if self.start != int(self.start) else f"{self.start:.1f}",
            f"{self.end:g}" if self.end != int(self.end) else f"{self.end:.1f}",
            self.character,
            self.arousal,
            self.valence,
            self.direction,
            " ".join(self.emotions),
            " ".join(self.oncue),
            " ".join(self.offcue),
        ]


def _parse_time(text: str, column: str, path: Path, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AnnotationError(
            f"'{column}' is not a number: {text!r}",
            path,
            line=line,
            fix=f"write '{column}' in movie seconds (e.g. 192.0)",
        ) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise AnnotationError(f"'{column}' is not finite: {text!r}", path, line=line,
                              fix=f"write '{column}' in movie seconds")
    return value


def _check_header(header: list[str], path: Path) -> None:
    names = [h.strip().lower() for h in header]
    if len(names) == 1 and any(sep in names[0] for sep in (";", "\t", "|")):
        raise AnnotationError(
            "the header has a single column: the file is not comma-separated",
            path,
            line=1,
            fix="save the file as comma-separated values (start,end,character,...)",
        )
    missing = [c for c in OBSERVER_COLUMNS if c not in names]
    if missing:
        raise AnnotationError(
            f"missing column(s) {missing}; the header is {header}",
            path,
            line=1,
            fix=f"the header must be: {','.join(OBSERVER_COLUMNS)}",
        )
    if names != list(OBSERVER_COLUMNS):
        raise AnnotationError(
            f"columns are out of order or repeated: {header}",
            path,
            line=1,
            fix=f"the header must be: {','.join(OBSERVER_COLUMNS)}",
        )


def read_observer_file(
    path: str | os.PathLike, vocabulary: Iterable[str] = EMOTION_TOKENS
) -> list[Episode]:
    """Read one raw observer file into episodes, validating every row.

    Parameters
    ----------
    path
        A raw Labs et al. file (``av1o01.csv``...).
    vocabulary
        Known emotion tokens; any other token is an error (pass the keys of a custom
        emotion map to allow new ones).

    Raises
    ------
    AnnotationError
        Empty file, wrong delimiter, missing columns, a repeated header, a malformed row,
        a non-numeric time, an end before its start, or an unknown token; the message
        names the file and line.
    """
    path = Path(path)
    known = frozenset(vocabulary)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise AnnotationError("annotation file not found", path, fix="check the path") from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"not a text file ({exc.reason})", path,
                              fix="give the raw observer CSV file") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise AnnotationError("the file is empty", path, fix="give a raw observer file with a header row")
    _check_header(rows[0], path)
    episodes: list[Episode] = []
    for line, row in enumerate(rows[1:], start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if [c.strip().lower() for c in row] == list(OBSERVER_COLUMNS):
            raise AnnotationError("the header row is repeated", path, line=line,
                                  fix="remove the duplicated header (files were concatenated?)")
        if len(row) != len(OBSERVER_COLUMNS):
            raise AnnotationError(
                f"malformed row: {len(row)} fields, expected {len(OBSERVER_COLUMNS)}",
                path,
                line=line,
                fix="each row needs start,end,character,arousal,valence,direction,emotion,oncue,offcue",
            )
        fields = dict(zip(OBSERVER_COLUMNS, (cell.strip() for cell in row), strict=True))
        start = _parse_time(fields["start"], "start", path, line)
        end = _parse_time(fields["end"], "end", path, line)
        if end < start:
            raise AnnotationError(
                f"episode ends before it starts ({start:g} > {end:g})",
                path,
                line=line,
                fix="swap or correct start and end",
            )
        for column, allowed in _VOCABULARIES.items():
            if fields[column] and fields[column] not in allowed:
                raise AnnotationError(
                    f"unknown {column} value {fields[column]!r}",
                    path,
                    line=line,
                    fix=f"use one of {sorted(allowed)} or leave it empty",
                )
        emotions = tuple(fields["emotion"].split())
        unknown = [t for t in emotions if t not in known]
        if unknown:
            raise AnnotationError(
                f"unknown emotion token(s) {unknown}",
                path,
                line=line,
                fix="correct the spelling, or add the token to a custom emotion map (--emotion_map)",
            )
        episodes.append(
            Episode(
                start=start,
                end=end,
                character=fields["character"],
                arousal=fields["arousal"],
                valence=fields["valence"],
                direction=fields["direction"],
                emotions=emotions,
                oncue=tuple(fields["oncue"].split()),
                offcue=tuple(fields["offcue"].split()),
                line=line,
            )
        )
    return episodes


def write_observer_file(path: str | os.PathLike, episodes: Iterable[Episode]) -> Path:
    """Write episodes in the raw Labs et al. format (the inverse of :func:`read_observer_file`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(OBSERVER_COLUMNS)
        for episode in episodes:
            writer.writerow(episode.to_row())
    return path


def find_observer_files(
    annotations: str | os.PathLike, observers: str | Sequence[str | os.PathLike] = "av"
) -> list[Path]:
    """Locate raw observer files.

    Parameters
    ----------
    annotations
        A folder holding the raw files, or one with a ``raw/`` subfolder (the layout of
        studyforrest-data-annotations).
    observers
        ``"av"`` (audio-visual observers), ``"ao"`` (audio-only: what the 7T participants
        heard), ``"all"``, or explicit file paths (a list, or comma-separated).
    """
    if not isinstance(observers, str) or observers not in ("av", "ao", "all"):
        files = observers.split(",") if isinstance(observers, str) else list(observers)
        paths = [Path(f.strip()) if isinstance(f, str) else Path(f) for f in files]
        base = Path(annotations) if annotations else None
        paths = [p if p.is_absolute() or base is None or p.exists() else base / p for p in paths]
        for p in paths:
            if not p.is_file():
                raise AnnotationError("observer file not found", p, fix="check the file name")
        return paths
    folder = Path(annotations)
    if not folder.is_dir():
        raise AnnotationError("annotation folder not found", folder,
                              fix="pass the folder of the raw observer files (or its parent)")
    search = folder / "raw" if (folder / "raw").is_dir() else folder
    prefixes = ("av", "ao") if observers == "all" else (observers,)
    found = sorted(
        p for p in search.iterdir()
        if (m := _OBSERVER_FILE.match(p.name)) and m.group(1) in prefixes
    )
    if not found:
        raise AnnotationError(
            f"no '{observers}' observer files ({'/'.join(prefixes)}1oNN.csv) in this folder",
            search,
            fix="point --annotations at studyforrest-data-annotations (or its raw/ folder)",
        )
    return found


def read_observers(
    annotations: str | os.PathLike,
    observers: str | Sequence[str | os.PathLike] = "av",
    vocabulary: Iterable[str] = EMOTION_TOKENS,
) -> dict[str, list[Episode]]:
    """Read every observer file of a set: ``{file stem: episodes}``."""
    return {
        p.stem: read_observer_file(p, vocabulary)
        for p in find_observer_files(annotations, observers)
    }


def read_consensus_events(path: str | os.PathLike) -> pd.DataFrame:
    """Read a derived consensus ``*_events.tsv`` file (one row per episode).

    Adds an ``end`` column. The four importer-defect columns
    (:data:`CONSENSUS_DEFECT_COLUMNS`) are kept as they are: they are zero everywhere, so
    do not use them for category labels.
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, sep="\t")
    except FileNotFoundError:
        raise AnnotationError("events file not found", path, fix="check the path") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise AnnotationError(f"cannot parse as a TSV table ({exc})", path,
                              fix="give a tab-separated *_events.tsv file") from None
    for column in ("onset", "duration"):
        if column not in frame.columns:
            raise AnnotationError(f"missing column '{column}'", path, line=1,
                                  fix="a BIDS events file needs onset and duration columns")
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna()
        if bad.any():
            row = int(bad.idxmax())
            raise AnnotationError(f"'{column}' is not a number: {frame[column][row]!r}", path,
                                  line=row + 2, fix=f"write '{column}' in seconds")
        frame[column] = values
    negative = frame["duration"] < 0
    if negative.any():
        raise AnnotationError("negative duration", path, line=int(negative.idxmax()) + 2,
                              fix="durations must be >= 0")
    frame["end"] = frame["onset"] + frame["duration"]
    return frame
