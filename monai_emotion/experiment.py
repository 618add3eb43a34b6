"""From a bundle config's data section to cached train/validate/test item lists.

The bundle configs call :func:`prepare_experiment` once; it discovers the runs, derives the
labels, builds (or reuses) the preprocessing cache and applies the configured split. With no
``dataset_dir`` it makes (once) and uses a small synthetic studyforrest demo dataset in the
user cache folder, so the bundle trains out of the box.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_emotion import __version__
from monai_emotion.data.cache_io import atomic_write_text
from monai_emotion.data.datalist import class_counts, make_datalist
from monai_emotion.data.labels import circular_shift_labels, derive_labels
from monai_emotion.data.splits import (
    leaky_random_split,
    split_by_runs,
    split_by_subjects,
)
from monai_emotion.data.studyforrest import (
    SPACES,
    Discovery,
    bold_path,
    discover_runs,
    normalize_subject,
)
from monai_emotion.errors import ConfigError, LayoutError, MonaiEmotionError

__all__ = [
    "DEMO",
    "bundle_root",
    "user_cache_dir",
    "ensure_demo_dataset",
    "make_splits",
    "prepare_experiment",
    "write_run_record",
    "latest_checkpoint",
    "print_summary",
    "attach_training_state",
]

#: the demo dataset: small enough for a 2-core CPU to train 50 epochs in minutes. Its planted
#: signal is 2.5x the generator's default (realistic, harder) strengths, so that ~240 training
#: volumes suffice; docs/validation.md measures the defaults.
DEMO: dict[str, Any] = {
    "subjects": 1,
    "scale": 4,
    "volumes_per_run": 90,
    "seed": 7,
    "class_strength": {"HAPPINESS": 2.0, "SADNESS": 2.0, "FEAR": 2.5, "LOVE": 1.5, "ANGER": 2.0},
}


def bundle_root(default: str = ".") -> str:
    """The bundle folder of the config being run (from ``--config_file``), else ``default``.

    Lets ``python -m monai.bundle run --config_file bundles/x/configs/train.json`` work from
    any working directory while writing models/ and runs/ inside the bundle.
    """
    argv = sys.argv
    for k, arg in enumerate(argv):
        value = None
        if arg == "--config_file" and k + 1 < len(argv):
            value = argv[k + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        if value:
            first = value.strip("[]").split(",")[0].strip().strip("'\"")
            path = Path(first).resolve()
            if path.parent.name == "configs":
                return str(path.parent.parent)
    return str(Path(default).resolve())


def user_cache_dir() -> Path:
    """Where generated demo data and caches live (``$MONAI_EMOTION_HOME`` or ``~/.cache/monai_emotion``)."""
    if os.environ.get("MONAI_EMOTION_HOME"):
        return Path(os.environ["MONAI_EMOTION_HOME"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "monai_emotion"


def ensure_demo_dataset(root: str | os.PathLike | None = None, **overrides: Any) -> Path:
    """Generate the synthetic demo dataset once; later calls reuse it."""
    from monai_emotion.data.synthetic import make_synthetic

    params = {**DEMO, **overrides}
    tag = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    root = Path(root) if root else user_cache_dir() / f"demo-{tag}"
    done = root / ".complete"
    if not done.is_file():
        print(f"generating the synthetic demo dataset in {root} (once)", flush=True)
        # overwrite: a folder without .complete is an interrupted generation of ours
        make_synthetic(root, progress=False, overwrite=True, **params)
        done.write_text(json.dumps(params) + "\n")
    return root


def make_splits(items: Sequence[dict], split: Mapping[str, Any]) -> dict[str, list[dict]]:
    """Apply a split spec from the config.

    ``{"kind": "runs", "validate_runs": [...], "test_runs": [...], "gap": 0}``: held-out runs
    (within-subject, or cross-subject when several subjects are given).
    ``{"kind": "subjects", "test_subjects": [...], "validate_runs": [...], "test_runs": [...]}``:
    unseen subjects; their ``test_runs`` are also held out of training (no movie moment seen),
    unless ``test_runs`` is null (then the report must say the stimulus was seen).
    ``{"kind": "leaky_random", "test_fraction": 0.2, "seed": 0}``: the seed's per-volume split
    (warns; for the leaky comparison only).
    """
    kind = split.get("kind", "runs")
    gap = float(split.get("gap", 0.0))
    if kind == "runs":
        val_runs, test_runs = list(split.get("validate_runs") or []), list(split.get("test_runs") or [])
        if set(val_runs) & set(test_runs):
            raise ConfigError(f"runs {sorted(set(val_runs) & set(test_runs))} are both validation and test",
                              fix="give disjoint validate_runs and test_runs")
        rest, test = split_by_runs(items, test_runs, gap) if test_runs else (list(items), [])
        train, val = split_by_runs(rest, val_runs, gap) if val_runs else (rest, [])
        return {"train": train, "validate": val, "test": test}
    if kind == "subjects":
        unseen = split.get("test_subjects") or []
        test_runs = split.get("test_runs")
        train_pool, test = split_by_subjects(items, unseen, test_runs, gap)
        val_runs = list(split.get("validate_runs") or [])
        train, val = split_by_runs(train_pool, val_runs, gap) if val_runs else (train_pool, [])
        return {"train": train, "validate": val, "test": test}
    if kind == "leaky_random":
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            train, test = leaky_random_split(items, float(split.get("test_fraction", 0.2)),
                                             int(split.get("seed", 0)))
        return {"train": train, "validate": test, "test": test}
    raise ConfigError(f"unknown split kind '{kind}'", fix="use 'runs', 'subjects' or 'leaky_random'")


def prepare_experiment(
    dataset_dir: str | None = None,
    annotations_dir: str | None = None,
    cache_dir: str | None = None,
    space: str = "nonlinear",
    subjects: Sequence[str | int] | None = None,
    runs: Sequence[int] | None = None,
    observers: str = "av",
    threshold: float = 0.5,
    lag: float = 4.0,
    preprocessing: Mapping[str, Any] | None = None,
    split: Mapping[str, Any] | None = None,
    demo: Mapping[str, Any] | None = None,
    label_permutation: int | None = None,
    progress: bool = True,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Everything a bundle needs about the data, as one dict.

    Checks run before anything is cached: explicitly listed ``subjects`` and ``runs`` must
    exist, and the config's ``num_classes`` / ``class_names`` (when given) must be the
    labels' classes, in order (a network with other outputs would train on shifted labels).

    Returns
    -------
    dict
        ``train``, ``validate``, ``test`` (item lists pointing at cached runs), ``classes``,
        ``spatial_shape`` of the cached grid, ``counts`` per split, ``dataset_dir``,
        ``annotations_dir``, ``cache_dir``, ``problems`` (missing/short runs).
    """
    from monai_emotion.data.cache import attach_cache, prepare_cache

    if not dataset_dir:
        # under DDP one rank generates the demo data while the others wait for it
        if _is_rank0():
            dataset_dir = str(ensure_demo_dataset(**dict(demo or {})))
        _barrier()
        dataset_dir = str(ensure_demo_dataset(**dict(demo or {})))
        annotations_dir = annotations_dir or str(Path(dataset_dir) / "annotations")
    if not annotations_dir:
        raise ConfigError("no annotations_dir given for a real dataset",
                          fix="pass --annotations_dir /path/to/studyforrest-data-annotations")
    if not Path(dataset_dir).is_dir():
        raise LayoutError("dataset_dir not found", dataset_dir, fix="pass the BIDS root of ds000113")
    if not cache_dir:
        # never inside the dataset (inputs stay untouched); one folder per dataset and parameter set
        params = {k: v for k, v in dict(preprocessing or {}).items() if k != "shard"}
        key = json.dumps([str(Path(dataset_dir).resolve()), space, params], sort_keys=True)
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        cache_dir = str(user_cache_dir() / "cache" / f"{Path(dataset_dir).name}-{digest}")
    found = discover_runs(dataset_dir, space, subjects, runs)
    _check_selection(found, dataset_dir, space, subjects, runs)
    for problem in found.problems[:4]:
        print(f"! {problem}", flush=True)
    if len(found.problems) > 4:
        print(f"! ... and {len(found.problems) - 4} more (listed in versions.json, data.problems)", flush=True)
    labels = derive_labels(annotations_dir, observers, threshold, lag)
    _check_classes(labels, num_classes, class_names)
    if label_permutation is not None:
        # null model for chance levels: labels rotated within runs, the BOLD untouched
        labels = circular_shift_labels(labels, int(label_permutation))
    datalist = make_datalist(found, labels)
    # split before caching: a split that cannot work fails in seconds, not after hours
    parts = make_splits(datalist["items"],
                        split or {"kind": "runs", "validate_runs": [7], "test_runs": [8]})
    if not parts["train"]:
        raise ConfigError("the split leaves no training items", fix="hold out fewer runs or subjects")
    index = prepare_cache(dataset_dir, cache_dir, space=space, subjects=found.subjects,
                          runs=runs, progress=progress, **dict(preprocessing or {}))
    parts = {name: attach_cache(part, index) for name, part in parts.items()}
    first = parts["train"][0]
    shape = index[first["subject"], first["run"]].shape[1:]
    return {
        **parts,
        "classes": datalist["classes"],
        "spatial_shape": tuple(int(s) for s in shape),
        "counts": {k: class_counts(v) for k, v in parts.items()},
        "dataset_dir": str(dataset_dir),
        "annotations_dir": str(annotations_dir),
        "cache_dir": str(cache_dir),
        "problems": list(found.problems),
    }


def _check_selection(
    found: Discovery,
    dataset_dir: str,
    space: str,
    subjects: Sequence[str | int] | None,
    runs: Sequence[int] | None,
) -> None:
    """Subjects and runs the config names explicitly must exist (discovery only reports gaps)."""
    if subjects is not None:
        missing = [s for s in map(normalize_subject, subjects) if s not in found.subjects]
        if missing:
            raise LayoutError(
                f"no runs for subject(s) {', '.join('sub-' + s for s in missing)} in space '{space}'",
                dataset_dir,
                fix="correct data#subjects (null: every subject found), or the dataset_dir/space",
            )
    if runs is not None:
        have = {(r.subject, r.run) for r in found.runs}
        for subject in found.subjects:
            for run in sorted({int(r) for r in runs}):
                if (subject, run) not in have:
                    where = bold_path(dataset_dir, subject, run, space) if space in SPACES else dataset_dir
                    raise LayoutError(
                        f"sub-{subject} run {run} is missing (data#runs lists it)",
                        where,
                        fix="copy the run into the dataset, or leave it out of data#runs",
                    )


def _check_classes(
    labels: Any, num_classes: int | None, class_names: Sequence[str] | None
) -> None:
    """The config's class count and names must be the labels' (the emotion map's), in order."""
    classes = [str(c) for c in labels.attrs.get("classes", [])]
    source = labels.attrs.get("emotion_map", "the emotion map")
    if num_classes is not None and int(num_classes) != len(classes):
        raise ConfigError(
            f"num_classes={num_classes}, but the labels have {len(classes)} classes {classes} "
            f"(from {source})",
            where="config 'num_classes'",
            fix=f"set num_classes to {len(classes)} and class_names to {classes}, or label with an "
            "emotion map of that many classes",
        )
    if class_names is not None and [str(c) for c in class_names] != classes:
        raise ConfigError(
            f"class_names {list(class_names)} are not the labels' classes {classes} (in this order, "
            f"from {source})",
            where="config 'class_names'",
            fix=f"set class_names to {classes}",
        )


def _config_from_argv(argv: Sequence[str]) -> dict | None:
    """Re-read the config files named on a ``monai.bundle run`` command line, with its overrides."""
    from monai.bundle import ConfigParser

    files, overrides, k = None, {}, 0
    skip = {"meta_file", "logging_file", "args_file", "tracking", "workflow_type"}
    while k < len(argv):
        arg = argv[k]
        if arg.startswith("--"):
            key, _, value = arg[2:].partition("=")
            if not _ and k + 1 < len(argv):
                value, k = argv[k + 1], k + 1
            if key == "config_file":
                files = value
            elif key not in skip:
                overrides[key.replace("#", "::")] = value
        k += 1
    if files is None:
        return None
    parser = ConfigParser()
    parser.read_config(files.strip("[]").replace("'", "").replace('"', "").split(",") if "[" in files else files)
    for key, value in overrides.items():
        try:
            parser[key] = json.loads(value)
        except json.JSONDecodeError:
            parser[key] = value
    return parser.get()


def write_run_record(
    output_dir: str | os.PathLike, experiment: Mapping | None = None, config: Any = None
) -> Path:
    """Write the config as run (files + command-line overrides), the data summary and versions.

    Writes ``config_resolved.json`` and ``versions.json`` into ``output_dir`` (rank 0 only under
    DDP). ``config`` defaults to the config files and overrides on this process's command line.
    """
    import monai
    import numpy
    import torch

    if not _is_rank0():
        return Path(output_dir)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "monai_emotion": __version__,
        "monai": monai.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "argv": sys.argv,
    }
    if experiment is not None:
        record["data"] = {k: v for k, v in experiment.items() if k not in ("train", "validate", "test")}
        record["data"]["n_items"] = {k: len(experiment[k]) for k in ("train", "validate", "test")}
    # atomic: a full disk or a kill never leaves half a record under the final name
    atomic_write_text(out / "versions.json", json.dumps(record, indent=2, default=str) + "\n",
                      MonaiEmotionError)
    resolved = config if config is not None else _config_from_argv(sys.argv)
    if resolved is not None:
        atomic_write_text(out / "config_resolved.json",
                          json.dumps(resolved, indent=2, default=str) + "\n", MonaiEmotionError)
    return out


def latest_checkpoint(resume: str, ckpt_dir: str | os.PathLike) -> str:
    """``resume`` as a checkpoint path; ``"latest"`` picks the newest ``training_state*.pt``.

    An empty ``resume`` returns ``""`` (the config's loader is disabled then).
    """
    if not resume:
        return ""
    if resume != "latest":
        if not Path(resume).is_file():
            raise ConfigError("checkpoint to resume from not found", resume,
                              fix="pass a training_state_*.pt path, or --resume latest")
        return str(resume)
    from monai_emotion.checkpoints import checkpoint_epoch

    # newest first by time: states of an older, longer training in the same folder may carry
    # higher epochs; the epoch only breaks ties between files written within one clock tick
    states = sorted(Path(ckpt_dir).glob("training_state*.pt"),
                    key=lambda p: (p.stat().st_mtime_ns, checkpoint_epoch(p)))
    if not states:
        raise ConfigError("no training state to resume from", ckpt_dir,
                          fix="train once first (training_state_*.pt is written every epoch)")
    return str(states[-1])


def attach_training_state(
    trainer: Any, objects: Mapping[str, Any], ckpt_dir: str | os.PathLike, resume: str = ""
) -> None:
    """Save the full training state every epoch and, with ``resume``, load it before the run.

    The trainer itself is part of the state (epoch, iteration), which a config cannot put in a
    handler of its own (circular reference): the bundle calls this from its run list instead.
    States are written atomically and the last two are kept, so a kill at any moment leaves a
    complete one (ignite deletes the oldest before writing the next). The state to resume from
    is read with ``weights_only=True`` and checked against the objects before training starts
    (:class:`~monai_emotion.checkpoints.CheckpointLoader`). Only rank 0 writes under DDP.
    """
    import ignite.distributed as idist
    from ignite.engine import Events
    from ignite.handlers import Checkpoint

    from monai_emotion.checkpoints import AtomicSaveHandler, CheckpointLoader

    # ignite builds its process-group view lazily with a collective call: make every rank
    # take part now, before only rank 0 creates the saver (which would otherwise hang)
    idist.sync()
    state = {**objects, "trainer": trainer}
    if resume:
        path = latest_checkpoint(resume, ckpt_dir)
        CheckpointLoader(load_path=path, load_dict=state, map_location="cpu").attach(trainer)
        print(f"resuming from {path}", flush=True)
    if not _is_rank0():
        return
    saver = Checkpoint(state, AtomicSaveHandler(ckpt_dir), filename_prefix="training_state",
                       score_function=lambda engine: engine.state.epoch, score_name="epoch",
                       n_saved=2)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, saver)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _is_rank0() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def print_summary(evaluator: Any, ckpt_dir: str | os.PathLike, title: str = "") -> None:
    """Print the best validation score and the per-emotion report of the last evaluation."""

    if not _is_rank0():
        return
    state = evaluator.state
    name = getattr(evaluator, "key_metric_name", None) or next(iter(state.metrics), "")
    details = (getattr(state, "metric_details", None) or {}).get(name)
    if title:
        print(f"\n{title} ({Path(ckpt_dir) / 'model.pt'})")
    else:
        print(f"\nbest {name}: {state.best_metric:.3f} at epoch {state.best_metric_epoch} "
              f"-> {Path(ckpt_dir) / 'model.pt'}")
    if isinstance(details, Mapping) and "recall" in details:
        k = len(details["recall"])
        print(f"{'results' if title else 'last validation'}: accuracy {details['accuracy']:.3f}, balanced accuracy "
              f"{details['balanced_accuracy']:.3f}, macro F1 {details['macro_f1']:.3f} (chance {1 / k:.2f})")
        print(f"{'emotion':<12}{'recall':>8}{'precision':>11}{'n':>6}")
        for cls, recall in details["recall"].items():
            precision = details["precision"][cls]
            n = details.get("support", details.get("counts", {})).get(cls, "")
            print(f"{cls:<12}{_fmt(recall):>8}{_fmt(precision):>11}{n!s:>6}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
