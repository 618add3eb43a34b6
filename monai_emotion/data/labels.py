"""Per-volume emotion labels from raw observer annotations (the rule of docs/domain.md, "The label rule").

Volume ``i`` of run ``r`` was acquired over movie seconds ``[start[r] + 2i, start[r] + 2i + 2)``;
its label time is the middle of that window minus the hemodynamic lag. Each observer casts
at most one vote per class (any character's episode covering the label time counts); a class
qualifies with ``votes >= threshold * n_observers``; the qualifying class with the most votes
is the label, a tie for the most is ``TIE``, no qualifying class is ``NONE``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from monai_emotion.data.annotations import EMOTION_TOKENS, Episode, read_observers
from monai_emotion.data.studyforrest import SEGMENT_STARTS, TR, VOLUMES_PER_RUN, volume_movie_times
from monai_emotion.errors import AnnotationError, ConfigError, MonaiEmotionError
from monai_emotion.fileio import atomic_write_text

__all__ = [
    "CLASSES",
    "LabelRule",
    "NONE",
    "TIE",
    "EmotionMap",
    "load_emotion_map",
    "label_volumes",
    "derive_labels",
    "class_by_run_table",
    "circular_shift_labels",
    "shift_offset",
    "MIN_SHIFT",
    "OUTSIDE_ROW",
    "write_label_tables",
    "read_label_tables",
]

NONE = "NONE"
TIE = "TIE"


@dataclass(frozen=True)
class EmotionMap:
    """Which of the K classes each raw token counts for (``None``: no class)."""

    classes: tuple[str, ...]
    mapping: Mapping[str, str | None]
    source: str

    def classes_of(self, tokens: Sequence[str]) -> set[str]:
        return {c for t in tokens if (c := self.mapping.get(t)) is not None}


@dataclass(frozen=True)
class LabelRule:
    """The label rule's parameters as one typed value: every default is written here.

    Parameters
    ----------
    observers
        ``"av"`` (the 9 audio-visual observers), ``"ao"`` (3 audio-only), ``"all"``, or files.
    threshold
        Fraction of observers whose votes a class needs (0.5: 5 of 9 AV, 2 of 3 AO).
    lag
        Hemodynamic lag in seconds subtracted from the volume's mid time (0: none).
    emotion_map
        A token -> class table (JSON, see :func:`load_emotion_map`); ``None``: the packaged one.
    outside_run
        ``"none"``: a volume whose label time falls outside its own run's movie segment (at lag
        4 s, the first two volumes of every run point at seconds heard in the previous run) is
        ``NONE``; ``"keep"``: label it from the annotations anyway (the behaviour before).
    """

    observers: str | tuple[str, ...] = "av"
    threshold: float = 0.5
    lag: float = 4.0
    emotion_map: str | None = None
    outside_run: str = "none"

    def __post_init__(self) -> None:
        if not isinstance(self.observers, str):
            object.__setattr__(self, "observers", tuple(os.fspath(o) for o in self.observers))
        if self.emotion_map is not None:
            object.__setattr__(self, "emotion_map", os.fspath(self.emotion_map))
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "lag", float(self.lag))
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold must be in (0, 1], got {self.threshold}", where="label rule",
                              fix="use e.g. 0.5")
        _check_outside_run(self.outside_run)

    @classmethod
    def from_dict(cls, given: LabelRule | Mapping[str, object] | None = None, where: str = "labels",
                  **overrides: object) -> LabelRule:
        """A rule from a config mapping; unknown keys are an error naming ``where``."""
        base = given.to_dict() if isinstance(given, LabelRule) else dict(given or {})
        values = {**base, **{k: v for k, v in overrides.items() if v is not None}}
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown label-rule key(s) {unknown}", where=where, fix=f"use only {sorted(names)}")
        return cls(**values)

    def replace(self, **changes: object) -> LabelRule:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        if isinstance(out["observers"], tuple):
            out["observers"] = list(out["observers"])
        return out

    def derive(self, annotations: str | os.PathLike, **options: object) -> pd.DataFrame:
        """Label every volume from the observer files under ``annotations`` (:func:`derive_labels`)."""
        return derive_labels(annotations, self.observers, self.threshold, self.lag, self.emotion_map,
                             outside_run=self.outside_run, **options)


#: what ``LabelRule.outside_run`` accepts
OUTSIDE_RUN_CHOICES = ("none", "keep")
#: the label-table column flagging volumes whose label time lies outside their run's segment
OUTSIDE_COLUMN = "outside_run"
#: the class-by-run table's row counting the volumes made NONE by that rule (part of NONE)
OUTSIDE_ROW = "NONE_OUTSIDE_RUN"


def _check_outside_run(value: str) -> None:
    if value not in OUTSIDE_RUN_CHOICES:
        raise ConfigError(f"outside_run={value!r}", where="label rule",
                          fix=f"use one of {list(OUTSIDE_RUN_CHOICES)}")


#: the defaults, for signatures that take the rule's fields one by one
DEFAULT_RULE = LabelRule()


def load_emotion_map(path: str | os.PathLike | None = None) -> EmotionMap:
    """Load the token -> class table (the packaged one by default).

    A user file has the same JSON shape as ``monai_emotion/resources/emotion_map.json``:
    ``{"classes": [...], "map": {"TOKEN": "CLASS" or null, ...}}``.
    """
    if path is None:
        text = resources.files("monai_emotion.resources").joinpath("emotion_map.json").read_text()
        source = "monai_emotion/resources/emotion_map.json"
    else:
        source = os.fspath(path)
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise ConfigError("emotion map file not found", path, fix="check the path") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON ({exc.msg})", source, line=exc.lineno,
                          fix="fix the JSON syntax") from None
    if not isinstance(data, dict) or "classes" not in data or "map" not in data:
        raise ConfigError("needs the keys 'classes' and 'map'", source,
                          fix='write {"classes": [...], "map": {"TOKEN": "CLASS" or null}}')
    classes = tuple(data["classes"])
    if len(set(classes)) != len(classes) or not classes or {NONE, TIE} & set(classes):
        raise ConfigError(f"classes must be distinct names other than NONE/TIE: {classes}", source,
                          fix="list each class once")
    bad = {t: c for t, c in data["map"].items() if c is not None and c not in classes}
    if bad:
        raise ConfigError(f"tokens map to classes not in 'classes': {bad}", source,
                          fix="map each token to one of the listed classes, or to null")
    return EmotionMap(classes=classes, mapping=dict(data["map"]), source=source)


#: the seed's five classes, in label-index order
CLASSES: tuple[str, ...] = load_emotion_map().classes


def _votes(
    observers: Sequence[Sequence[Episode]], times: np.ndarray, emotion_map: EmotionMap
) -> np.ndarray:
    """``votes[c, v]``: observers with an episode of class ``c`` covering label time ``v``."""
    votes = np.zeros((len(emotion_map.classes), times.size), dtype=np.int32)
    index = {c: k for k, c in enumerate(emotion_map.classes)}
    for episodes in observers:
        voted = np.zeros_like(votes, dtype=bool)
        for ep in episodes:
            classes = emotion_map.classes_of(ep.emotions)
            if not classes:
                continue
            covers = (ep.start <= times) & (times < ep.end)
            for c in classes:
                voted[index[c]] |= covers
        votes += voted
    return votes


def label_volumes(
    observers: Mapping[str, Sequence[Episode]] | Sequence[Sequence[Episode]],
    *,
    threshold: float = DEFAULT_RULE.threshold,
    lag: float = DEFAULT_RULE.lag,
    emotion_map: EmotionMap | None = None,
    segment_starts: Sequence[float] = SEGMENT_STARTS,
    volumes_per_run: Sequence[int] = VOLUMES_PER_RUN,
    runs: Sequence[int] | None = None,
    outside_run: str = DEFAULT_RULE.outside_run,
) -> pd.DataFrame:
    """Label every volume of every run from observer episodes.

    Parameters
    ----------
    observers
        One episode list per observer (a dict from name to episodes, or a list).
    threshold
        Fraction of observers whose votes a class needs to qualify.
    lag
        Hemodynamic lag in seconds subtracted from the volume's mid time (0: no lag).
    emotion_map
        Token -> class table (default: the packaged seed mapping).
    segment_starts, volumes_per_run
        Movie second at which each run starts, and its number of volumes.
    runs
        1-based runs to label (default: all).
    outside_run
        ``"none"``: volumes whose label time lies outside ``[start[r], start[r] + TR * n)``, the
        run's own movie segment, are ``NONE`` (the participant heard that moment in another run,
        or before the movie began); ``"keep"``: labelled like any other volume.

    Returns
    -------
    pandas.DataFrame
        One row per volume: ``run, volume, movie_time, label_time, label, label_index`` (-1 for
        NONE/TIE), ``votes_<CLASS>`` per class, ``n_observers``, ``soft_<CLASS>``, ``outside_run``
        (the label time lies outside the run's segment).
    """
    emap = emotion_map or load_emotion_map()
    episode_lists = list(observers.values()) if isinstance(observers, Mapping) else list(observers)
    n_obs = len(episode_lists)
    if n_obs == 0:
        raise AnnotationError("no observers given", fix="pass at least one observer file")
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold}", fix="use e.g. 0.5")
    if len(segment_starts) != len(volumes_per_run):
        raise ConfigError(
            f"{len(segment_starts)} segment starts but {len(volumes_per_run)} run lengths",
            fix="give one start and one volume count per run",
        )
    run_ids = list(runs) if runs is not None else list(range(1, len(volumes_per_run) + 1))
    _check_outside_run(outside_run)
    needed = threshold * n_obs - 1e-9  # 0.5 x 9 = 4.5 -> 5 votes; float-safe
    frames = []
    for run in run_ids:
        movie = volume_movie_times(run, int(volumes_per_run[run - 1]), segment_starts)
        label_time = movie + TR / 2 - lag
        votes = _votes(episode_lists, label_time, emap)
        outside = (label_time < movie[0]) | (label_time >= movie[0] + TR * movie.size) if movie.size else \
            np.zeros(0, dtype=bool)
        qualifies = votes >= needed
        if outside_run == "none":
            qualifies &= ~outside  # the votes stay on record; the volume gets no class
        top = np.where(qualifies, votes, -1).max(axis=0)
        n_top = ((votes == top) & qualifies).sum(axis=0)
        winner = np.argmax(np.where(qualifies, votes, -1), axis=0)
        names = np.array(emap.classes, dtype=object)[winner]
        label = np.where(n_top == 0, NONE, np.where(n_top > 1, TIE, names))
        frame = pd.DataFrame(
            {
                "run": run,
                "volume": np.arange(movie.size),
                "movie_time": movie,
                "label_time": label_time,
                "label": label,
                "label_index": np.where(n_top == 1, winner, -1),
            }
        )
        for k, c in enumerate(emap.classes):
            frame[f"votes_{c}"] = votes[k]
        frame["n_observers"] = n_obs
        for k, c in enumerate(emap.classes):
            frame[f"soft_{c}"] = votes[k] / n_obs
        frame[OUTSIDE_COLUMN] = outside
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table.attrs.update(threshold=threshold, lag=lag, classes=list(emap.classes),
                       emotion_map=emap.source, n_observers=n_obs, outside_run=outside_run)
    return table


def derive_labels(
    annotations: str | os.PathLike,
    observers: str | Sequence[str] = DEFAULT_RULE.observers,
    threshold: float = DEFAULT_RULE.threshold,
    lag: float = DEFAULT_RULE.lag,
    emotion_map: str | os.PathLike | EmotionMap | None = None,
    segment_starts: Sequence[float] = SEGMENT_STARTS,
    volumes_per_run: Sequence[int] = VOLUMES_PER_RUN,
    runs: Sequence[int] | None = None,
    outside_run: str = DEFAULT_RULE.outside_run,
) -> pd.DataFrame:
    """Read an observer set from disk and label every volume (see :func:`label_volumes`)."""
    emap = emotion_map if isinstance(emotion_map, EmotionMap) else load_emotion_map(emotion_map)
    vocabulary = EMOTION_TOKENS | set(emap.mapping)
    episodes = read_observers(annotations, observers, vocabulary)
    table = label_volumes(
        episodes, threshold=threshold, lag=lag, emotion_map=emap,
        segment_starts=segment_starts, volumes_per_run=volumes_per_run, runs=runs, outside_run=outside_run,
    )
    table.attrs["observer_files"] = sorted(episodes)
    return table


#: smallest circular shift (volumes) of a permutation. 0: uniform over every offset of the run,
#: the identity included, which makes the permutation test exact (the observed alignment is one
#: member of the shift group). Excluding offsets near 0 (the earlier default, 10) made the null
#: scores cluster away from the observed one: on simulated null data with 60-volume runs the
#: test then rejected 12.5 % of the time at alpha 0.05 (tests/test_statistics.py, docs/validation.md)
MIN_SHIFT = 0


def shift_offset(rng: np.random.Generator, n: int, min_shift: int = MIN_SHIFT) -> int:
    """One run's circular-shift offset: uniform in ``[min_shift, n - min_shift)`` (0 for ``n <= 1``).

    The one rule for the study's permutations and for the simulations that check their tests.
    """
    if n <= 1:
        return 0
    low, high = min(min_shift, n // 2), max(n - min_shift, n // 2 + 1)
    return int(rng.integers(low, high))


def circular_shift_labels(labels: pd.DataFrame, seed: int, min_shift: int = MIN_SHIFT) -> pd.DataFrame:
    """A chance-level relabelling that keeps the labels' autocorrelation.

    Within each run the whole per-volume label sequence (NONE and TIE included, with its
    votes and soft labels) is rotated by a random offset, uniform over the run's offsets (at
    least ``min_shift`` volumes from either end; :data:`MIN_SHIFT`), so episodes keep their
    lengths but no longer line up with the BOLD.
    """
    rng = np.random.default_rng(seed)
    shifted = []
    fixed = ("run", "volume", "movie_time", "label_time", OUTSIDE_COLUMN)  # properties of the volume's time
    label_columns = [c for c in labels.columns if c not in fixed]
    for _, frame in labels.groupby("run", sort=True):
        offset = shift_offset(rng, len(frame), min_shift)
        frame = frame.copy()
        frame[label_columns] = np.roll(frame[label_columns].to_numpy(), offset, axis=0)
        shifted.append(frame)
    out = pd.concat(shifted, ignore_index=True)
    out.attrs.update(labels.attrs, permutation_seed=seed)
    return out


def class_by_run_table(labels: pd.DataFrame) -> pd.DataFrame:
    """Counts of each label (classes, then TIE and NONE) per run, with totals.

    When the table flags volumes outside their run's segment (``outside_run``) and the rule made
    them NONE, the extra row :data:`OUTSIDE_ROW` counts them (they are part of the NONE row).
    """
    classes = list(labels.attrs.get("classes", CLASSES))
    order = classes + [TIE, NONE]
    table = pd.crosstab(labels["label"], labels["run"]).reindex(order, fill_value=0)
    if OUTSIDE_COLUMN in labels and labels.attrs.get("outside_run", "none") == "none":
        outside = labels[labels[OUTSIDE_COLUMN].astype(bool)].groupby("run").size()
        table.loc[OUTSIDE_ROW] = outside.reindex(table.columns, fill_value=0)
    table.columns = [f"run-{r}" for r in table.columns]
    table["total"] = table.sum(axis=1)
    table.index.name = "label"
    return table


def write_label_tables(labels: pd.DataFrame, out: str | os.PathLike) -> list[Path]:
    """Write one ``labels_run-N.tsv`` per run plus ``labels.json`` with the parameters."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    # atomic: a kill or a full disk never leaves half a table under its final name
    for run, frame in labels.groupby("run"):
        path = out / f"labels_run-{run}.tsv"
        atomic_write_text(path, frame.to_csv(sep="\t", index=False, float_format="%.6g"),
                          MonaiEmotionError)
        written.append(path)
    meta = {k: v for k, v in labels.attrs.items()}
    meta["runs"] = sorted(int(r) for r in labels["run"].unique())
    atomic_write_text(out / "labels.json", json.dumps(meta, indent=2, default=str) + "\n",
                      MonaiEmotionError)
    return written


def read_label_tables(folder: str | os.PathLike) -> pd.DataFrame:
    """Read what :func:`write_label_tables` wrote back into one table."""
    folder = Path(folder)
    paths = sorted(folder.glob("labels_run-*.tsv"), key=lambda p: int(p.stem.split("-")[-1]))
    if not paths:
        raise AnnotationError("no labels_run-N.tsv files here", folder,
                              fix="run `python -m monai_emotion labels ... --out` first")
    table = pd.concat([pd.read_csv(p, sep="\t") for p in paths], ignore_index=True)
    meta_path = folder / "labels.json"
    if meta_path.is_file():
        table.attrs.update(json.loads(meta_path.read_text()))
    return table
