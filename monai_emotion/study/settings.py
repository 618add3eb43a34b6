"""The sections of a study file as frozen, validated dataclasses (one per JSON object).

Each section checks and converts its values once, when it is made; a bad value raises a
:class:`~monai_emotion.errors.ConfigError` that :func:`monai_emotion.study.config.load_study`
re-raises naming the study file and the key. ``to_dict`` gives the JSON a study file writes.
The label rule and the preprocessing are the data package's own typed values
(:class:`~monai_emotion.data.labels.LabelRule`,
:class:`~monai_emotion.data.cache.spec.PreprocessingSpec`), not sections of their own here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_emotion.errors import ConfigError
from monai_emotion.interpret import DEFAULT_METHOD, METHODS, VOLUMES

__all__ = ["EXPERIMENTS", "PEERS", "BaselineSettings", "PeerSettings", "DataSettings", "DimensionSettings",
           "FigureSettings", "LeakySettings",
           "PermutationSettings", "RuntimeSettings", "SaliencySettings", "SplitSettings", "StatisticsSettings", "TrainingSettings",
           "experiment_names", "plain", "text"]

#: the experiments a study can run, in report order
EXPERIMENTS: tuple[str, ...] = ("within", "cross", "unseen", "leaky")


def _integer(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value!r}")
    return int(value)


def _number(name: str, value: Any, minimum: float | None = None, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if (positive and value <= 0) or (minimum is not None and value < minimum):
        raise ConfigError(f"{name} must be {'> 0' if positive else f'>= {minimum}'}, got {value!r}")
    return float(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}", fix=f"use one of {list(choices)}")
    return str(value)


def experiment_names(name: str, value: Any) -> tuple[str, ...]:
    """``value`` (a name or a list of them) as a tuple of known experiments; ``name`` for errors."""
    names = [value] if isinstance(value, str) else list(value or [])
    unknown = [e for e in names if e not in EXPERIMENTS]
    if unknown:
        raise ConfigError(f"{name}: unknown experiments {unknown}", fix=f"choose from {list(EXPERIMENTS)}")
    return tuple(names)


def text(name: str, value: Any, optional: bool = True) -> str | None:
    """``value`` as a string (numbers too: subject labels), or ``None`` when ``optional``."""
    if value is None and optional:
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ConfigError(f"{name} must be {'a string or null' if optional else 'a string'}, got {value!r}")
    return str(value)


def plain(value: Any) -> Any:
    """JSON form of a setting: typed specs by ``to_dict``, tuples as lists, paths as text."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


class _Section:
    """Common behaviour of the section dataclasses."""

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """The section as the JSON object a study file writes."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class DataSettings(_Section):
    """``data``: a real BIDS root with its annotations, or a synthetic dataset made once."""

    #: a real BIDS root of ds000113 and the studyforrest-data-annotations folder ...
    dataset_dir: str | None = None
    annotations_dir: str | None = None
    #: ... or any keywords of monai_emotion.data.synthetic.make_synthetic
    synthetic: Mapping[str, Any] | None = None
    #: where the synthetic dataset goes (default: the user cache, shared between studies)
    synthetic_root: str | None = None
    space: str = "nonlinear"
    #: preprocessing cache folder (default: the user cache, one folder per dataset and parameters)
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("dataset_dir", "annotations_dir", "synthetic_root", "cache_dir", "space"):
            self._set(name, text(name, getattr(self, name), optional=name != "space"))
        if self.synthetic is not None and not isinstance(self.synthetic, Mapping):
            raise ConfigError(f"synthetic must be an object of make_synthetic keywords, got {self.synthetic!r}",
                              fix='e.g. {"subjects": 4, "scale": 4}')
        self._set("synthetic", dict(self.synthetic) if self.synthetic is not None else None)


@dataclass(frozen=True)
class TrainingSettings(_Section):
    """``training``: top-level bundle keys (``epochs``, ``batch_size``, ``learning_rate``, ...).

    ``temporal_context`` (odd, default 1) is the bundle's key of that name (volumes per CNN
    sample, as channels) and also the linear baseline's window (the mean of the same volumes),
    so one key sets k for both (docs/temporal_context.md).
    """

    epochs: int = 50
    #: every other top-level bundle key given, passed through as it is
    options: Mapping[str, Any] = field(default_factory=dict)
    temporal_context: int = 1

    def __post_init__(self) -> None:
        from monai_emotion.data.context import check_temporal_context

        self._set("epochs", _integer("epochs", self.epochs, 1))
        self._set("options", dict(self.options))
        self._set("temporal_context", check_temporal_context(self.temporal_context, where="training.temporal_context"))

    @classmethod
    def from_dict(cls, given: Mapping[str, Any]) -> TrainingSettings:
        options = dict(given)
        epochs = options.pop("epochs", cls.epochs)
        context = options.pop("temporal_context", cls.temporal_context)
        return cls(epochs, options, context)

    def to_dict(self) -> dict[str, Any]:
        """The bundle overrides: ``epochs``, the other keys, ``temporal_context`` unless 1 (the
        bundle's default: k = 1 studies keep their overrides, and so their model digests)."""
        context = {"temporal_context": self.temporal_context} if self.temporal_context != 1 else {}
        return {"epochs": self.epochs, **self.options, **context}


@dataclass(frozen=True)
class SplitSettings(_Section):
    """``splits``: run folds (every class in every test fold), the folds modelled, unseen subjects."""

    #: runs grouped into folds with every class in every test fold (data.splits.run_folds)
    run_folds: int = 4
    #: which of those folds get within/cross models (None: all, i.e. full cross-validation)
    folds: tuple[int, ...] | None = None
    #: the run fold(s) held out in the unseen-subject models: "rotate" (subject fold j holds out
    #: run fold j mod n, so unseen_heldout covers every run at no extra cost), "all" (every
    #: subject fold x every run fold) or one fold index (one run fold for every subject fold)
    unseen_run_fold: int | str = "rotate"
    #: "seed" (the seed's 4 folds by position) or "loso"
    subject_folds: str = "seed"
    #: seconds of movie time dropped from training around held-out runs, in stimulus windows
    #: that include the label time (data.splits); None: lag + 16 s (data.splits.default_gap)
    gap: float | None = None
    #: runs used for checkpoint selection (fewer when fewer than this + 2 runs remain for training)
    validation_runs: int = 2

    def __post_init__(self) -> None:
        self._set("run_folds", _integer("run_folds", self.run_folds, 2))
        if self.folds is not None:
            self._set("folds", tuple(_integer("folds", k, 0) for k in self.folds))
        if isinstance(self.unseen_run_fold, str):
            self._set("unseen_run_fold", _choice("unseen_run_fold", self.unseen_run_fold, ("rotate", "all")))
        else:
            self._set("unseen_run_fold", _integer("unseen_run_fold", self.unseen_run_fold, 0))
        self._set("subject_folds", _choice("subject_folds", self.subject_folds, ("seed", "loso")))
        if self.gap is not None:
            self._set("gap", _number("gap", self.gap, minimum=0.0))
        self._set("validation_runs", _integer("validation_runs", self.validation_runs, 1))

    def gap_for(self, lag: float) -> float:
        """The gap in seconds for labels read ``lag`` s back (the setting, or its default)."""
        from monai_emotion.data.splits import default_gap

        return float(self.gap) if self.gap is not None else default_gap(lag)


@dataclass(frozen=True)
class LeakySettings(_Section):
    """``leaky``: the seed's protocol (random per-volume split, no lag; warned and labelled "leaky")."""

    test_fraction: float = 0.2
    lag: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        self._set("test_fraction", _number("test_fraction", self.test_fraction, positive=True))
        if self.test_fraction >= 1:
            raise ConfigError(f"test_fraction must be below 1, got {self.test_fraction}", fix="e.g. 0.2")
        self._set("lag", _number("lag", self.lag))
        self._set("seed", _integer("seed", self.seed))


@dataclass(frozen=True)
class BaselineSettings(_Section):
    """``baseline``: the linear decoder (tol 1e-2 / max_iter 100: the same held-out accuracy as
    tol 1e-4, in under half the time)."""

    enabled: bool = True
    #: "kbest" (voxel screening) or "pca"
    reduction: str = "kbest"
    k: int = 500
    components: int = 50
    C: float = 1.0
    max_iter: int = 100
    tol: float = 1e-2

    def __post_init__(self) -> None:
        self._set("enabled", _flag("enabled", self.enabled))
        self._set("reduction", _choice("reduction", self.reduction, ("kbest", "pca")))
        for name in ("k", "components", "max_iter"):
            self._set(name, _integer(name, getattr(self, name), 1))
        for name in ("C", "tol"):
            self._set(name, _number(name, getattr(self, name), positive=True))


@dataclass(frozen=True)
class PermutationSettings(_Section):
    """``permutations``: whole refits with labels circularly shifted within runs."""

    linear: int = 200
    cnn: int = 0
    cnn_experiments: tuple[str, ...] = ("within",)
    first_seed: int = 1

    def __post_init__(self) -> None:
        self._set("linear", _integer("linear", self.linear, 0))
        self._set("cnn", _integer("cnn", self.cnn, 0))
        self._set("cnn_experiments", experiment_names("cnn_experiments", self.cnn_experiments))
        self._set("first_seed", _integer("first_seed", self.first_seed))

    def count(self, decoder: str) -> int:
        """How many permutations ``decoder`` (``"linear"`` or ``"cnn"``) gets."""
        return {"linear": self.linear, "cnn": self.cnn}[decoder]


@dataclass(frozen=True)
class StatisticsSettings(_Section):
    """``statistics``: the chance tests, their correction and the block-bootstrap intervals
    (monai_emotion/study/chance.py, intervals.py)."""

    #: level of the one-sided tests against chance
    alpha: float = 0.05
    #: correction across each table of tests: "fdr" (Benjamini-Hochberg) or "holm"
    correction: str = "fdr"
    #: Monte Carlo draws of the group null when the exact enumeration would be larger
    group_draws: int = 10000
    #: bootstrap resamples of the block bootstrap
    bootstrap: int = 1000
    #: volumes of gap (censored or unlabelled) still inside one block of a bootstrap episode
    block_gap: int = 2
    #: refit the linear baseline on the other observer set's labels (AV <-> AO; decoder
    #: ``linear_ao`` or ``linear_av`` in results.csv): the 7T participants heard the audio-only movie
    observer_sensitivity: bool = True

    def __post_init__(self) -> None:
        self._set("alpha", _number("alpha", self.alpha, positive=True))
        if self.alpha >= 0.5:
            raise ConfigError(f"alpha must be below 0.5, got {self.alpha}", fix="e.g. 0.05")
        self._set("correction", _choice("correction", self.correction, ("fdr", "holm")))
        self._set("group_draws", _integer("group_draws", self.group_draws, 100))
        self._set("bootstrap", _integer("bootstrap", self.bootstrap, 0))
        self._set("block_gap", _integer("block_gap", self.block_gap, 0))
        self._set("observer_sensitivity", _flag("observer_sensitivity", self.observer_sensitivity))


@dataclass(frozen=True)
class FigureSettings(_Section):
    """``figures``: the pie's subject and emotion, the embedded model and t-SNE settings."""

    pie_subject: str | None = None
    pie_emotion: str = "LOVE"
    embedding_model: str | None = None
    tsne_perplexity: float = 30.0
    max_embedding_points: int = 2000

    def __post_init__(self) -> None:
        self._set("pie_subject", text("pie_subject", self.pie_subject))
        self._set("pie_emotion", text("pie_emotion", self.pie_emotion, optional=False))
        self._set("embedding_model", text("embedding_model", self.embedding_model))
        self._set("tsne_perplexity", _number("tsne_perplexity", self.tsne_perplexity, positive=True))
        self._set("max_embedding_points", _integer("max_embedding_points", self.max_embedding_points, 1))


@dataclass(frozen=True)
class SaliencySettings(_Section):
    """``saliency``: group saliency maps per emotion over the single-subject models
    (monai_emotion/study/saliency.py); off by default (one saliency run per model)."""

    enabled: bool = False
    #: interpret#method of configs/saliency.json
    method: str = DEFAULT_METHOD
    #: interpret#volumes of the unpermuted models ("correct" or "all"); permuted models use all
    volumes: str = "correct"
    #: experiments whose models are mapped: each must see one subject (a group map averages subjects)
    experiments: tuple[str, ...] = ("within",)

    def __post_init__(self) -> None:
        self._set("enabled", _flag("enabled", self.enabled))
        self._set("method", _choice("method", self.method, METHODS))
        self._set("volumes", _choice("volumes", self.volumes, VOLUMES))
        self._set("experiments", experiment_names("experiments", self.experiments))
        if "cross" in self.experiments or "unseen" in self.experiments:
            raise ConfigError("saliency.experiments: group maps average single-subject models",
                              fix="use 'within' and/or 'leaky'")


@dataclass(frozen=True)
class DimensionSettings(_Section):
    """``dimensions``: valence/arousal from a ridge on the linear baseline's features, scored with
    circular-shift chance (monai_emotion/study/dimensions.py, docs/dimensions.md); off by default."""

    enabled: bool = False
    #: ridge penalty per voxel (the fit's alpha is this times the number of features)
    alpha: float = 1.0
    #: circular shifts of the held-out targets per chance test (at least 19 to reach p <= 0.05)
    shifts: int = 1000
    #: experiments whose unpermuted models get a ridge fit
    experiments: tuple[str, ...] = ("within", "cross")
    names: tuple[str, ...] = ("valence", "arousal")

    def __post_init__(self) -> None:
        from monai_emotion.data.dimensions import check_dimensions

        self._set("enabled", _flag("enabled", self.enabled))
        self._set("alpha", _number("alpha", self.alpha, positive=True))
        self._set("shifts", _integer("shifts", self.shifts, 0))
        self._set("experiments", experiment_names("experiments", self.experiments))
        self._set("names", check_dimensions(self.names, where="dimensions.names"))


#: the peer decoders a study can run (their decoder names in ``results.csv``)
PEERS: tuple[str, ...] = ("nilearn",)


@dataclass(frozen=True)
class PeerSettings:
    """The study's ``peers`` section: which peer decoders run, and their nilearn knobs.

    Parameters
    ----------
    decoders
        Peer decoders to fit (a subset of :data:`PEERS`; ``[]`` turns them off).
    estimator
        ``nilearn.decoding.Decoder``'s ``estimator`` (``logistic_l2``: the field's default).
    screening_percentile
        Percentage of voxels kept by the univariate screening (nilearn's default, 20).
    C
        The regularisation values nilearn's inner cross-validation chooses from.
    experiments
        The experiments that get a peer row (default every one the study runs).
    """

    decoders: tuple[str, ...] = PEERS
    estimator: str = "logistic_l2"
    screening_percentile: float = 20.0
    C: tuple[float, ...] = (0.01, 0.1, 1.0)
    experiments: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        decoders = (self.decoders,) if isinstance(self.decoders, str) else tuple(self.decoders)
        unknown = [d for d in decoders if d not in PEERS]
        if unknown:
            raise ConfigError(f"peers.decoders: unknown {unknown}", fix=f"choose from {list(PEERS)} or []")
        object.__setattr__(self, "decoders", decoders)
        if not 0 < float(self.screening_percentile) <= 100:
            raise ConfigError(f"peers.screening_percentile={self.screening_percentile} must lie in (0, 100]")
        values = tuple(float(c) for c in (self.C if isinstance(self.C, Sequence) else [self.C]))
        if not values or min(values) <= 0:
            raise ConfigError(f"peers.C={self.C!r} must be one or more numbers > 0")
        object.__setattr__(self, "C", values)
        if self.experiments is not None:
            object.__setattr__(self, "experiments", tuple(self.experiments))

    @classmethod
    def from_dict(cls, given: Mapping[str, Any] | None) -> PeerSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(given or {}) - names)
        if unknown:
            raise ConfigError(f"unknown peers key(s) {unknown}", where="peers", fix=f"use only {sorted(names)}")
        return cls(**dict(given or {}))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["decoders"], out["C"] = list(self.decoders), list(self.C)
        if self.experiments is not None:
            out["experiments"] = list(self.experiments)
        return out

    @property
    def enabled(self) -> bool:
        return bool(self.decoders)

    def runs_for(self, spec: Any) -> bool:
        """Whether ``spec`` gets a peer row (permuted models never do)."""
        return spec.permutation is None and (self.experiments is None or spec.experiment in self.experiments)


# defined in its own module, which uses this module's helpers; imported here so that
# `from monai_emotion.study.settings import RuntimeSettings` keeps working
from monai_emotion.study.runtime_settings import RuntimeSettings  # noqa: E402
