"""The training recipe's knobs as trainer handlers: class weights, augmentation seeding, LR schedule, early stopping.

Each is switched by one top-level key of ``train.json`` (``class_weights``, ``augment``,
``lr_schedule``, ``early_stopping``) and kept listed in the config when off, so an
experiment turns it on by a single override. Everything here is resumable: what an epoch
does depends only on the seed and the epoch number, never on state held in memory, so a run
resumed from a training state equals the uninterrupted run (``tests/test_bundle.py``).
Early stopping is the exception: its patience counter restarts on resume.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from monai_emotion.errors import ConfigError

__all__ = ["balanced_class_weights", "class_weights", "AugmentationSeed", "LrSchedule", "EarlyStopping"]

#: seeds of successive epochs (and ranks) are this far apart, so no two draws share a seed
_SEED_STRIDE = 1_000_003


def balanced_class_weights(items: Sequence[Mapping[str, Any]], num_classes: int) -> list[float]:
    """Inverse-frequency class weights of the training items, mean 1 (scikit-learn's ``"balanced"``).

    A class absent from training gets weight 0 (it cannot be learned, and must not divide by 0).
    """
    counts = np.bincount([int(i["label"]) for i in items if int(i["label"]) >= 0], minlength=num_classes)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return weights.tolist()


def class_weights(setting: Any, items: Sequence[Mapping[str, Any]], num_classes: int, device: Any = None) -> Any:
    """The loss's ``weight`` from a config's ``class_weights``: ``None``, ``"balanced"`` or a list."""
    if setting is None:
        return None
    if isinstance(setting, str):
        if setting != "balanced":
            raise ConfigError(f"class_weights={setting!r}", where="config 'class_weights'",
                              fix="use null, 'balanced' or one weight per class")
        setting = balanced_class_weights(items, num_classes)
    if len(setting) != num_classes:
        raise ConfigError(f"{len(setting)} class weights for {num_classes} classes", where="config 'class_weights'",
                          fix="give one weight per class, or 'balanced'")
    return torch.tensor([float(w) for w in setting], dtype=torch.float32, device=device)


class AugmentationSeed:
    """Reseed the training transforms at the start of every epoch from ``seed``, the epoch and the rank.

    MONAI's random transforms keep their own generators, which a training state does not
    save: without this, a resumed run would draw other augmentations than the uninterrupted
    one. Seeding per epoch makes the draws a function of (seed, epoch, rank) only. It fires
    on ``EPOCH_STARTED``, before ignite builds the epoch's data iterator. With a streaming
    loader's worker processes, MONAI seeds the workers' copies itself; the in-memory
    ``CacheDataset`` path (the default) runs the transforms in the training process.
    """

    def __init__(self, transform: Any, seed: int = 0) -> None:
        self.transform = transform
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        if hasattr(self.transform, "set_random_state"):
            engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        import ignite.distributed as idist

        draw = (self.seed + _SEED_STRIDE * (engine.state.epoch + 1000 * idist.get_rank())) % (2**32)
        self.transform.set_random_state(seed=draw)


class LrSchedule:
    """An epoch-level learning-rate schedule by name: ``None`` (constant) or ``"cosine"`` (to 0 over ``epochs``).

    The rate of epoch ``e`` (1-based) is set when it starts, from the optimizer's initial
    rates and ``e`` alone (``base * (1 + cos(pi * (e - 1) / epochs)) / 2``, PyTorch's
    ``CosineAnnealingLR`` in closed form), so a resumed run gets the same rates.
    """

    SCHEDULES = (None, "cosine")

    def __init__(self, schedule: str | None, optimizer: torch.optim.Optimizer, epochs: int) -> None:
        if schedule not in self.SCHEDULES:
            raise ConfigError(f"lr_schedule={schedule!r}", where="config 'lr_schedule'",
                              fix=f"use one of {list(self.SCHEDULES)}")
        self.schedule = schedule
        self.optimizer = optimizer
        self.epochs = max(1, int(epochs))
        self.base = [float(group["lr"]) for group in optimizer.param_groups]

    def rate(self, base: float, epoch: int) -> float:
        """The learning rate of 1-based ``epoch`` for an initial rate ``base``."""
        if self.schedule is None:
            return base
        return base * (1 + math.cos(math.pi * (epoch - 1) / self.epochs)) / 2

    def attach(self, engine: Engine) -> None:
        if self.schedule is not None:
            engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base, strict=True):
            group["lr"] = self.rate(base, engine.state.epoch)


class EarlyStopping:
    """Stop training when validation ``metric_name`` has not improved for ``patience`` evaluations.

    Attached to the trainer after its ``ValidationHandler`` (listed after it in
    ``train#handlers``), it reads the validator's metric at each epoch that ran a validation.
    ``patience=None`` does nothing, so configs keep it listed and turn it on by one key. The
    best checkpoint is kept by ``BestModelSaver`` in any case.
    """

    def __init__(self, patience: int | None, validator: Engine, metric_name: str, min_delta: float = 0.0) -> None:
        if patience is not None and (isinstance(patience, bool) or int(patience) < 1):
            raise ConfigError(f"early_stopping={patience!r} must be an integer >= 1 or null",
                              where="config 'early_stopping'")
        self.patience = None if patience is None else int(patience)
        self.validator = validator
        self.metric_name = metric_name
        self.min_delta = float(min_delta)
        self.best = -math.inf
        self.waited = 0
        self._seen = None

    def attach(self, engine: Engine) -> None:
        if self.patience is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        state = self.validator.state
        if state is None or state.epoch == self._seen or self.metric_name not in state.metrics:
            return  # no validation this epoch
        self._seen = state.epoch
        value = float(state.metrics[self.metric_name])
        if value > self.best + self.min_delta:
            self.best, self.waited = value, 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            logging.getLogger("monai_emotion").info(
                f"early stopping at epoch {engine.state.epoch}: {self.metric_name} has not improved on "
                f"{self.best:.4f} for {self.patience} validations")
            engine.terminate()
