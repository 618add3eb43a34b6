"""The study config: one JSON file that names the data, the labels, the network, the training
settings, the splits, the experiments, the baseline and the permutations.

Every key has a default (:data:`DEFAULTS`); a study file only writes what it changes. Unknown
keys are errors (a misspelt key would otherwise be silently ignored). Relative paths are
relative to the study file's folder.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai_emotion.errors import ConfigError

__all__ = ["DEFAULTS", "EXPERIMENTS", "Study", "load_study", "default_bundle"]

#: the experiments a study can run, in report order
EXPERIMENTS: tuple[str, ...] = ("within", "cross", "unseen", "leaky")

DEFAULTS: dict[str, Any] = {
    # name of results/<name>/ (default: the study file's stem)
    "name": None,
    # bundle root holding configs/train.json and configs/evaluate.json (default: the packaged one)
    "bundle": None,
    "data": {
        # a real BIDS root of ds000113 and the studyforrest-data-annotations folder ...
        "dataset_dir": None,
        "annotations_dir": None,
        # ... or a synthetic dataset made once: any keyword of monai_emotion.data.synthetic.make_synthetic
        "synthetic": None,
        # where the synthetic dataset goes (default: the user cache, shared between studies)
        "synthetic_root": None,
        "space": "nonlinear",
        # preprocessing cache folder (default: the user cache, one folder per dataset and parameters)
        "cache_dir": None,
    },
    "labels": {"observers": "av", "threshold": 0.5, "lag": 4.0},
    # subject labels to use (default: every subject found)
    "subjects": None,
    # the bundle's data#preprocessing, replaced as a whole. One grid for all subjects ("group"
    # mask), or the cross-subject models could not batch frames of different subjects. No
    # high-pass by default: on full-length runs a 0.01 Hz one removes decodable signal; runs cut
    # short (demos) need one, see docs/validation.md
    "preprocessing": {"downsample": 2, "mask_strategy": "group", "detrend": True, "standardize": True,
                      "high_pass": None},
    # keywords of the bundle's network_def (EmotionCNN3D)
    "network": {"head": "flatten"},
    # top-level bundle keys: epochs, batch_size, learning_rate, val_interval, seed, cache_rate, ...
    "training": {"epochs": 50},
    # this process: torch intra-op threads (1 is fastest on small, shared CPUs; see docs/performance.md)
    # parallel_baseline: fit the linear baseline and its permutations in a second process while
    # the CNNs train (each side uses one core)
    "runtime": {"threads": 1, "parallel_baseline": True},
    "splits": {
        # runs grouped into folds with every class in every test fold (data.splits.run_folds)
        "run_folds": 4,
        # which of those folds get within/cross models (null: all, i.e. full cross-validation)
        "folds": None,
        # the run fold whose runs are held out in the unseen-subject models
        "unseen_run_fold": 0,
        # "seed" (the seed's 4 folds by position) or "loso"
        "subject_folds": "seed",
        # seconds of movie time dropped from training around held-out runs (beyond their overlap)
        "gap": 0.0,
    },
    "experiments": list(EXPERIMENTS),
    # the seed's protocol: random per-volume split, no lag (warned and labelled "leaky")
    "leaky": {"test_fraction": 0.2, "lag": 0.0, "seed": 0},
    # tol 1e-2 / max_iter 100: the same held-out accuracy as tol 1e-4, in under half the time
    "baseline": {"enabled": True, "reduction": "kbest", "k": 500, "components": 50, "C": 1.0,
                 "max_iter": 100, "tol": 1e-2},
    "permutations": {
        # whole refits with labels circularly shifted within runs
        "linear": 200,
        "cnn": 0,
        "cnn_experiments": ["within"],
        "first_seed": 1,
    },
    "figures": {"pie_subject": None, "pie_emotion": "LOVE", "embedding_model": None,
                "tsne_perplexity": 30.0, "max_embedding_points": 2000},
    # any other bundle override, e.g. {"train#handlers#0#interval": 2}
    "bundle_overrides": {},
}

_OPEN_SECTIONS = ("network", "training", "preprocessing", "bundle_overrides")


def default_bundle() -> Path:
    """The repository's ``bundles/emotion_3dcnn`` (the package is installed from the repository)."""
    return Path(__file__).resolve().parents[2] / "bundles" / "emotion_3dcnn"


@dataclass(frozen=True)
class Study:
    """A resolved study config.

    Attributes
    ----------
    name
        Study name (results folder name).
    source
        The study file.
    settings
        Every setting, defaults filled in, paths absolute.
    """

    name: str
    source: Path
    settings: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.settings[key]

    @property
    def bundle(self) -> Path:
        return Path(self.settings["bundle"])

    @property
    def experiments(self) -> list[str]:
        return list(self.settings["experiments"])

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "source": str(self.source), **self.settings}, indent=2,
                          default=str) + "\n"


def _merge(base: dict[str, Any], given: Mapping[str, Any], path: str, source: Path) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in given.items():
        where = f"{path}{key}"
        if key not in base:
            raise ConfigError(f"unknown study key {where!r}", source,
                              fix=f"use one of {sorted(base)} (see monai_emotion/study/config.py)")
        if isinstance(base[key], dict) and key not in _OPEN_SECTIONS and base[key]:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where!r} must be an object", source, fix=f"write {where} as {{...}}")
            out[key] = _merge(base[key], value, f"{where}.", source)
        elif key in _OPEN_SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where!r} must be an object", source, fix=f"write {where} as {{...}}")
            # preprocessing replaces the bundle's whole dict; the others are merged key by key
            out[key] = dict(value) if key == "preprocessing" else {**base[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return out


def _absolute(value: str | None, root: Path) -> str | None:
    if value in (None, ""):
        return None
    path = Path(os.path.expanduser(str(value)))
    return str(path if path.is_absolute() else (root / path).resolve())


def _check(settings: dict[str, Any], source: Path) -> None:
    data = settings["data"]
    if bool(data["dataset_dir"]) == bool(data["synthetic"]):
        raise ConfigError("data needs exactly one of 'dataset_dir' (a BIDS root) or 'synthetic' (a spec)",
                          source, fix='e.g. "data": {"synthetic": {"subjects": 4, "scale": 4}}')
    if data["dataset_dir"] and not data["annotations_dir"]:
        raise ConfigError("a real dataset needs data.annotations_dir", source,
                          fix="point it at the studyforrest-data-annotations folder (with raw/)")
    unknown = [e for e in settings["experiments"] if e not in EXPERIMENTS]
    if unknown or not settings["experiments"]:
        raise ConfigError(f"unknown or no experiments {unknown}", source, fix=f"choose from {list(EXPERIMENTS)}")
    splits = settings["splits"]
    if splits["subject_folds"] not in ("seed", "loso"):
        raise ConfigError(f"splits.subject_folds={splits['subject_folds']!r}", source, fix="use 'seed' or 'loso'")
    if int(splits["run_folds"]) < 2:
        raise ConfigError("splits.run_folds must be at least 2", source, fix="e.g. 4 (two runs per fold)")
    perms = settings["permutations"]
    bad = [e for e in perms["cnn_experiments"] if e not in EXPERIMENTS]
    if bad or int(perms["linear"]) < 0 or int(perms["cnn"]) < 0:
        raise ConfigError("permutations: counts must be >= 0 and cnn_experiments known experiments",
                          source, fix="e.g. {\"linear\": 200, \"cnn\": 3, \"cnn_experiments\": [\"within\"]}")
    if settings["baseline"]["reduction"] not in ("kbest", "pca"):
        raise ConfigError(f"baseline.reduction={settings['baseline']['reduction']!r}", source,
                          fix="use 'kbest' (voxel screening) or 'pca'")
    if "epochs" not in settings["training"]:
        raise ConfigError("training.epochs is missing", source, fix="give the number of epochs")


def load_study(path: str | os.PathLike, name: str | None = None) -> Study:
    """Read a study file, fill in the defaults and check it.

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
    try:
        given = json.loads(source.read_text())
    except FileNotFoundError:
        raise ConfigError("study file not found", source, fix="pass an existing study JSON file") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON ({exc.msg})", source, line=exc.lineno, fix="fix the JSON syntax") from None
    if not isinstance(given, dict):
        raise ConfigError("a study file holds one JSON object", source, fix="write {\"data\": ..., ...}")
    settings = _merge(DEFAULTS, given, "", source)
    root = source.parent
    settings["bundle"] = _absolute(settings["bundle"], root) or str(default_bundle())
    data = settings["data"]
    for key in ("dataset_dir", "annotations_dir", "synthetic_root", "cache_dir"):
        data[key] = _absolute(data[key], root)
    _check(settings, source)
    for required in ("train.json", "evaluate.json"):
        if not (Path(settings["bundle"]) / "configs" / required).is_file():
            raise ConfigError(f"bundle has no configs/{required}", settings["bundle"],
                              fix="set 'bundle' to the bundle root (the folder holding configs/)")
    study_name = name or settings.pop("name") or source.stem
    settings.pop("name", None)
    return Study(name=str(study_name), source=source, settings=settings)
