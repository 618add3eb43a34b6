"""Which models a study trains and on which held-out data each is tested.

A :class:`ModelSpec` is everything that distinguishes one model from another: the subjects whose
volumes it may see, the bundle split (``data#split``), the label lag and, for chance levels, the
label permutation. Each model carries its :class:`TestSet`\\ s; a test set is again a subject
list plus a split whose ``test`` part is evaluated, so the bundle's own ``make_splits`` decides
every membership, for the CNN and the linear baseline alike.

Experiments (``within``, ``cross``, ``unseen``, ``leaky``) follow the seed poster's design,
with leak-free splits:

- runs are grouped into folds with every class in every test fold
  (:func:`~monai_emotion.data.splits.run_folds`); a model holding out fold ``k`` validates
  on the remaining run with the most even class counts (checkpoint selection never sees test
  runs), and ``split_by_runs`` drops the training volumes that share movie moments with the
  validation or test runs (the 16 s overlap between neighbouring runs);
- unseen-subject models hold out a subject fold *and* one run fold for everyone, so the
  ``unseen_heldout`` test set contains no movie moment seen in training; ``unseen_all_runs``
  (every run of the unseen subjects: the stimulus was heard by the training subjects) and
  ``seen_heldout`` (the training subjects' held-out runs) are reported separately; the run
  fold rotates over the subject folds (``splits.unseen_run_fold``), so ``unseen_heldout``
  covers every run;
- the seed's protocol (random per-volume split, no lag) is the ``leaky`` experiment.

Every test set carries its protocol (:data:`PROTOCOLS`): ``clean`` (no movie moment of the
test set was heard in training, by any subject), ``stimulus-seen`` (the unseen subjects'
all-runs set: the training subjects heard those moments) or ``leaky`` (the seed's split).

Permutations: a model trained on one subject (within, leaky) gets that subject's own
circular shifts (:func:`subject_seed`), independent across subjects, so subjects are the
replication unit of the group test (:mod:`~monai_emotion.study.chance`); a model of several
subjects shifts the shared movie labels once for all of them.
"""

from __future__ import annotations

import fnmatch
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from monai_emotion.data.splits import run_folds, subject_folds
from monai_emotion.errors import ConfigError
from monai_emotion.fileio import json_digest
from monai_emotion.study.config import Study

__all__ = ["PROTOCOLS", "TestSet", "ModelSpec", "StudyPlan", "plan_study", "validation_run", "validation_runs",
           "subject_seed", "selected", "selected_permutations"]

#: protocol labels of test sets, from clean to leaky
PROTOCOLS = ("clean", "stimulus-seen", "leaky")


def subject_seed(seed: int, subject: str) -> int:
    """The label-permutation seed of ``subject`` under study permutation ``seed``.

    Independent streams per subject (numpy ``SeedSequence`` of the seed and a CRC of the
    label), so that single-subject models of one permutation do not share their shifts.
    """
    entropy = [int(seed), zlib.crc32(str(subject).encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


@dataclass(frozen=True)
class TestSet:
    """Held-out data of one model: the ``test`` part of ``split`` over ``subjects``.

    ``protocol`` says what the training saw of it (:data:`PROTOCOLS`).
    """

    name: str
    subjects: tuple[str, ...]
    split: dict[str, Any]
    protocol: str = "clean"


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study (CNN through the bundle, or the linear baseline)."""

    id: str
    experiment: str
    subjects: tuple[str, ...]
    split: dict[str, Any]
    lag: float
    fold: str
    test_sets: tuple[TestSet, ...]
    permutation: int | None = None
    held_out_subjects: tuple[str, ...] = field(default=())

    @property
    def protocol(self) -> str:
        """The model's protocol: the least clean of its test sets' (:data:`PROTOCOLS`)."""
        return max((t.protocol for t in self.test_sets), key=PROTOCOLS.index, default="clean")

    def permuted(self, seed: int) -> ModelSpec:
        """The same model fitted to labels circularly shifted within runs (study permutation ``seed``).

        A single-subject model's labels are shifted by that subject's own stream
        (:func:`subject_seed`); ``permutation`` is the seed the labels are shifted with.
        """
        label_seed = subject_seed(seed, self.subjects[0]) if len(self.subjects) == 1 else int(seed)
        return replace(self, id=f"perm-{seed:04d}/{self.id}", permutation=label_seed)

    def digest(self, extra: dict[str, Any] | None = None) -> str:
        """Hash of the spec and ``extra`` settings: a stored result is reused only if it matches."""
        return json_digest([asdict(self), extra or {}], length=16)


@dataclass(frozen=True)
class StudyPlan:
    """The models of a study and the fold structure they were built from."""

    models: tuple[ModelSpec, ...]
    run_folds: tuple[tuple[int, ...], ...]
    subject_folds: tuple[tuple[str, ...], ...]
    subjects: tuple[str, ...]

    def of(self, experiment: str) -> list[ModelSpec]:
        return [m for m in self.models if m.experiment == experiment]

    def describe(self) -> dict[str, Any]:
        return {
            "subjects": list(self.subjects),
            "run_folds": [list(f) for f in self.run_folds],
            "subject_folds": [list(f) for f in self.subject_folds],
            "models": {e: len(self.of(e)) for e in sorted({m.experiment for m in self.models})},
        }


def validation_run(items: Sequence[dict], candidates: Sequence[int], n_classes: int) -> int:
    """The candidate run whose rarest class has the most volumes (ties: the earliest run).

    Checkpoint selection on balanced accuracy needs every class in the validation run.
    """
    if not candidates:
        raise ConfigError("no run is left for validation", fix="use more runs or fewer run folds")
    counts = {int(r): np.zeros(n_classes, dtype=int) for r in candidates}
    for item in items:
        run = int(item["run"])
        if run in counts and int(item["label"]) >= 0:
            counts[run][int(item["label"])] += 1
    return max(sorted(counts), key=lambda r: (int(counts[r].min()), int((counts[r] > 0).sum()), -r))


def validation_runs(items: Sequence[dict], candidates: Sequence[int], n_classes: int, count: int) -> list[int]:
    """``count`` validation runs picked one by one (:func:`validation_run` on the pooled counts).

    At least two candidate runs are left for training; with fewer candidates, fewer runs.
    """
    count = max(1, min(int(count), len(candidates) - 2))
    chosen = [validation_run(items, candidates, n_classes)]
    while len(chosen) < count:
        chosen.append(_add_run(items, chosen, [r for r in candidates if r not in chosen], n_classes))
    return sorted(chosen)


def _add_run(items: Sequence[dict], chosen: Sequence[int], rest: Sequence[int], n_classes: int) -> int:
    """The run of ``rest`` that, added to ``chosen``, gives the largest rarest-class count."""
    counts = {int(r): np.zeros(n_classes, dtype=int) for r in (*chosen, *rest)}
    for item in items:
        if int(item["run"]) in counts and int(item["label"]) >= 0:
            counts[int(item["run"])][int(item["label"])] += 1
    base = sum((counts[int(r)] for r in chosen), np.zeros(n_classes, dtype=int))
    return max(sorted(rest), key=lambda r: (int((base + counts[r]).min()), -r))


def _runs_split(test_runs: Sequence[int], val_runs: Sequence[int], gap: float) -> dict[str, Any]:
    return {"kind": "runs", "validate_runs": [int(r) for r in val_runs], "test_runs": [int(r) for r in test_runs],
            "gap": float(gap)}


def plan_study(items: Sequence[dict], study: Study, n_classes: int) -> StudyPlan:
    """Plan every model of a study from its (unpermuted) labelled items.

    Parameters
    ----------
    items
        All labelled items of the study's subjects at the study's lag (the bundle's
        ``experiment`` with every volume in ``train``).
    study
        The study (its ``splits``, ``experiments``, ``labels.lag`` and ``leaky`` sections).
    n_classes
        Number of classes.

    Returns
    -------
    StudyPlan
    """
    splits, lag, experiments = study.splits, study.labels.lag, study.experiments
    gap = splits.gap_for(lag)
    subjects = tuple(sorted({str(i["subject"]) for i in items}))
    folds = tuple(tuple(f) for f in run_folds(items, splits.run_folds, n_classes))
    runs = sorted({int(i["run"]) for i in items})
    chosen = splits.folds if splits.folds is not None else tuple(range(len(folds)))
    fixed = (splits.unseen_run_fold,) if isinstance(splits.unseen_run_fold, int) else ()
    if any(not 0 <= k < len(folds) for k in (*chosen, *fixed)):
        raise ConfigError(f"fold indices must lie in 0..{len(folds) - 1}", fix="correct splits.folds / unseen_run_fold")
    fold_splits = {}
    for k in range(len(folds)):
        rest = [r for r in runs if r not in folds[k]]
        fold_splits[k] = _runs_split(folds[k], validation_runs(items, rest, n_classes, splits.validation_runs), gap)
    models: list[ModelSpec] = []
    if "within" in experiments:
        for sub in subjects:
            for k in chosen:
                split = fold_splits[k]
                models.append(ModelSpec(f"within/sub-{sub}/fold-{k}", "within", (sub,), split, lag, str(k),
                                        (TestSet("heldout", (sub,), split),)))
    if "cross" in experiments:
        for k in chosen:
            split = fold_splits[k]
            models.append(ModelSpec(f"cross/fold-{k}", "cross", subjects, split, lag, str(k),
                                    (TestSet("heldout", subjects, split),)))
    groups: tuple[tuple[str, ...], ...] = ()
    if "unseen" in experiments:
        if len(subjects) < 2:
            raise ConfigError("unseen-subject models need at least 2 subjects",
                              fix="add subjects or drop 'unseen' from experiments")
        groups = tuple(tuple(g) for g in subject_folds(subjects, splits.subject_folds))
        models += _unseen_models(groups, subjects, fold_splits, splits.unseen_run_fold, lag)
    if "leaky" in experiments:
        leaky = study.leaky
        split = {"kind": "leaky_random", "test_fraction": leaky.test_fraction, "seed": leaky.seed}
        for sub in subjects:
            models.append(ModelSpec(f"leaky/sub-{sub}", "leaky", (sub,), split, leaky.lag, "random",
                                    (TestSet("leaky_random", (sub,), split, "leaky"),)))
    return StudyPlan(tuple(models), folds, groups, subjects)


def unseen_run_folds(n_groups: int, n_folds: int, setting: int | str) -> list[list[int]]:
    """The run folds held out for each subject fold (``splits.unseen_run_fold``: see the settings)."""
    if setting == "all":
        return [list(range(n_folds)) for _ in range(n_groups)]
    if setting == "rotate":
        return [[j % n_folds] for j in range(n_groups)]
    return [[int(setting)] for _ in range(n_groups)]


def _unseen_models(groups: Sequence[Sequence[str]], subjects: tuple[str, ...], fold_splits: dict[int, dict[str, Any]],
                   setting: int | str, lag: float) -> list[ModelSpec]:
    """One model per subject fold and held-out run fold, with its three test sets."""
    models = []
    for j, (unseen, run_folds_of) in enumerate(zip(groups, unseen_run_folds(len(groups), len(fold_splits), setting),
                                                   strict=True)):
        seen = tuple(s for s in subjects if s not in unseen)
        for k in run_folds_of:
            runs_split = fold_splits[k]
            split = {"kind": "subjects", "test_subjects": list(unseen), "test_runs": list(runs_split["test_runs"]),
                     "validate_runs": runs_split["validate_runs"], "gap": runs_split["gap"]}
            tests = (
                TestSet("unseen_heldout", subjects, split),
                TestSet("unseen_all_runs", subjects, {**split, "test_runs": None}, "stimulus-seen"),
                TestSet("seen_heldout", seen, runs_split),
            )
            name = f"unseen/subjects-{j}" + (f"/fold-{k}" if setting == "all" else "")
            models.append(ModelSpec(name, "unseen", subjects, split, lag, str(k), tests,
                                    held_out_subjects=tuple(unseen)))
    return models


def _patterns(decoder: str, only: Sequence[str]) -> Iterator[str]:
    """The patterns of the ``[decoder:]pattern`` tokens in ``only`` that apply to ``decoder``."""
    for token in only:
        dec, _, pattern = token.rpartition(":")
        if not dec or dec == decoder:
            yield pattern


def selected_permutations(decoder: str, only: Sequence[str] | None) -> bool:
    """Whether ``only`` selects the permutations of ``decoder`` (tokens ``permutations`` or ``all``)."""
    return only is None or any(p in ("permutations", "all") for p in _patterns(decoder, only))


def selected(decoder: str, spec: ModelSpec, only: Sequence[str] | None) -> bool:
    """Whether ``only`` (tokens ``[decoder:]pattern``) selects ``spec`` for ``decoder``.

    A pattern matches an experiment name (``within``), a model id glob (``within/sub-01/*``),
    the decoder itself (``linear``) or ``all``. Permuted models are selected by ``permutations``
    (:func:`selected_permutations`).
    """
    if spec.permutation is not None:
        return selected_permutations(decoder, only)
    return only is None or any(
        p in (decoder, "all", spec.experiment) or fnmatch.fnmatch(spec.id, p) or fnmatch.fnmatch(spec.id, p.rstrip("/") + "/*")
        for p in _patterns(decoder, only))
