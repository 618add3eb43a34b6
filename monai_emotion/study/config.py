"""The study config: one JSON file that names the data, the labels, the network, the training
settings, the splits, the experiments, the baseline and the permutations.

Every key has a default (the section dataclasses of :mod:`.settings`; :data:`DEFAULTS` is their
JSON form);
a study file only writes what it changes. Unknown keys are errors (a misspelt key would
otherwise be silently ignored). Relative paths are relative to the study file's folder. The
file is read and checked once, by :func:`load_study`, into a typed :class:`Study`: the label
rule is a :class:`~monai_emotion.data.labels.LabelRule`, the preprocessing a
:class:`~monai_emotion.data.cache.spec.PreprocessingSpec` (replaced as a whole: keys a study
does not give take the spec's defaults), every other section a frozen dataclass.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai_emotion.data.cache.spec import PreprocessingSpec
from monai_emotion.data.labels import LabelRule
from monai_emotion.data.studyforrest import normalize_subject
from monai_emotion.errors import ConfigError, MonaiEmotionError
from monai_emotion.fileio import load_json
from monai_emotion.study.alignment import AlignmentSettings
from monai_emotion.study.settings import (
    EXPERIMENTS,
    BaselineSettings,
    DataSettings,
    DimensionSettings,
    FigureSettings,
    LeakySettings,
    PeerSettings,
    PermutationSettings,
    RuntimeSettings,
    SaliencySettings,
    SplitSettings,
    StatisticsSettings,
    TrainingSettings,
    experiment_names,
    plain,
    text,
)

__all__ = ["DEFAULTS", "Study", "default_bundle", "load_study", "parse_study"]


@dataclass(frozen=True)
class Study:
    """A resolved study config: every section typed, defaults filled in, paths absolute.

    Attributes
    ----------
    name
        Study name (results folder name).
    source
        The study file.
    bundle
        Bundle root holding ``configs/train.json`` and ``configs/evaluate.json``.
    data, labels, subjects, preprocessing, network, training, runtime, splits, experiments, leaky,
    baseline, permutations, figures, bundle_overrides, statistics, peers, saliency, alignment, dimensions
        The sections of the study file (``network`` and ``bundle_overrides`` are open: keywords
        of the bundle's ``network_def`` and any other bundle override).
    """

    name: str
    source: Path
    bundle: Path
    data: DataSettings
    labels: LabelRule
    subjects: tuple[str, ...] | None
    preprocessing: PreprocessingSpec
    network: Mapping[str, Any]
    training: TrainingSettings
    runtime: RuntimeSettings
    splits: SplitSettings
    experiments: tuple[str, ...]
    leaky: LeakySettings
    baseline: BaselineSettings
    permutations: PermutationSettings
    figures: FigureSettings
    bundle_overrides: Mapping[str, Any]
    statistics: StatisticsSettings = StatisticsSettings()
    peers: PeerSettings = PeerSettings()
    saliency: SaliencySettings = SaliencySettings()
    alignment: AlignmentSettings = AlignmentSettings()
    dimensions: DimensionSettings = DimensionSettings()

    def to_dict(self) -> dict[str, Any]:
        """Every setting as JSON (what ``study.json`` in the results folder holds)."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def default_bundle() -> Path:
    """The repository's ``bundles/emotion_3dcnn`` (the package is installed from the repository)."""
    return Path(__file__).resolve().parents[2] / "bundles" / "emotion_3dcnn"


def _open(given: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {**(base or {}), **given}


def _subjects(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, int)):
        value = [value]
    return tuple(normalize_subject(s) for s in value)


def _closed(cls: type, key: str) -> Callable[[Mapping[str, Any]], Any]:
    """Parser of a closed section: its keys are the fields of ``cls``, anything else is an error."""
    names = [f.name for f in dataclasses.fields(cls)]

    def parse(value: Mapping[str, Any]) -> Any:
        unknown = [k for k in value if k not in names]
        if unknown:
            raise ConfigError(f"unknown study key '{key}.{unknown[0]}'",
                              fix=f"use one of {names} (see monai_emotion/study/config.py)")
        return cls(**value)

    return parse


#: each top-level key: the parser of its JSON value and the value parsed when a study omits it
_KEYS: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "name": (lambda v: text("name", v), None),
    "bundle": (lambda v: text("bundle", v), None),
    "data": (_closed(DataSettings, "data"), {}),
    "labels": (_closed(LabelRule, "labels"), {}),
    "subjects": (_subjects, None),
    "preprocessing": (_closed(PreprocessingSpec, "preprocessing"), {}),
    "network": (lambda v: _open(v, {"head": "flatten"}), {}),
    "training": (TrainingSettings.from_dict, {}),
    "runtime": (_closed(RuntimeSettings, "runtime"), {}),
    "splits": (_closed(SplitSettings, "splits"), {}),
    "experiments": (lambda v: experiment_names("experiments", v), list(EXPERIMENTS)),
    "leaky": (_closed(LeakySettings, "leaky"), {}),
    "baseline": (_closed(BaselineSettings, "baseline"), {}),
    "permutations": (_closed(PermutationSettings, "permutations"), {}),
    "figures": (_closed(FigureSettings, "figures"), {}),
    "statistics": (_closed(StatisticsSettings, "statistics"), {}),
    "peers": (PeerSettings.from_dict, {}),
    "saliency": (_closed(SaliencySettings, "saliency"), {}),
    "alignment": (_closed(AlignmentSettings, "alignment"), {}),
    "dimensions": (_closed(DimensionSettings, "dimensions"), {}),
    "bundle_overrides": (_open, {}),
}


def _section(key: str, given: Mapping[str, Any], source: Path) -> Any:
    parse, default = _KEYS[key]
    value = given.get(key, default)
    if isinstance(default, dict) and not isinstance(value, Mapping):
        raise ConfigError(f"{key!r} must be an object", source, fix=f"write {key} as {{...}}")
    return _wrapped(key, source, parse, value)


def _wrapped(key: str, source: Path, parse: Callable[[Any], Any], value: Any) -> Any:
    """``parse(value)``; a bad value's error names the study file and the key."""
    try:
        return parse(value)
    except MonaiEmotionError as exc:
        raise ConfigError(exc.what, source, where=f"key '{key}'", fix=exc.fix) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), source, where=f"key '{key}'", fix="see monai_emotion/study/config.py") from None


def _absolute(value: str | None, root: Path) -> str | None:
    if value in (None, ""):
        return None
    path = Path(os.path.expanduser(str(value)))
    return str(path if path.is_absolute() else (root / path).resolve())


def _check(study: Study) -> None:
    data, source = study.data, study.source
    if bool(data.dataset_dir) == bool(data.synthetic):
        raise ConfigError("data needs exactly one of 'dataset_dir' (a BIDS root) or 'synthetic' (a spec)",
                          source, fix='e.g. "data": {"synthetic": {"subjects": 4, "scale": 4}}')
    if data.dataset_dir and not data.annotations_dir:
        raise ConfigError("a real dataset needs data.annotations_dir", source,
                          fix="point it at the studyforrest-data-annotations folder (with raw/)")
    if not study.experiments:
        raise ConfigError("no experiments", source, fix=f"choose from {list(EXPERIMENTS)}")
    for required in ("train.json", "evaluate.json"):
        if not (study.bundle / "configs" / required).is_file():
            raise ConfigError(f"bundle has no configs/{required}", study.bundle,
                              fix="set 'bundle' to the bundle root (the folder holding configs/)")


def parse_study(given: Mapping[str, Any], source: str | os.PathLike, name: str | None = None) -> Study:
    """Check a study's JSON object and fill in the defaults.

    Parameters
    ----------
    given
        The study file's object.
    source
        The study file: named in every error; relative paths are relative to its folder.
    name
        Overrides the study's name (default: ``given["name"]``, else the file's stem).

    Returns
    -------
    Study
    """
    source = Path(source).resolve()
    if not isinstance(given, Mapping):
        raise ConfigError("a study file holds one JSON object", source, fix="write {\"data\": ..., ...}")
    unknown = [k for k in given if k not in _KEYS]
    if unknown:
        raise ConfigError(f"unknown study key '{unknown[0]}'", source,
                          fix=f"use one of {sorted(_KEYS)} (see monai_emotion/study/config.py)")
    values = {key: _section(key, given, source) for key in _KEYS}
    root = source.parent
    data: DataSettings = values["data"]
    values["data"] = dataclasses.replace(data, **{k: _absolute(getattr(data, k), root) for k in
                                                  ("dataset_dir", "annotations_dir", "synthetic_root", "cache_dir")})
    values["labels"] = values["labels"].replace(emotion_map=_absolute(values["labels"].emotion_map, root))
    values["preprocessing"] = values["preprocessing"].replace(mask=_absolute(values["preprocessing"].mask, root))
    values["bundle"] = Path(_absolute(values["bundle"], root) or default_bundle())
    values["name"] = str(name or values["name"] or source.stem)
    study = Study(source=source, **values)
    _check(study)
    return study


def load_study(path: str | os.PathLike, name: str | None = None) -> Study:
    """Read a study file, fill in the defaults and check it (:func:`parse_study`).

    Parameters
    ----------
    path
        The study JSON file.
    name
        Overrides the study's name.

    Returns
    -------
    Study
    """
    source = Path(path).resolve()
    given = load_json(source, ConfigError, fix="pass an existing study JSON file with valid JSON syntax")
    return parse_study(given, source, name)


def _defaults() -> dict[str, Any]:
    return {key: plain(parse(default)) for key, (parse, default) in _KEYS.items()}


#: every key's default, as a study file would write it (``preprocessing``: the spec's defaults)
DEFAULTS: dict[str, Any] = _defaults()
