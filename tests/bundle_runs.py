"""Helpers shared by the subprocess tests: tiny synthetic data, bundle command lines, file hashes.

Not a test module: the fault-injection, determinism and safety tests import it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "emotion_3dcnn" / "configs"
TRAIN = str(CONFIGS / "train.json")
EVALUATE = str(CONFIGS / "evaluate.json")
#: small enough for a shared 2-core machine: 8 runs of 40 volumes of 22 x 30 x 8 voxels
TINY = {"subjects": 1, "scale": 6, "volumes_per_run": 40, "seed": 0}


def tiny_bundle(root: Path) -> dict:
    """One synthetic subject on a coarse grid (seed 3) under ``root`` and the overrides a bundle
    run on it needs: held-out runs 7 (validation) and 8 (test), batches of 8."""
    from monai_emotion.data.synthetic import make_synthetic

    data = root / "bids"
    make_synthetic(data, subjects=1, scale=6, volumes_per_run=40, seed=3, progress=False)
    return {"root": root, "overrides": {
        "dataset_dir": str(data), "annotations_dir": str(data / "annotations"), "cache_dir": str(root / "cache"),
        "data#split": {"kind": "runs", "validate_runs": [7], "test_runs": [8], "gap": 0}, "batch_size": 8}}


def tiny_training(root: Path) -> dict:
    """:func:`tiny_bundle` with the training outputs and checkpoints under ``root`` too."""
    bundle = tiny_bundle(root)
    bundle["overrides"].update({"output_dir": str(root / "runs"), "ckpt_dir": str(root / "models")})
    return bundle


def train_parser(tiny: dict, monkeypatch, **overrides: object):
    """``configs/train.json`` parsed in-process on a :func:`tiny_training` world, with ``overrides``."""
    from monai.bundle import ConfigParser

    monkeypatch.setenv("MONAI_EMOTION_HOME", str(tiny["root"] / "home"))
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({**tiny["overrides"], **overrides})
    return parser


def tiny_dataset(root: Path) -> Path:
    """The tiny synthetic dataset under ``root`` (made once per test session, then reused)."""
    from monai_emotion.data.synthetic import make_synthetic

    done = root / ".complete"
    if not done.is_file():
        make_synthetic(root, progress=False, **TINY)
        done.write_text("ok\n")
    return root


def bundle_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment of a bundle subprocess: its own cache home, one thread (fast and repeatable)."""
    env = dict(os.environ)
    env.pop("MONAI_EMOTION_DEBUG", None)
    env.update(MONAI_EMOTION_HOME=str(home), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONUNBUFFERED="1", **extra)
    return env


#: how a bundle is started: ``python -m monai.bundle run ...``
MONAI_BUNDLE = ("-m", "monai.bundle")


def bundle_args(workflow: str, configs: Iterable[str], overrides: Mapping[str, object]) -> list[str]:
    """The arguments after ``python -m monai.bundle``: ``run <workflow> --config_file ...``."""
    files = list(configs)
    config = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    args = ["run", workflow, "--config_file", config]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    return args


def train_overrides(data: Path, out: Path, epochs: int, **extra: object) -> dict[str, object]:
    """Overrides that keep a training run's data, cache and outputs inside the test's folders."""
    return {
        "epochs": epochs,
        "batch_size": 8,
        "dataset_dir": data,
        "annotations_dir": data / "annotations",
        "cache_dir": out / "cache",
        "output_dir": out / "runs",
        "ckpt_dir": out / "models",
        **extra,
    }


def run_bundle(
    workflow: str,
    configs: Iterable[str],
    overrides: Mapping[str, object],
    home: Path,
    *,
    timeout: float = 120,
    launcher: Iterable[str] = MONAI_BUNDLE,
) -> subprocess.CompletedProcess:
    """Run a bundle workflow to completion (``launcher``: e.g. ``["-c", wrapper]`` instead of ``-m``)."""
    command = [sys.executable, *launcher, *bundle_args(workflow, configs, overrides)]
    return subprocess.run(command, cwd=REPO, env=bundle_env(home), capture_output=True, text=True,
                          timeout=timeout)


def start_bundle(
    workflow: str, configs: Iterable[str], overrides: Mapping[str, object], home: Path
) -> subprocess.Popen:
    """Start a bundle workflow in the background (for fault injection)."""
    command = [sys.executable, *MONAI_BUNDLE, *bundle_args(workflow, configs, overrides)]
    return subprocess.Popen(command, cwd=REPO, env=bundle_env(home), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def file_hashes(*paths: Path) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders), keyed by path."""
    out = {}
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            out[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return out


def files_under(folder: Path) -> list[str]:
    """Every file (hidden temporaries included) under ``folder``; ``[]`` if it does not exist."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def same_weights(a: Path, b: Path) -> bool:
    """Whether two state-dict checkpoints hold the same tensors."""
    left = torch.load(a, map_location="cpu", weights_only=True)
    right = torch.load(b, map_location="cpu", weights_only=True)
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)
