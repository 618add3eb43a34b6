"""Hidden emotion timeline of the synthetic movie and the observers who annotate it.

The "true" timeline is a sequence of non-overlapping class episodes on a 1 s grid over the
whole movie. Simulated observers see it with misses, onset/offset jitter, occasional
disagreement, emotion-free rows and overlapping rows for other characters, and write the
raw Labs et al. (2015) format. Numbers that shape them (token and character frequencies,
episode lengths) were read off the real AV observer files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from monai_emotion.data.annotations import Episode, read_observers, write_observer_file
from monai_emotion.data.labels import CLASSES, NONE, label_volumes, load_emotion_map
from monai_emotion.data.studyforrest import MOVIE_END, SEGMENT_STARTS, TR, volume_movie_times
from monai_emotion.errors import ConfigError

__all__ = [
    "TrueEpisode",
    "Timeline",
    "plan_timeline",
    "timeline_from_annotations",
    "simulate_observers",
    "write_observers",
    "MIN_VOLUMES",
    "AFFECT_MEANS",
    "true_dimensions",
]

#: token counts over the 9 real AV observer files: drives which token an observer writes
TOKEN_COUNTS: dict[str, int] = {
    "HAPPINESS": 780, "LOVE": 412, "SADNESS": 409, "ANGERRAGE": 381, "FEAR": 345,
    "CONTEMPT": 223, "ADMIRATION": 202, "PRIDE": 127, "DISAPPOINTMENT": 121, "HOPE": 82,
    "COMPASSION": 79, "SATISFACTION": 70, "SHAME": 59, "GRATIFICATION": 59, "GLOATING": 58,
    "HATE": 54, "GRATITUDE": 49, "HAPPYFOR": 46, "RELIEF": 38, "REMORSE": 35,
    "FEARSCONFIRMED": 13, "RESENTMENT": 9,
}
CHARACTERS: dict[str, int] = {
    "FORREST": 1829, "JENNY": 772, "FORRESTVO": 594, "MAN": 560, "DAN": 383, "MRSGUMP": 223,
    "CROWD": 140, "BUBBA": 135, "WOMAN": 124, "BOY": 90, "OLDWOMAN": 49, "OLDERBOYS": 43,
}
ONCUES: dict[str, int] = {"FACE": 50, "VERBAL": 45, "GESTURE": 25, "CONTEXT": 20, "AUDIO": 4, "NARRATOR": 3}
OFFCUES: dict[str, int] = {"SCENEEND": 1988, "EMOCHANGE": 1196, "CHARLEFT": 1076, "EMOFADED": 943}
#: P(HIGH arousal), P(POS valence), P(OTHER direction) of an episode of each class
_AFFECT = {"HAPPINESS": (0.4, 0.95, 0.5), "SADNESS": (0.3, 0.05, 0.4), "FEAR": (0.65, 0.05, 0.35),
           "LOVE": (0.25, 0.95, 0.8), "ANGER": (0.6, 0.05, 0.75)}
#: true (valence, arousal) of an episode of each class, ``(K, 2)``: what its observers report on
#: average, P(POS) - P(NEG) and P(HIGH) - P(LOW) (the planted dimension signal's ground truth)
AFFECT_MEANS = np.array([[2 * _AFFECT[c][1] - 1, 2 * _AFFECT[c][0] - 1] for c in CLASSES])

MIN_EPISODE = 6  # s: three label times survive the worst jitter (see _observer_rows)
MIN_GAP = 3  # s: a neighbour's jitter (<= 3 s) cannot reach into the next episode
#: a run's guaranteed region keeps this far (s) from its first/last acquisition so that
#: label times at any lag in [0, 6] s fall on volumes that exist
EDGE_START, EDGE_END = 4, 10
MIN_VOLUMES = 30
MEAN_EPISODE, MEAN_GAP = 16.0, 10.0


@dataclass(frozen=True)
class TrueEpisode:
    """One episode of the hidden timeline: class index ``cls`` over ``[onset, end)`` seconds."""

    onset: int
    end: int
    cls: int
    character: str
    run: int  # the run whose every-class guarantee it serves, 0 if none


@dataclass
class Timeline:
    """The hidden truth: episodes and, per movie second, the index of the episode (-1: none)."""

    episodes: list[TrueEpisode]
    second: np.ndarray

    def classes_at(self, times: np.ndarray) -> np.ndarray:
        """True class index (-1: none) at movie times (seconds)."""
        idx = np.floor(np.asarray(times, dtype=float)).astype(int)
        ok = (idx >= 0) & (idx < self.second.size)
        ep = np.where(ok, self.second[np.clip(idx, 0, self.second.size - 1)], -1)
        cls = np.array([e.cls for e in self.episodes] + [-1], dtype=int)
        return cls[ep]

    def stimulus(self, amplitudes: np.ndarray) -> np.ndarray:
        """Per-second boxcar of each class, scaled by each episode's amplitude: ``(T, K)``."""
        out = np.zeros((self.second.size, len(CLASSES)), dtype=np.float32)
        on = self.second >= 0
        ep = self.second[on]
        cls = np.array([e.cls for e in self.episodes], dtype=int)
        out[np.nonzero(on)[0], cls[ep]] = amplitudes[ep]
        return out

    def affect_course(self, amplitudes: np.ndarray | None = None) -> np.ndarray:
        """Per-second true ``(valence, arousal)`` of the covering episode (0 outside): ``(T, 2)``.

        Each episode's values are :data:`AFFECT_MEANS` of its class, times its amplitude if given.
        """
        out = np.zeros((self.second.size, 2), dtype=np.float32)
        on = self.second >= 0
        ep = self.second[on]
        cls = np.array([e.cls for e in self.episodes], dtype=int)
        scale = np.ones(len(self.episodes)) if amplitudes is None else np.asarray(amplitudes, dtype=float)
        out[on] = AFFECT_MEANS[cls[ep]] * scale[ep, None]
        return out

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Timeline:
        """Inverse of :meth:`to_frame` (what ``ground_truth/true_episodes.tsv`` holds)."""
        index = {c: k for k, c in enumerate(CLASSES)}
        episodes = [TrueEpisode(int(a), int(b), index[c], str(ch), int(r)) for a, b, c, ch, r in zip(
            frame["onset"], frame["end"], frame["class"], frame["character"].fillna(""),
            frame["guarantees_run"], strict=True)]
        second = np.full(int(math.ceil(MOVIE_END)), -1, dtype=np.int32)
        for i, e in enumerate(episodes):
            second[e.onset : e.end] = i
        return cls(episodes=episodes, second=second)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "onset": [e.onset for e in self.episodes],
                "end": [e.end for e in self.episodes],
                "class": [CLASSES[e.cls] for e in self.episodes],
                "character": [e.character for e in self.episodes],
                "guarantees_run": [e.run for e in self.episodes],
            }
        )


def _pick(rng: np.random.Generator, table: Mapping[str, float]) -> str:
    keys = list(table)
    p = np.array([table[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def class_frequencies() -> np.ndarray:
    """Share of each class among the real tokens (what the planted timeline mimics)."""
    mapping = load_emotion_map().mapping
    counts = np.array([sum(n for t, n in TOKEN_COUNTS.items() if mapping.get(t) == c) for c in CLASSES])
    return counts / counts.sum()


def _fill(a: int, b: int, rng: np.random.Generator, weights: np.ndarray, run: int) -> list[tuple]:
    """Episodes tiling ``[a, b)`` with gaps; ``run > 0`` forces every class to appear."""
    length = b - a
    k = int(length // (MEAN_EPISODE + MEAN_GAP))
    if run:
        k = max(k, len(CLASSES))
    while k > 0 and k * MIN_EPISODE + (k - 1) * MIN_GAP > length:
        k -= 1
    if k == 0:
        return []
    if run and k < len(CLASSES):
        raise ConfigError(
            f"a {length} s stretch of run {run} cannot hold one episode of each of the "
            f"{len(CLASSES)} classes",
            fix=f"use at least {MIN_VOLUMES} volumes per run",
        )
    if run:
        classes = list(rng.permutation(len(CLASSES)))
        classes += list(rng.choice(len(CLASSES), size=k - len(classes), p=weights))
        classes = list(rng.permutation(classes))
    else:
        classes = list(rng.choice(len(CLASSES), size=k, p=weights))
    # spread the slack above the minimum with gamma weights: long stretches then get the
    # real spread of lengths (tens of seconds), short ones shrink towards the minimum
    slack = length - (k * MIN_EPISODE + (k - 1) * MIN_GAP)
    w = np.concatenate([rng.gamma(1.5, MEAN_EPISODE - MIN_EPISODE, k),
                        rng.gamma(1.2, MEAN_GAP - MIN_GAP, k + 1)])
    extra = np.floor(slack * w / w.sum()).astype(int)
    extra[int(rng.integers(k))] += slack - int(extra.sum())
    durations = MIN_EPISODE + extra[:k]
    gaps = extra[k:] + np.r_[0, np.full(k - 1, MIN_GAP), 0]
    out, t = [], a + int(gaps[0])
    for i in range(k):
        out.append((t, t + int(durations[i]), int(classes[i]), _pick(rng, CHARACTERS), run))
        t += int(durations[i]) + int(gaps[i + 1])
    return out


def plan_timeline(
    run_lengths: Sequence[int], rng: np.random.Generator, segment_starts: Sequence[float] = SEGMENT_STARTS,
    concentration: float = 20.0,
) -> Timeline:
    """Draw the hidden timeline over the whole movie.

    Each run ``r`` owns a region inside the volumes it has (``run_lengths[r-1]``, the
    shortest version over subjects) that holds at least one episode of every class, so any
    held-out run contains every class; the movie between regions is filled the same way
    without that guarantee. Class shares vary by run (Dirichlet around the real shares with
    this ``concentration``: 20 keeps them close, a few makes each run dominated by some
    classes, as the real data's FEAR in run 4).
    """
    base = class_frequencies()
    regions: list[tuple[int, int, int]] = []
    cursor = 0
    for r, (start, n) in enumerate(zip(segment_starts, run_lengths, strict=True), start=1):
        if n < MIN_VOLUMES:
            raise ConfigError(
                f"run {r} would have {n} volumes; every class cannot be planted in fewer than "
                f"{MIN_VOLUMES}",
                fix=f"use volumes_per_run >= {MIN_VOLUMES} (and short runs of at least that)",
            )
        a = max(int(start) + EDGE_START, cursor)
        b = int(start) + int(TR * n) - EDGE_END  # the run's last acquisition ends at start + TR * n
        if a > cursor:
            regions.append((cursor, a, 0))
        regions.append((a, b, r))
        cursor = b
    end = int(math.ceil(MOVIE_END))
    if cursor < end:
        regions.append((cursor, end, 0))
    episodes: list[TrueEpisode] = []
    for a, b, run in regions:
        weights = rng.dirichlet(concentration * base)
        episodes += [TrueEpisode(*e) for e in _fill(a, b, rng, weights, run)]
    second = np.full(end, -1, dtype=np.int32)
    for i, e in enumerate(episodes):
        second[e.onset : e.end] = i
    return Timeline(episodes=episodes, second=second)


def timeline_from_annotations(
    annotations_dir: str | os.PathLike, observers: str = "av", threshold: float = 0.5
) -> Timeline:
    """Hidden timeline taken from real observer files: the label rule applied every second.

    Runs of seconds with the same class become episodes; NONE and TIE seconds carry no
    signal. No every-class-per-run guarantee holds here (the real annotations decide).
    """
    episodes_by_observer = read_observers(annotations_dir, observers)
    end = int(math.ceil(MOVIE_END))
    # label_volumes samples every 2 s (label time = 2i + 1 - lag): two passes give every second
    table = label_volumes(episodes_by_observer, threshold=threshold, lag=1.0,
                          segment_starts=(0.0,), volumes_per_run=(end,))
    odd = label_volumes(episodes_by_observer, threshold=threshold, lag=0.0,
                        segment_starts=(0.0,), volumes_per_run=(end,))
    labels = np.full(end, NONE, dtype=object)
    even_t = table["label_time"].to_numpy().astype(int)
    odd_t = odd["label_time"].to_numpy().astype(int)
    labels[even_t[even_t < end]] = table["label"].to_numpy()[even_t < end]
    labels[odd_t[odd_t < end]] = odd["label"].to_numpy()[odd_t < end]
    index = {c: k for k, c in enumerate(CLASSES)}
    cls = np.array([index.get(lab, -1) for lab in labels])
    episodes: list[TrueEpisode] = []
    second = np.full(end, -1, dtype=np.int32)
    t = 0
    while t < end:
        u = t
        while u < end and cls[u] == cls[t]:
            u += 1
        if cls[t] >= 0:
            second[t:u] = len(episodes)
            episodes.append(TrueEpisode(t, u, int(cls[t]), "", 0))
        t = u
    return Timeline(episodes=episodes, second=second)


@dataclass(frozen=True)
class _Observer:
    miss: float
    jitter: float
    late: float
    disagree: float
    empty_rows: float
    multi: float


def _draw_observers(n: int, audio_only: bool, rng: np.random.Generator) -> list[_Observer]:
    out = []
    for o in range(n):
        out.append(_Observer(
            miss=float(rng.uniform(0.02, 0.08) if audio_only else rng.uniform(0.04, 0.15)),
            jitter=float(rng.uniform(0.5, 2.0)),
            late=float(rng.uniform(0.0, 1.0)),  # people mark an emotion after noticing it
            disagree=float(rng.uniform(0.02, 0.08)),
            empty_rows=float(rng.uniform(0.1, 0.6)),
            multi=0.3 if (o == 3 and not audio_only) else 0.0,  # the real av1o04 lists several
        ))
    return out


def _time(rng: np.random.Generator, t: float) -> float:
    # real files hold mostly whole seconds with a few fractional ones
    return float(round(t)) if rng.random() < 0.7 else round(t, 1)


def _row(rng: np.random.Generator, start: float, end: float, character: str, cls: int | None,
         tokens_of: Mapping[str, Mapping[str, int]], extra_token: str | None = None) -> Episode:
    name = CLASSES[cls] if cls is not None else None
    high, pos, other = _AFFECT.get(name, (0.4, 0.5, 0.5))
    emotions: tuple[str, ...] = ()
    if name is not None:
        emotions = (_pick(rng, tokens_of[name]),)
        if extra_token and extra_token not in emotions:
            emotions += (extra_token,)
    n_on = int(rng.choice([0, 1, 2, 3], p=[0.02, 0.55, 0.33, 0.10]))
    oncue = tuple(rng.choice(list(ONCUES), size=n_on, replace=False,
                             p=np.array(list(ONCUES.values())) / sum(ONCUES.values())))
    return Episode(
        start=start, end=max(end, start), character=character,
        arousal="HIGH" if rng.random() < high else "LOW",
        valence="POS" if rng.random() < pos else "NEG",
        direction="OTHER" if rng.random() < other else "SELF",
        emotions=emotions, oncue=oncue,
        offcue=(_pick(rng, OFFCUES),) if rng.random() < 0.98 else (),
    )


def simulate_observers(timeline: Timeline, observers: str, rng: np.random.Generator) -> dict[str, list[Episode]]:
    """Observer files (``{"av1o01": [...], ...}``) for the hidden timeline.

    Episodes that carry a run's every-class guarantee are seen correctly by a quorum (7 of 9
    AV, all 3 AO observers) so that the label rule at thresholds up to 0.7 recovers them;
    jitter is bounded by a quarter of the episode, so its middle half is covered by all.
    """
    if observers not in ("av", "ao"):
        raise ConfigError(f"observers must be 'av' or 'ao', got {observers!r}",
                          fix="use 'av' (9 audio-visual observers) or 'ao' (3 audio-only)")
    audio_only = observers == "ao"
    n = 3 if audio_only else 9
    mapping = load_emotion_map().mapping
    tokens_of = {c: {t: k for t, k in TOKEN_COUNTS.items() if mapping.get(t) == c} for c in CLASSES}
    traits = _draw_observers(n, audio_only, rng)
    rows: list[list[Episode]] = [[] for _ in range(n)]
    quorum = n if audio_only else 7
    movie_end = float(timeline.second.size)
    for ep in timeline.episodes:
        sure = set(rng.choice(n, size=quorum, replace=False).tolist()) if ep.run else set()
        dur = ep.end - ep.onset
        bound = min(3.0, dur / 4)
        echo = rng.random() < 0.25  # a second character shares the emotion (overlapping rows)
        echo_char = _pick(rng, CHARACTERS)
        for o, tr in enumerate(traits):
            if o not in sure and rng.random() < tr.miss:
                continue
            cls = ep.cls
            if o not in sure and rng.random() < tr.disagree:
                cls = int(rng.choice([c for c in range(len(CLASSES)) if c != ep.cls]))
            # whole-second rounding may add 0.5 s, so the jitter leaves that much room
            lo = float(np.clip(rng.normal(tr.late, tr.jitter), -bound, bound - 0.5))
            hi = float(np.clip(rng.normal(0.0, tr.jitter), -bound + 0.5, bound))
            start = _time(rng, max(0.0, ep.onset + lo))
            end = _time(rng, min(movie_end, ep.end + hi))
            character = ep.character if rng.random() < 0.9 else _pick(rng, CHARACTERS)
            extra = _pick(rng, TOKEN_COUNTS) if rng.random() < tr.multi else None
            rows[o].append(_row(rng, start, end, character, cls, tokens_of, extra))
            if echo and rng.random() < 0.7:
                s2 = _time(rng, start + rng.uniform(0, (end - start) / 2))
                e2 = min(end, _time(rng, s2 + rng.uniform(2, max(2.5, end - s2))))
                rows[o].append(_row(rng, s2, e2, echo_char, ep.cls, tokens_of))
    for o, tr in enumerate(traits):
        # emotion-free rows and rare single-observer false alarms, anywhere in the movie
        n_free = int(tr.empty_rows * len(timeline.episodes))
        for _ in range(n_free + int(0.03 * len(timeline.episodes))):
            start = _time(rng, rng.uniform(0, movie_end - 5))
            end = _time(rng, min(movie_end, start + 1 + rng.gamma(1.5, 8)))
            if n_free > 0:
                n_free -= 1
                ep_row = _row(rng, start, end, _pick(rng, CHARACTERS), None, tokens_of)
                if rng.random() < 0.05:
                    ep_row = replace(ep_row, emotions=("GLOATING",))
            else:
                ep_row = _row(rng, start, end, _pick(rng, CHARACTERS),
                              int(rng.integers(len(CLASSES))), tokens_of)
            rows[o].append(ep_row)
    prefix = "ao1o" if audio_only else "av1o"
    return {f"{prefix}{o + 1:02d}": sorted(r, key=lambda e: (e.start, e.end)) for o, r in enumerate(rows)}


def true_dimensions(timeline: Timeline, run_volumes: Mapping[int, int], lag: float) -> pd.DataFrame:
    """Ground truth of the dimensions per volume: the true valence/arousal at each label time.

    Parameters
    ----------
    timeline
        The hidden timeline.
    run_volumes
        ``{run: n_volumes}`` (the longest version over subjects).
    lag
        The lag of the label time (``generate.TRUTH_LAG``, the label rule's default).

    Returns
    -------
    pandas.DataFrame
        ``run, volume, label_time, true_valence, true_arousal`` (what ``true_dimensions.tsv`` holds).
    """
    course = timeline.affect_course()
    rows = []
    for run, n in sorted(run_volumes.items()):
        label_time = volume_movie_times(run, n) + TR / 2 - lag
        idx = np.floor(label_time).astype(int)
        ok = (idx >= 0) & (idx < len(course))
        values = np.where(ok[:, None], course[np.clip(idx, 0, len(course) - 1)], 0.0)
        rows.append(pd.DataFrame({"run": run, "volume": np.arange(n), "label_time": label_time,
                                  "true_valence": values[:, 0], "true_arousal": values[:, 1]}))
    return pd.concat(rows, ignore_index=True)


def write_observers(files: Mapping[str, Sequence[Episode]], folder: str | os.PathLike) -> list[Path]:
    """Write ``{name: episodes}`` as raw observer CSV files under ``folder``."""
    return [write_observer_file(Path(folder) / f"{name}.csv", eps) for name, eps in files.items()]
