"""Checkpoints: read with ``weights_only=True`` and checked against the network, written atomically.

Three things MONAI's own handlers leave to the user, and which matter on shared machines:

- **Clear errors.** :func:`load_checkpoint` raises :class:`~monai_emotion.errors.CheckpointError`
  naming the file and saying what is wrong: missing, truncated or corrupt, not a plain
  weights file, or made for another network (the mismatching keys and shapes are listed).
  The bundle's :class:`CheckpointLoader` checks the file when the config is built, before any
  engine runs or output is written.
- **Safety.** Every read uses ``torch.load(..., weights_only=True)``: a checkpoint holding
  arbitrary Python objects is refused instead of executed. Still, only load checkpoints
  from sources you trust (docs/security.md).
- **No partial files.** :func:`save_checkpoint` writes under a hidden temporary name, fsyncs
  and renames, so a SIGKILL or a full disk never leaves a truncated file under a final name
  (MONAI's ``CheckpointSaver`` writes in place, and ignite removes the previous checkpoint
  *before* writing the next). :class:`BestModelSaver` keeps ``model.pt`` that way and records
  its score in ``model.json``, so a resumed training only replaces it with a better model.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader as _MonaiCheckpointLoader
from torch import nn

from monai_emotion import fileio
from monai_emotion.errors import CheckpointError

__all__ = [
    "load_checkpoint",
    "save_checkpoint",
    "checkpoint_epoch",
    "CheckpointLoader",
    "AtomicSaveHandler",
    "BestModelSaver",
]

_SHOWN = 4  # mismatches listed in a message; the rest are counted
_EPOCH = re.compile(r"epoch=(\d+)")
_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
#: what a truncated or foreign file makes torch.load raise (zip reader, unpickler, EOF)
_UNREADABLE = (RuntimeError, EOFError, KeyError, ValueError, zipfile.BadZipFile, OSError)


def _unwrap(obj: Any) -> Any:
    # DistributedDataParallel / DataParallel keep the real network in .module
    return obj.module if isinstance(obj, nn.Module) and hasattr(obj, "module") else obj


def _read(path: Path, map_location: Any) -> Any:
    if not path.is_file():
        raise CheckpointError(
            "checkpoint not found",
            path,
            fix="train the bundle first (it writes models/model.pt), or pass the right --ckpt_dir / --ckpt_path",
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # the weights-only unpickler names the global it refused; garbage fails on an opcode
        refused = _GLOBAL.search(str(exc))
        if refused:
            raise CheckpointError(
                f"refused: the file holds Python objects ({refused.group(1)}), not only tensors "
                "and plain containers (read with weights_only=True)",
                path,
                fix="only use checkpoints from sources you trust; re-save the weights as a "
                "state_dict (torch.save(model.state_dict(), path))",
            ) from None
        raise _unreadable(path, "not a PyTorch checkpoint") from None
    except _UNREADABLE as exc:
        text = str(exc).strip()[:80]
        raise _unreadable(path, f"{type(exc).__name__}: {text}" if text else type(exc).__name__) from None


def _unreadable(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(
        f"not a readable PyTorch checkpoint: truncated or corrupt ({detail.splitlines()[0]})",
        path,
        fix="copy the file again, or use another checkpoint (training keeps the last two states)",
    )


def _module_mismatches(module: nn.Module, state: Mapping[str, Any]) -> list[str]:
    own = module.state_dict()
    problems = [
        f"{key} is {tuple(value.shape)} in the file, {tuple(own[key].shape)} in the network"
        for key, value in state.items()
        if key in own and isinstance(value, torch.Tensor) and tuple(value.shape) != tuple(own[key].shape)
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        problems.append(f"{len(missing)} key(s) missing from the file ({', '.join(missing[:_SHOWN])})")
    if unexpected:
        problems.append(f"{len(unexpected)} key(s) the network lacks ({', '.join(unexpected[:_SHOWN])})")
    return problems


def load_checkpoint(
    path: str | os.PathLike,
    objects: Mapping[str, Any] | nn.Module,
    *,
    map_location: Any = "cpu",
    strict: bool = True,
) -> dict[str, Any]:
    """Read a checkpoint safely and check that it fits ``objects``, without loading it into them.

    Parameters
    ----------
    path
        A ``.pt`` file: a plain ``state_dict`` (``model.pt``) or a dict of state dicts
        (``training_state_*.pt``: model, optimizer, trainer).
    objects
        What it will be loaded into: ``{"model": network, ...}`` (as MONAI's
        ``CheckpointLoader`` takes it) or one network.
    map_location
        Passed to ``torch.load``.
    strict
        Whether missing or unexpected network keys are errors (shape mismatches always are).

    Returns
    -------
    dict
        The checkpoint keyed like ``objects`` (a plain state dict is wrapped under the one
        key), ready for ``ignite.handlers.Checkpoint.load_objects``.

    Raises
    ------
    CheckpointError
        Missing, truncated, corrupt or non-weights file; an entry of ``objects`` absent from
        the file; a network whose keys or shapes differ (the message lists them).
    """
    path = Path(path)
    targets = {"model": objects} if isinstance(objects, nn.Module) else dict(objects)
    checkpoint = _read(path, map_location)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"holds a {type(checkpoint).__name__}, not a state dict", path,
                              fix="save checkpoints with torch.save(model.state_dict(), path)")
    first = next(iter(targets))
    if len(targets) == 1 and first not in checkpoint:
        checkpoint = {first: checkpoint}  # a plain state_dict, as model.pt is
    absent = [k for k in targets if k not in checkpoint]
    if absent:
        raise CheckpointError(
            f"has no entry {absent} (it holds {sorted(map(str, checkpoint))[:8]})",
            path,
            fix="resume from a training_state_*.pt file, or load model.pt into the network only",
        )
    for key, target in targets.items():
        module = _unwrap(target)
        if not isinstance(module, nn.Module):
            continue
        state = checkpoint[key]
        if not isinstance(state, Mapping):
            raise CheckpointError(f"entry '{key}' is a {type(state).__name__}, not a state dict", path,
                                  fix="save the network with torch.save(model.state_dict(), path)")
        problems = _module_mismatches(module, state)
        if not strict:
            problems = [p for p in problems if " in the network" in p]
        if problems:
            shown = "; ".join(problems[:_SHOWN]) + (f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else "")
            raise CheckpointError(
                f"does not fit the network {type(module).__name__} ('{key}'): {shown}",
                path,
                fix="build the network the checkpoint was trained with (network_def: channels, head, "
                "num_classes, spatial_shape), or train a new model",
            )
    return dict(checkpoint)


def checkpoint_epoch(path: str | os.PathLike) -> int:
    """The epoch in a ``training_state_checkpoint_epoch=N.pt`` name (-1 when there is none)."""
    match = _EPOCH.search(Path(path).name)
    return int(match.group(1)) if match else -1


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` so that ``path`` holds either its old content or all of the new.

    Raises
    ------
    CheckpointError
        The disk (or a quota or file-size limit) is full; nothing partial is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.remove_stale_temporaries(path)
    return fileio.atomic_write(path, lambda fh: torch.save(obj, fh), CheckpointError)


class CheckpointLoader(_MonaiCheckpointLoader):
    """MONAI's ``CheckpointLoader`` (same arguments), reading and checking the file up front.

    The file is read (``weights_only=True``) and checked against ``load_dict`` when the handler
    is built, i.e. while the bundle config is parsed: a wrong, truncated or foreign checkpoint
    stops the run with a :class:`CheckpointError` before any engine starts. The weights are
    loaded into ``load_dict`` when the engine starts, as MONAI does.
    """

    def __init__(
        self,
        load_path: str,
        load_dict: dict,
        name: str | None = None,
        map_location: Any = None,
        strict: bool = True,
        strict_shape: bool = True,
    ) -> None:
        super().__init__(load_path, load_dict, name, map_location, strict, strict_shape)
        # checked now, loaded at STARTED: not held in memory in between (a training state
        # with Adam moments is three times the model's size)
        load_checkpoint(load_path, load_dict, map_location=map_location, strict=self.strict)

    def __call__(self, engine: Engine) -> None:
        """Load the checkpoint into ``load_dict`` (engine state included, if listed)."""
        if not self.strict_shape:
            super().__call__(engine)  # MONAI's partial load (its torch.load is weights-only too)
            return
        checkpoint = load_checkpoint(self.load_path, self.load_dict, map_location=self.map_location,
                                     strict=self.strict)
        prior_max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=self.load_dict, checkpoint=checkpoint, strict=self.strict)
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise CheckpointError(
                f"the checkpoint is at epoch {engine.state.epoch}, beyond this run's "
                f"{prior_max_epochs} epochs",
                self.load_path,
                fix="pass --epochs larger than the checkpoint's epoch to train on",
            )
        engine.state.max_epochs = prior_max_epochs
        self.logger.info(f"Restored all variables from {self.load_path}")


class AtomicSaveHandler(BaseSaveHandler):
    """ignite save handler writing through :func:`save_checkpoint` (rank ``save_on_rank`` only)."""

    def __init__(self, dirname: str | os.PathLike, save_on_rank: int = 0) -> None:
        self.dirname = Path(dirname)
        self.save_on_rank = save_on_rank

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() == self.save_on_rank:
            save_checkpoint(checkpoint, self.dirname / filename)

    def remove(self, filename: str) -> None:
        if idist.get_rank() == self.save_on_rank:
            with contextlib.suppress(FileNotFoundError):
                (self.dirname / filename).unlink()


class BestModelSaver:
    """Save the network's ``state_dict`` as ``model.pt`` whenever an evaluator's metric improves.

    Written atomically (:func:`save_checkpoint`), with ``model.json`` beside it holding the
    metric name, value and epoch. With ``resume`` set (a resumed training), the recorded best
    is restored first, so the resumed run replaces ``model.pt`` only with a better model and
    the evaluator reports the best over the whole training.

    Parameters
    ----------
    save_dir
        Folder of ``model.pt`` (created).
    network
        The network (a DDP wrapper is unwrapped: the file holds plain keys).
    metric_name
        Key metric of the evaluator (higher is better).
    filename
        Name of the weights file; the record is the same name with ``.json``.
    resume
        Non-empty when this run resumes a training in ``save_dir``.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        network: nn.Module,
        metric_name: str,
        filename: str = "model.pt",
        resume: str | bool = "",
    ) -> None:
        self.path = Path(save_dir) / filename
        self.record = self.path.with_suffix(".json")
        self.network = network
        self.metric_name = metric_name
        self.resume = bool(resume)
        self.best: float | None = None
        self.best_epoch = -1

    def attach(self, engine: Engine) -> None:
        """Register on ``EPOCH_COMPLETED`` (after the metrics) and restore the best when resuming."""
        if self.resume:
            self._restore(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _restore(self, engine: Engine) -> None:
        record = fileio.read_json(self.record)
        if not record or record.get("metric_name") != self.metric_name or not self.path.is_file():
            return
        self.best, self.best_epoch = float(record["value"]), int(record["epoch"])
        # MONAI's engines track the best themselves: start them from the remembered one
        engine.state.best_metric = self.best
        engine.state.best_metric_epoch = self.best_epoch

    def __call__(self, engine: Engine) -> None:
        """Save when the metric beats the best so far (ties keep the earlier model, as MONAI does)."""
        value = engine.state.metrics.get(self.metric_name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        if self.best is not None and not float(value) > self.best:
            return
        self.best, self.best_epoch = float(value), int(engine.state.epoch)
        if idist.get_rank() != 0:
            return
        save_checkpoint(_unwrap(self.network).state_dict(), self.path)
        record = {"metric_name": self.metric_name, "value": self.best, "epoch": self.best_epoch,
                  "file": self.path.name}
        fileio.atomic_write_text(self.record, json.dumps(record, indent=2) + "\n", CheckpointError)
