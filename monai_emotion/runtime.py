"""What a bundle config calls at start-up and end: paths, ranks, run records, clean errors, summaries.

Kept apart from the data preparation (:mod:`monai_emotion.experiment`) and the engines
(:mod:`monai_emotion.engine`): these helpers know about the process (its command line, its
rank, its stderr), not about fMRI.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_emotion import __version__
from monai_emotion.errors import config_files_from_argv
from monai_emotion.fileio import atomic_write_json

__all__ = [
    "bundle_root",
    "user_cache_dir",
    "config_from_argv",
    "write_run_record",
    "is_rank0",
    "barrier",
    "print_summary",
    "install_clean_errors",
]


def bundle_root(default: str = ".") -> str:
    """The bundle folder of the config being run (from ``--config_file``), else ``default``.

    Lets ``python -m monai.bundle run --config_file bundles/x/configs/train.json`` work from
    any working directory while writing models/ and runs/ inside the bundle.
    """
    files = config_files_from_argv()
    if files and Path(files[0]).resolve().parent.name == "configs":
        return str(Path(files[0]).resolve().parent.parent)
    return str(Path(default).resolve())


def user_cache_dir() -> Path:
    """Where generated demo data and caches live (``$MONAI_EMOTION_HOME`` or ``~/.cache/monai_emotion``)."""
    if os.environ.get("MONAI_EMOTION_HOME"):
        return Path(os.environ["MONAI_EMOTION_HOME"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "monai_emotion"


def config_from_argv(argv: Sequence[str]) -> dict | None:
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

    if not is_rank0():
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
    atomic_write_json(out / "versions.json", record)
    resolved = config if config is not None else config_from_argv(sys.argv)
    if resolved is not None:
        atomic_write_json(out / "config_resolved.json", resolved)
    return out


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def is_rank0() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def print_summary(evaluator: Any, ckpt_dir: str | os.PathLike, title: str = "") -> None:
    """Print the best validation score and the per-emotion report of the last evaluation."""

    if not is_rank0():
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


def install_clean_errors() -> None:
    """Print an uncaught :class:`~monai_emotion.errors.MonaiEmotionError` as its two lines.

    Installed by the command line and as the first ``initialize`` step of every bundle config,
    never by ``import monai_emotion`` (a library must not change a host process's hooks).
    ``MONAI_EMOTION_DEBUG=1`` or ``--debug`` keeps the full traceback.
    """
    from monai_emotion.errors import install_excepthook

    install_excepthook()
