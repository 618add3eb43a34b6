"""Inputs for the inference bundle: every volume of some 4D runs, through the training preprocessing.

A model only sees volumes cleaned the way its training data were (mask, crop, downsampling,
per-run detrending and z-scoring), so inference caches its inputs with the preprocessing that
training recorded in ``models/data_config.json``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_emotion.data.studyforrest import SEGMENT_STARTS, TR, normalize_subject
from monai_emotion.errors import ConfigError, LayoutError

__all__ = ["save_data_config", "load_data_config", "trained_spatial_shape", "prepare_inference"]

_DATA_CONFIG = "data_config.json"
_ENTITY = re.compile(r"sub-([A-Za-z0-9]+).*?run-0*(\d+)")
#: generous per-run volume cap for inputs that are not the studyforrest movie runs
_ANY_LENGTH = (10**6,) * 99


def save_data_config(ckpt_dir: str | os.PathLike, experiment: Mapping[str, Any]) -> Path:
    """Record what inference must repeat: space, preprocessing, classes and grid shape."""
    from monai_emotion.fileio import atomic_write_json
    from monai_emotion.runtime import is_rank0

    path = Path(ckpt_dir) / _DATA_CONFIG
    if not is_rank0():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "space": experiment["space"],
        "preprocessing": experiment["preprocessing"].to_dict(),
        "classes": list(experiment["classes"]),
        "spatial_shape": list(experiment["spatial_shape"]),
    }
    return atomic_write_json(path, config)


def load_data_config(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``data_config.json`` written by training next to ``model.pt``."""
    path = Path(ckpt_dir) / _DATA_CONFIG
    if not path.is_file():
        raise ConfigError("no data_config.json beside the model", path,
                          fix="train the bundle first (training writes it), or pass --ckpt_dir")
    return json.loads(path.read_text())


def trained_spatial_shape(ckpt_dir: str | os.PathLike, default: Sequence[int]) -> list[int]:
    """The grid the model in ``ckpt_dir`` was trained on, else ``default`` (the declared shape)."""
    path = Path(ckpt_dir) / _DATA_CONFIG
    if path.is_file():
        return [int(s) for s in json.loads(path.read_text())["spatial_shape"]]
    return [int(s) for s in default]


def _stage_files(files: Sequence[Path], staging: Path) -> str:
    """Link loose 4D files under BIDS-like names so the cache can discover them; returns a glob."""
    staging.mkdir(parents=True, exist_ok=True)
    for k, path in enumerate(sorted(files), start=1):
        match = _ENTITY.search(path.name)
        subject, run = (normalize_subject(match.group(1)), int(match.group(2))) if match else ("input", k)
        link = staging / f"sub-{subject}_run-{run:02d}_bold{''.join(path.suffixes[-2:])}"
        if link.is_symlink() or link.exists():
            if link.resolve() == path.resolve():
                continue
            link.unlink()
        link.symlink_to(path.resolve())
    return f"{staging.name}/sub-*_run-*_bold.nii*"


def prepare_inference(
    inputs: str | os.PathLike,
    ckpt_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    subjects: Sequence[str | int] | None = None,
    space: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Items for every volume of the given runs, cached with the training preprocessing.

    Parameters
    ----------
    inputs
        A 4D NIfTI file, a folder of them, or a BIDS root (then ``subjects`` and ``space``
        choose the runs, as for training).
    ckpt_dir
        The model folder holding ``data_config.json``.
    cache_dir
        Where the preprocessed inputs go (default: a folder in the user cache).

    Returns
    -------
    dict
        ``items`` (one per volume, label -1), ``classes``, ``spatial_shape``, ``cache_dir``.
    """
    from monai_emotion.data.cache import prepare_cache
    from monai_emotion.runtime import user_cache_dir

    config = load_data_config(ckpt_dir)
    source = Path(inputs)
    if not source.exists():
        raise LayoutError("inference input not found", source,
                          fix="pass a 4D .nii/.nii.gz file, a folder of them, or a BIDS root")
    cache = Path(cache_dir) if cache_dir else user_cache_dir() / "inference" / source.resolve().name
    if source.is_dir() and ((source / "dataset_description.json").is_file() or any(source.glob("sub-*"))):
        root, pattern = source, space or config["space"]
    else:
        files = [source] if source.is_file() else sorted(
            p for p in source.iterdir() if p.name.endswith((".nii", ".nii.gz")))
        if not files:
            raise LayoutError("no .nii/.nii.gz files in this folder", source,
                              fix="pass a 4D run, a folder of runs, or a BIDS root")
        root = cache
        pattern = _stage_files(files, cache / "inputs")
    index = prepare_cache(root, cache / "preprocessed", space=pattern, subjects=subjects,
                          expected_volumes=_ANY_LENGTH if pattern != config["space"] else None,
                          progress=progress, **config["preprocessing"])
    items = []
    for (subject, run), entry in sorted(index.items()):
        start = SEGMENT_STARTS[run - 1] if 1 <= run <= len(SEGMENT_STARTS) else 0.0
        items += [
            {"image": entry.path, "frame": t, "label": -1, "subject": subject, "run": run,
             "movie_time": start + TR * t, "source_image": entry.source}
            for t in range(entry.n_volumes)
        ]
    return {"items": items, "classes": config["classes"], "spatial_shape": config["spatial_shape"],
            "cache_dir": str(cache)}
